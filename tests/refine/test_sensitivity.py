"""Probe: the noise of swapping one weight, measured with that weight as the only input besides the model's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import control_flow_model, make_model, run, tiny_model, value
from onnx import helper, numpy_helper

from onnxq import runtime
from onnxq.graph.select import find_weights, iter_graphs
from onnxq.refine.sensitivity import Probe


def weights_of(model: onnx.ModelProto, *names: str):
    found = {w.name: w for w in find_weights(model, 1)[0]}
    return [found[n] for n in names]


def replaced(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of the model with these initializers or Constant values replaced, in any graph."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for graph in iter_graphs(copy.graph):
        for t in graph.initializer:
            if t.name in values:
                t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
        for node in graph.node:
            if node.op_type == "Constant" and node.output[0] in values:
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(values[node.output[0]]))
    return copy


def swapped_noise(model: onnx.ModelProto, feeds: dict, values: dict[str, np.ndarray]) -> float:
    """The same noise, the slow way: a copy of the model with the weights replaced."""
    ref, got = run(model, feeds), run(replaced(model, values), feeds)
    err = sum(float(np.sum((g.astype(np.float64) - r) ** 2)) for g, r in zip(got, ref))
    return err / sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)


@pytest.mark.parametrize("name", ["conv.w", "mm.b", "gemm.b"])
def test_noise_matches_a_model_with_the_weight_replaced_and_leaves_the_model_alone(name):
    model, feeds = tiny_model()
    before = model.SerializeToString()
    (weight,) = weights_of(model, name)
    probe = Probe(model, [weight], [feeds])
    w = weight.array
    rng = np.random.default_rng(3)
    values = [w, w + 0.01 * rng.standard_normal(w.shape).astype(w.dtype), np.round(w * 4) / 4]
    noises = probe.noise(name, values)
    assert noises[0] < 1e-12
    for swapped, noise in zip(values[1:], noises[1:]):
        assert noise == pytest.approx(swapped_noise(model, feeds, {name: swapped}), rel=1e-4)
    assert 0 < noises[1] < noises[2]
    assert model.SerializeToString() == before  # the initializer is back, in its place


@pytest.mark.parametrize("name", ["const.w", "then.w", "loop.w"])
def test_weights_in_constant_nodes_and_subgraphs_are_measured_too(name):
    """A Constant node's weight, and weights inside If and Loop bodies, read the swapped value."""
    model, feeds = control_flow_model()
    before = model.SerializeToString()
    (weight,) = weights_of(model, name)
    value = (weight.array * 1.3).astype(weight.array.dtype)
    (noise,) = Probe(model, [weight], [feeds]).noise(name, [value])
    assert noise > 0
    assert noise == pytest.approx(swapped_noise(model, feeds, {name: value}), rel=1e-4)
    assert model.SerializeToString() == before


def test_noise_all_swaps_every_weight_at_once():
    model, feeds = tiny_model()
    weights = weights_of(model, "conv.w", "gemm.b")
    values = {w.name: (w.array * 0.9).astype(np.float32) for w in weights}
    probe = Probe(model, weights, [feeds])
    assert probe.noise_all(values) == pytest.approx(swapped_noise(model, feeds, values), rel=1e-4)
    assert probe.noise_all({}) == 0


