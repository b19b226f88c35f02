"""find_weights: which tensors are weights, and a reason for every float tensor left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import (
    check_op_type_count,
    control_flow_model,
    make_model,
    randn,
    reference_weights,
    replace_weights,
    run,
    value,
)
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.graph.select import find_weights, weight_axis


def by_name(items) -> dict:
    return {item.name: item for item in items}


def test_tiny_model_weights_and_axes(tiny):
    weights, skips = find_weights(tiny[0], 128)
    got = {w.name: w.axis for w in weights}
    # docs/METHOD.md: Conv axis 0, ConvTranspose axis 1, Gemm by transB, MatMul the output-feature
    # axis, Gather rows.
    assert got == {"conv.w": 0, "convt.w": 1, "mm.b": 1, "gemm.b": 0, "gemm2.b": 1, "emb": 0}
    assert by_name(weights)["conv.w"].uses == ["Conv input 1"]
    assert by_name(weights)["emb"].uses == ["Gather input 0"]
    assert set(by_name(skips)) == {"conv.b", "gemm.c"}


def test_biases_are_skipped_with_a_reason(tiny):
    _, skips = find_weights(tiny[0], 1)
    reasons = {s.name: s.reason for s in skips}
    assert "bias of Conv" in reasons["conv.b"]
    assert "bias of Gemm" in reasons["gemm.c"]


def test_weights_inside_if_and_loop_subgraphs_and_constant_nodes_are_found():
    model, _ = control_flow_model()
    weights, skips = find_weights(model, 128)
    found = by_name(weights)
    assert set(found) == {"then.w", "else.w", "loop.w", "const.w"}
    assert found["else.w"].constant_node is not None
    assert found["const.w"].constant_node is not None
    assert found["then.w"].constant_node is None
    assert found["then.w"].graph.name == "then"
    assert found["loop.w"].graph.name == "body"
    assert found["const.w"].graph is model.graph
    assert skips == []


def test_control_flow_weights_are_compressed_and_still_run():
    model, feeds = control_flow_model()
    out, report = onnxq.compress_model(model, onnxq.Config(bits=6))
    assert {w.name for w in report.weights} == {"then.w", "else.w", "loop.w", "const.w"}
    # The Constant nodes that held weights are gone; the decoder calls replaced them.
    check_op_type_count(out, Constant=0, If=1, Loop=1)
    refs = reference_weights(model, bits=6, codebook="exponential")
    expected_model = replace_weights(model, {k: v[0] for k, v in refs.items()})
    for cond in (True, False):
        f = dict(feeds, cond=np.array(cond))
        for got, want in zip(run(out, f), run(expected_model, f)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_tensor_shared_by_two_convs_is_compressed_once(rng):
    w = randn(rng, 4, 4, 3, 3)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "shared"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
            helper.make_node("Conv", ["a", "shared"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
        ],
        [value("x", [1, 4, 6, 6])],
        [value("y", [1, 4, 6, 6])],
        [numpy_helper.from_array(w, "shared")],
    )
    weights, _ = find_weights(model, 1)
    assert [w.name for w in weights] == ["shared"]
    out, report = onnxq.compress_model(model, onnxq.Config(min_elements=1))
    assert [w.name for w in report.weights] == ["shared"]
    assert len([t for t in out.graph.initializer if t.name.endswith(".onnxq.indices")]) == 1
    calls = [n for n in out.graph.node if n.domain == "onnxq"]
    assert len(calls) == 1
    feeds = {"x": randn(rng, 1, 4, 6, 6)}
    expected = replace_weights(
        model, {"shared": reference_weights(model, 5, "exponential", min_elements=1)["shared"][0]}
    )
    np.testing.assert_allclose(run(out, feeds)[0], run(expected, feeds)[0], rtol=1e-5, atol=1e-5)


def test_a_float_tensor_that_also_feeds_an_add_is_skipped(rng):
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["a"]),
            helper.make_node("Add", ["a", "W"], ["y"]),
        ],
        [value("x", [16, 16])],
        [value("y", [16, 16])],
        [numpy_helper.from_array(randn(rng, 16, 16), "W")],
    )
    weights, skips = find_weights(model, 1)
    assert weights == []
    assert [(s.name, s.reason) for s in skips] == [("W", "feeds Add input 1, which is not a weight input")]
    out, report = onnxq.compress_model(model, onnxq.Config(min_elements=1))
    assert report.weights == [] and report.skipped[0].name == "W"
    assert "W" in {t.name for t in out.graph.initializer}


def test_integer_tensors_never_appear(rng):
    emb = randn(rng, 300, 4)
    model = make_model(
        [
            helper.make_node("Gather", ["emb", "idx"], ["g"]),
            helper.make_node("Reshape", ["g", "shape"], ["r"]),
            helper.make_node("Gather", ["table_i", "idx"], ["gi"]),
            helper.make_node("Cast", ["gi"], ["gf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["r", "gf"], ["y"]),
        ],
        [],
        [value("y", [3, 4])],
        [
            numpy_helper.from_array(emb, "emb"),
            numpy_helper.from_array(np.array([0, 5, 299], np.int64), "idx"),
            numpy_helper.from_array(np.array([3, 4], np.int64), "shape"),
            numpy_helper.from_array(np.arange(1200, dtype=np.int32).reshape(300, 4), "table_i"),
        ],
    )
    weights, skips = find_weights(model, 1)
    names = {w.name for w in weights} | {s.name for s in skips}
    assert names == {"emb"}
    assert not {"idx", "shape", "table_i"} & names


def test_min_elements_skips_with_a_reason(tiny):
    weights, skips = find_weights(tiny[0], 300)
    kept = {w.name for w in weights}
    assert kept == {"mm.b", "gemm.b"}
    reasons = {s.name: s.reason for s in skips}
    assert reasons["conv.w"] == "216 elements, fewer than --min-elements 300"
    assert reasons["convt.w"] == "288 elements, fewer than --min-elements 300"
    assert reasons["gemm2.b"] == "143 elements, fewer than --min-elements 300"


def test_exclude_matches_tensor_or_node_names_with_a_reason(tiny):
    weights, skips = find_weights(tiny[0], 1, exclude=(r"^emb$", "gemm2"))
    assert {w.name for w in weights} == {"conv.w", "convt.w", "mm.b", "gemm.b"}
    reasons = {s.name: s.reason for s in skips}
    assert reasons["emb"] == "excluded by --exclude '^emb$'"
    assert reasons["gemm2.b"] == "excluded by --exclude 'gemm2'"
    # A node name matches too: "conv" is the Conv node's name, and a substring of "convt".
    weights, skips = find_weights(tiny[0], 1, exclude=("^conv$",))
    assert "conv.w" not in {w.name for w in weights}
    assert "convt.w" in {w.name for w in weights}


def test_exclude_and_min_elements_reach_the_report(tiny):
    _, report = onnxq.compress_model(tiny[0], onnxq.Config(min_elements=200, exclude=("^mm",)))
    reasons = {s.name: s.reason for s in report.skipped}
    assert "excluded" in reasons["mm.b"]
    assert "fewer than --min-elements 200" in reasons["gemm2.b"]
    assert "bias" in reasons["conv.b"]
    assert {w.name for w in report.weights} == {"conv.w", "convt.w", "gemm.b", "emb"}


def test_unused_and_output_tensors_are_skipped_with_reasons(rng):
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [value("x", [1, 16])],
        [value("y", [1, 16]), value("W", [16, 16])],
        [numpy_helper.from_array(randn(rng, 16, 16), "W"), numpy_helper.from_array(randn(rng, 200), "spare")],
    )
    weights, skips = find_weights(model, 1)
    assert weights == []
    reasons = {s.name: s.reason for s in skips}
    assert reasons["spare"] == "unused"
    assert "graph output" in reasons["W"]


def test_a_tensor_used_along_different_axes_is_skipped(rng):
    w = randn(rng, 16, 16)
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["a"]),
            helper.make_node("Gemm", ["a", "W"], ["y"], transB=1),
        ],
        [value("x", [2, 16])],
        [value("y", [2, 16])],
        [numpy_helper.from_array(w, "W")],
    )
    weights, skips = find_weights(model, 1)
    assert weights == []
    assert skips[0].reason == "used as a weight along different output axes"


@pytest.mark.parametrize(
    ("op", "slot", "rank", "attrs", "axis"),
    [
        ("Conv", 1, 4, {}, 0),
        ("Conv", 2, 1, {}, None),
        ("ConvTranspose", 1, 4, {}, 1),
        ("Gemm", 1, 2, {}, 1),
        ("Gemm", 1, 2, {"transB": 1}, 0),
        ("Gemm", 0, 2, {}, 0),
        ("Gemm", 0, 2, {"transA": 1}, 1),
        ("Gemm", 2, 1, {}, None),
        ("MatMul", 1, 2, {}, 1),
        ("MatMul", 1, 3, {}, 2),
        ("MatMul", 0, 2, {}, 0),
        ("Gather", 0, 2, {}, 0),
        ("Gather", 0, 2, {"axis": 1}, None),
        ("Gather", 1, 1, {}, None),
        ("Add", 1, 2, {}, None),
    ],
)
def test_weight_axis(op, slot, rank, attrs, axis):
    node = helper.make_node(op, ["a", "b", "c"][: max(slot + 1, 2)], ["y"], **attrs)
    assert weight_axis(node, slot, rank) == axis


def test_a_custom_domain_op_is_not_a_weight_use(rng):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], domain="com.example")],
        "custom",
        [value("x", [1, 16])],
        [value("y", [1, 16])],
        [numpy_helper.from_array(randn(rng, 16, 16), "W")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)],
        ir_version=8,
    )
    weights, skips = find_weights(model, 1)
    assert weights == [] and "not a weight input" in skips[0].reason


def test_weights_and_skips_cover_every_float_tensor(tiny):
    weights, skips = find_weights(tiny[0], 1)
    floats = {t.name for t in tiny[0].graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert {w.name for w in weights} | {s.name for s in skips} == floats
    assert not {w.name for w in weights} & {s.name for s in skips}


def test_a_bfloat16_tensor_is_compressed_or_skipped_with_a_reason():
    wb = helper.make_tensor("Wb", TensorProto.BFLOAT16, [16, 16], np.full(256, 0x3F80, np.uint16).tolist())
    model = make_model(
        [
            helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
            helper.make_node("MatMul", ["xb", "Wb"], ["y"]),
        ],
        [value("x", [1, 16])],
        [value("y", [1, 16], TensorProto.BFLOAT16)],
        [wb],
    )
    weights, skips = find_weights(model, 1)
    assert {w.name for w in weights} | {s.name for s in skips} == {"Wb"}


def loop_carried_model(rng, use_final: bool = False) -> tuple[onnx.ModelProto, dict]:
    """A recurrent cell as tf2onnx writes it: the weight W enters the Loop as a carried value that
    the body passes through unchanged and multiplies with (v <- tanh(v @ W)), three times."""
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["v_in", "w_in"], ["v_mm"], name="cell.mm"),
            helper.make_node("Tanh", ["v_mm"], ["v_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            value("i", [], TensorProto.INT64),
            value("cond_in", [], TensorProto.BOOL),
            value("v_in", [1, 16]),
            value("w_in", [16, 16]),
        ],
        [value("cond_out", [], TensorProto.BOOL), value("v_out", [1, 16]), value("w_in", [16, 16])],
    )
    outputs = [value("z", [1, 16])] + ([value("w_final", [16, 16])] if use_final else [])
    model = make_model(
        [helper.make_node("Loop", ["trips", "", "x", "W"], ["z", "w_final"], body=body, name="loop")],
        [value("x", [1, 16])],
        outputs,
        [
            numpy_helper.from_array(randn(rng, 16, 16) * 0.3, "W"),
            numpy_helper.from_array(np.array(3, np.int64), "trips"),
        ],
    )
    return model, {"x": randn(rng, 1, 16)}


def test_a_weight_carried_unchanged_through_a_loop_is_a_weight_of_the_body(rng):
    model, feeds = loop_carried_model(rng)
    (w,), _ = find_weights(model, 1)
    assert (w.name, w.axis, w.uses) == ("W", 1, ["MatMul input 1"])
    out, report = onnxq.compress_model(model, onnxq.Config(bits=8))
    assert [x.name for x in report.weights] == ["W"]
    refs = reference_weights(model, bits=8, codebook="exponential")
    (got,), (want,) = run(out, feeds), run(replace_weights(model, {k: v[0] for k, v in refs.items()}), feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_loop_value_read_after_the_loop_is_not_a_weight(rng):
    model, _ = loop_carried_model(rng, use_final=True)
    weights, skips = find_weights(model, 1)
    assert not weights and by_name(skips)["W"].reason == "feeds Loop input 3, which is not a weight input"
