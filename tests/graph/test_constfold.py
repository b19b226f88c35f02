"""Constant folding: the graph computes the same outputs with fewer nodes, and large constants stay nodes."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import SEED, check_op_type_count, make_model, randn, run, value
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.graph.constfold import MAX_BYTES, MAX_EVALUATED, fold_constants, share_constants


def _const(name: str, array) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array), name))


def padded_conv_model(ir_version: int = 8) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """PyTorch's static padding: pads computed from constants by nine nodes, then Pad and Conv."""
    rng = np.random.default_rng(SEED)
    nodes = [
        _const("p", np.array([1, 2, 0, 1], np.int64)),
        _const("n", np.array([4], np.int64)),
        helper.make_node(
            "ConstantOfShape", ["n"], ["z"], value=numpy_helper.from_array(np.zeros(1, np.int64))
        ),
        helper.make_node("Concat", ["p", "z"], ["pz"], axis=0),
        _const("shape", np.array([-1, 2], np.int64)),
        helper.make_node("Reshape", ["pz", "shape"], ["pairs"]),
        _const("start", np.array([-1], np.int64)),
        _const("end", np.array([np.iinfo(np.int64).min], np.int64)),
        _const("axis", np.array([0], np.int64)),
        _const("step", np.array([-1], np.int64)),
        helper.make_node("Slice", ["pairs", "start", "end", "axis", "step"], ["flipped"]),
        helper.make_node("Transpose", ["flipped"], ["t"], perm=[1, 0]),
        _const("flat", np.array([-1], np.int64)),
        helper.make_node("Reshape", ["t", "flat"], ["pads64"]),
        helper.make_node("Cast", ["pads64"], ["pads"], to=TensorProto.INT64),
        _const("zero", np.array(0.0, np.float32)),
        helper.make_node("Pad", ["x", "pads", "zero"], ["xp"]),
        helper.make_node("Conv", ["xp", "W"], ["y"]),
    ]
    w = numpy_helper.from_array(randn(rng, 8, 3, 3, 3), "W")
    inputs = [value("x", [1, 3, 9, 9])] + ([value("W", [8, 3, 3, 3])] if ir_version < 4 else [])
    model = make_model(nodes, inputs, [value("y", [1, 8, 8, 10])], [w], ir_version=ir_version)
    return model, {"x": randn(rng, 1, 3, 9, 9)}


def test_folding_keeps_the_outputs_bit_for_bit_and_drops_the_padding_nodes():
    model, feeds = padded_conv_model()
    before = run(model, feeds)[0]
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    result = fold_constants(folded)
    onnx.checker.check_model(folded, full_check=True)
    assert (result.nodes, result.tensors) == (15, 1)
    check_op_type_count(folded, Constant=1, Pad=1, Conv=1, Slice=0, Reshape=0, ConstantOfShape=0)
    pads = next(t for t in folded.graph.initializer if t.name == "pads")
    assert numpy_helper.to_array(pads).tolist() == [0, 0, 0, 1, 0, 0, 1, 2]
    np.testing.assert_array_equal(run(folded, feeds)[0], before)
    assert folded.ByteSize() < model.ByteSize()


def test_before_ir_4_the_values_become_constant_nodes():
    model, feeds = padded_conv_model(ir_version=3)
    before = run(model, feeds)[0]
    result = fold_constants(model)
    onnx.checker.check_model(model, full_check=True)
    assert result.tensors == 1
    assert "pads" not in {t.name for t in model.graph.initializer}
    check_op_type_count(model, Constant=2, Pad=1, Conv=1)
    np.testing.assert_array_equal(run(model, feeds)[0], before)


def test_a_large_result_a_graph_output_and_a_random_node_stay_nodes():
    n = MAX_BYTES // 4 + 1  # one float more than MAX_BYTES
    nodes = [
        _const("size", np.array([n], np.int64)),
        helper.make_node(
            "ConstantOfShape", ["size"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))
        ),
        helper.make_node("Add", ["x", "ones"], ["y"]),
        _const("two", np.array([2.0], np.float32)),
        helper.make_node("Mul", ["two", "two"], ["four"]),  # a graph output itself
        helper.make_node("RandomUniform", [], ["noise"], shape=[1], seed=1.0),
        helper.make_node("Identity", ["noise"], ["noisy"]),
    ]
    model = make_model(nodes, [value("x", [n])], [value("y", [n]), value("four", [1]), value("noisy", [1])])
    assert fold_constants(model).nodes == 0
    check_op_type_count(model, ConstantOfShape=1, Mul=1, RandomUniform=1, Identity=1)