def test_noise_parts_split_the_noise_by_sample_within_runs_and_by_run_across_them():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [value("x", ["N", 4])],
        [value("y", ["N", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    (weight,) = weights_of(model, "w")
    feeds = [
        {"x": rng.standard_normal((3, 4)).astype(np.float32)},
        {"x": rng.standard_normal((2, 4)).astype(np.float32)},
    ]
    swapped = (w + 0.1 * rng.standard_normal(w.shape)).astype(np.float32)
    rows = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    errors = np.sum((rows @ (swapped - w)) ** 2, axis=1)
    energy = float(np.sum((rows @ w.astype(np.float64)) ** 2))

    by_sample = Probe(model, [weight], feeds, counts=[3, 2]).noise_parts({"w": swapped})
    np.testing.assert_allclose(by_sample, errors / energy, rtol=1e-4)
    by_run = Probe(model, [weight], feeds).noise_parts({"w": swapped})  # one sample per run assumed
    np.testing.assert_allclose(by_run, [errors[:3].sum() / energy, errors[3:].sum() / energy], rtol=1e-4)
    assert Probe(model, [weight], feeds, counts=[3, 2]).noise_all({"w": swapped}) == pytest.approx(
        errors.sum() / energy, rel=1e-4
    )


def test_before_ir4_an_initializer_that_is_already_an_input_is_fed_too():
    model, feeds = tiny_model()
    model.ir_version = 3
    w = next(t for t in model.graph.initializer if t.name == "gemm.b")
    model.graph.input.append(onnx.helper.make_tensor_value_info("gemm.b", w.data_type, list(w.dims)))
    before = model.SerializeToString()
    value = numpy_helper.to_array(w) * 1.1
    (noise,) = Probe(model, weights_of(model, "gemm.b"), [feeds]).noise("gemm.b", [value])
    assert noise == pytest.approx(swapped_noise(model, feeds, {"gemm.b": value}), rel=1e-4)
    assert model.SerializeToString() == before


def test_only_measured_weights_can_be_probed():
    model, feeds = tiny_model()
    with pytest.raises(KeyError, match="gemm.c"):
        Probe(model, weights_of(model, "conv.w"), [feeds]).noise("gemm.c", [np.zeros(13, np.float32)])


def wide_model(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv, MatMul and Gemm weights big enough to be read in place (sensitivity.IN_PLACE_BYTES)."""
    rng = np.random.default_rng(seed)
    inits = {
        "conv.w": rng.standard_normal((32, 16, 3, 3)) * 0.1,
        "mm.w": rng.standard_normal((32 * 4 * 4, 64)) * 0.05,
        "gemm.w": rng.standard_normal((16, 64)) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv.w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "mm.w"], ["m"]),
        helper.make_node("Gemm", ["m", "gemm.w"], ["y"], transB=1),
    ]
    tensors = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in inits.items()]
    model = make_model(nodes, [value("x", [2, 16, 8, 8])], [value("y", [2, 16])], tensors)
    return model, {"x": rng.standard_normal((2, 16, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("literal", [False, True])
def test_a_stubbed_model_with_its_weights_in_place_runs_as_the_whole_model(literal):
    """Graph optimizations (Conv's NCHWc layout, Gemm fusions) see the same values, and the
    session's outputs are bit for bit the whole model's; the stubbed model carries no weights."""
    model, feeds = wide_model()
    arrays = {w.name: w.array for w in weights_of(model, "conv.w", "mm.w", "gemm.w")}
    stub = runtime.stubbed(model, arrays)
    assert len(stub.SerializeToString()) < 2000 < sum(a.nbytes for a in arrays.values())
    whole = runtime.run(runtime.session(model, literal=literal), feeds)
    in_place = runtime.run(runtime.session(stub, literal=literal, initializers=arrays), feeds)
    assert all(np.array_equal(a, b) for a, b in zip(whole, in_place))


def test_a_probe_reads_every_large_weight_in_place_and_measures_as_before():
    model, feeds = wide_model()
    before = model.SerializeToString()
    weights = weights_of(model, "conv.w", "mm.w", "gemm.w")
    probe = Probe(model, weights, [feeds])
    assert set(probe._arrays) == {"conv.w", "mm.w", "gemm.w"}
    rng = np.random.default_rng(1)
    values = {
        w.name: (w.array + 0.02 * rng.standard_normal(w.array.shape)).astype(np.float32) for w in weights
    }
    for name, v in values.items():
        (noise,) = probe.noise(name, [v])
        assert noise > 0 and noise == pytest.approx(swapped_noise(model, feeds, {name: v}), rel=1e-4)
    assert probe.noise_all(values) == pytest.approx(swapped_noise(model, feeds, values), rel=1e-4)
    assert model.SerializeToString() == before


def test_weights_given_in_place_live_until_their_session_holds_them():
    """onnxruntime keeps bare pointers to the values until the session is created: Fortran-ordered
    arrays (each copied to a temporary first) must still give the whole model's outputs, session
    after session, with other allocations in between."""
    rng = np.random.default_rng(0)
    arrays = {f"w{i}": np.asfortranarray(rng.standard_normal((64, 64)), dtype=np.float32) for i in range(6)}
    nodes = [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]) for i in range(6)]
    tensors = [numpy_helper.from_array(np.ascontiguousarray(a), n) for n, a in arrays.items()]
    model = make_model(nodes, [value("h0", [1, 64])], [value("h6", [1, 64])], tensors)
    feeds = {"h0": rng.standard_normal((1, 64)).astype(np.float32)}
    (whole,) = runtime.run(runtime.session(model), feeds)
    stub = runtime.stubbed(model, arrays)
    for _ in range(10):
        sess = runtime.session(stub, initializers=arrays)
        clutter = [np.full((64, 64), 7.0, np.float32) for _ in range(12)]
        assert np.array_equal(runtime.run(sess, feeds)[0], whole), len(clutter)