def test_a_constant_read_by_a_node_that_stays_is_kept():
    nodes = [
        _const("k", np.array([3.0], np.float32)),
        helper.make_node("Neg", ["k"], ["minus"]),
        helper.make_node("Add", ["x", "k"], ["a"]),
        helper.make_node("Mul", ["a", "minus"], ["y"]),
    ]
    model = make_model(nodes, [value("x", [2])], [value("y", [2])])
    feeds = {"x": np.array([1.0, -2.0], np.float32)}
    before = run(model, feeds)[0]
    assert fold_constants(model).nodes == 1
    check_op_type_count(model, Constant=1, Neg=0, Add=1, Mul=1)
    np.testing.assert_array_equal(run(model, feeds)[0], before)


def _if_reading(name: str) -> onnx.NodeProto:
    """y = If(c): the then branch returns the outer value `name`, the else branch x."""
    body_out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])
    then = helper.make_graph([helper.make_node("Identity", [name], ["b"])], "then", [], [body_out])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["b"])], "else", [], [body_out])
    return helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)


def test_a_value_read_only_inside_a_subgraph_is_written():
    nodes = [
        _const("one", np.array([1.0], np.float32)),
        helper.make_node("Div", ["one", "one"], ["unit"]),
        helper.make_node("Mul", ["unit", "unit"], ["sq"]),
        _const("two", np.array([2.0], np.float32)),
        helper.make_node("Div", ["sq", "two"], ["half"]),
        _if_reading("half"),
    ]
    model = make_model(nodes, [value("c", [], TensorProto.BOOL), value("x", [1])], [value("y", [1])])
    feeds = {"c": np.array(True), "x": np.array([5.0], np.float32)}
    assert fold_constants(model).tensors == 1
    assert {t.name for t in model.graph.initializer} == {"half"}
    check_op_type_count(model, Div=0, Mul=0, Constant=0, If=1)
    assert run(model, feeds)[0].tolist() == [0.5]


def test_compress_folds_by_default_says_so_and_can_be_told_not_to():
    model, feeds = padded_conv_model()
    config = {"bits": 8, "min_elements": 16, "validate": False}
    out, report = onnxq.compress_model(model, onnxq.Config(**config))
    kept, kept_report = onnxq.compress_model(model, onnxq.Config(fold_constants=False, **config))
    assert any(n.startswith("folded 15 nodes") for n in report.notes)
    assert not any(n.startswith("folded") for n in kept_report.notes)
    assert len(kept.graph.node) - len(out.graph.node) == 15
    assert report.output.total < kept_report.output.total
    np.testing.assert_array_equal(run(out, feeds)[0], run(kept, feeds)[0])


def test_a_large_intermediate_is_never_evaluated(monkeypatch):
    """ConstantOfShape of 2^17 ones then summed: the sum is small, but computing it is not done."""
    from onnxq.graph import constfold

    def fail(*args):
        raise AssertionError("evaluated")

    monkeypatch.setattr(constfold, "_evaluate", fail)
    nodes = [
        _const("size", np.array([MAX_EVALUATED + 1], np.int64)),
        helper.make_node(
            "ConstantOfShape", ["size"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))
        ),
        helper.make_node("ReduceSum", ["ones"], ["total"], keepdims=0),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    model = make_model(nodes, [value("x", [1])], [value("y", [1])])
    assert fold_constants(model).nodes == 0
    check_op_type_count(model, ConstantOfShape=1, ReduceSum=1)


def clipped_blocks_model(ir_version: int = 8, blocks: int = 3) -> onnx.ModelProto:
    """What exporters write for ReLU6 blocks: a Constant 0 and 6 for every Clip, plus equal initializers."""
    rng = np.random.default_rng(SEED)
    nodes, inits, x = [], [], "x"
    for i in range(blocks):
        nodes += [
            _const(f"lo{i}", np.array(0.0, np.float32)),
            _const(f"hi{i}", np.array(6.0, np.float32)),
            helper.make_node("Mul", [x, f"k{i}"], [f"m{i}"]),
            helper.make_node("Clip", [f"m{i}", f"lo{i}", f"hi{i}"], [f"c{i}"]),
        ]
        inits.append(numpy_helper.from_array(np.array([2.0, 3.0], np.float32), f"k{i}"))
        x = f"c{i}"
    nodes.append(_const("int_zero", np.array(0, np.int32)))  # zero bytes too, but another type
    nodes.append(helper.make_node("Cast", ["int_zero"], ["fzero"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Add", [x, "fzero"], ["y"]))
    inputs = [value("x", [2])] + ([value(t.name, [2]) for t in inits] if ir_version < 4 else [])
    model = make_model(nodes, inputs, [value("y", [2])], inits, ir_version=ir_version)
    if ir_version >= 4:
        big = randn(rng, 300)  # equal, but too large to share
        model.graph.initializer.append(numpy_helper.from_array(big, "big"))
        model.graph.initializer.append(numpy_helper.from_array(big, "big_again"))
        nodes = [helper.make_node("Add", ["big", "big_again"], ["bigs"])]
        model.graph.node.extend(nodes)
        model.graph.output.append(value("bigs", [300]))
    return model


def test_equal_small_constants_are_shared_and_the_outputs_stay_bit_for_bit():
    model = clipped_blocks_model()
    feeds = {"x": np.array([-1.0, 2.5], np.float32)}
    before = run(model, feeds)[0]
    assert share_constants(model) == (2 * 2 + 2, 3)  # four Clip bounds and two k's, to 0, 6 and k
    onnx.checker.check_model(model, full_check=True)
    check_op_type_count(model, Constant=1, Clip=3, Mul=3)  # only the int32 zero stays a node
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert {tuple(n.input[1:]) for n in clips} == {("lo0", "hi0")}
    assert [n.input[1] for n in model.graph.node if n.op_type == "Mul"] == ["k0"] * 3
    assert {t.name for t in model.graph.initializer} == {"k0", "lo0", "hi0", "big", "big_again"}
    np.testing.assert_array_equal(run(model, feeds)[0], before)


def test_before_ir4_the_shared_values_are_constant_nodes_first():
    model = clipped_blocks_model(ir_version=3)
    feeds = {"x": np.array([7.0, -0.5], np.float32)}
    before = run(model, feeds)[0]
    assert share_constants(model) == (4, 2)  # initializers are graph inputs here: never shared
    onnx.checker.check_model(model, full_check=True)
    assert [n.output[0] for n in model.graph.node[:2]] == ["lo0", "hi0"]
    check_op_type_count(model, Constant=3)
    np.testing.assert_array_equal(run(model, feeds)[0], before)


def test_a_constant_read_in_a_subgraph_or_that_is_an_output_keeps_its_name():
    nodes = [
        _const("two_a", np.array([2.0], np.float32)),
        _const("two_b", np.array([2.0], np.float32)),
        _const("two_c", np.array([2.0], np.float32)),
        _const("two_d", np.array([2.0], np.float32)),
        _if_reading("two_b"),
        helper.make_node("Add", ["x", "two_d"], ["z"]),
    ]
    outputs = [value("y", [1]), value("z", [1]), value("two_c", [1])]
    model = make_model(nodes, [value("c", [], TensorProto.BOOL), value("x", [1])], outputs)
    feeds = {"c": np.array(True), "x": np.array([5.0], np.float32)}
    assert share_constants(model) == (1, 1)  # two_d reads two_a; two_b and two_c stay
    assert [n.input[1] for n in model.graph.node if n.op_type == "Add"] == ["two_a"]
    assert {n.output[0] for n in model.graph.node if n.op_type == "Constant"} == {"two_b", "two_c"}
    assert [r.tolist() for r in run(model, feeds)] == [[2.0], [7.0], [2.0]]


def test_compress_shares_constants_says_so_and_can_be_told_not_to():
    model = clipped_blocks_model(blocks=4)
    config = {"bits": 4, "min_elements": 1000, "validate": False}
    out, report = onnxq.compress_model(model, onnxq.Config(**config))
    kept, kept_report = onnxq.compress_model(model, onnxq.Config(fold_constants=False, **config))
    # 3 Clip lows, 3 highs, 3 k's, and the folded Cast of the int32 zero: 0.0 like the lows
    assert "shared 10 small constants that repeat 3 values; --no-fold-constants keeps them" in report.notes
    assert not any(n.startswith("shared") for n in kept_report.notes)
    assert report.output.total < kept_report.output.total
    feeds = {"x": np.array([1.5, 4.0], np.float32)}
    np.testing.assert_array_equal(run(out, feeds)[0], run(kept, feeds)[0])
