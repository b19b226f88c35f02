"""collect_layer_stats and the calibration data it runs on.

The reference columns are built by explicit loops from the ONNX Conv definition;
that W_g @ columns reproduces onnxruntime's Conv output proves their order and
padding, and the collected E[x] and E[x x^T] must match them.
"""

from __future__ import annotations

import itertools
import math
import time

import conftest
import numpy as np
import onnx
import pytest
from conftest import MODELS, control_flow_model, make_model, randn, run, tiny_model, value
from onnx import helper, numpy_helper

import onnxq
from onnxq.data import samples as data
from onnxq.errors import OnnxqError
from onnxq.graph.select import find_weights
from onnxq.refine.calibrate import LayerSpec, collect_layer_stats, layer_specs
from onnxq.refine.patches import conv_columns, conv_pads


def collect(model, specs, arrays, batch=16):
    """collect_layer_stats on rectangular arrays (samples along axis 0)."""
    inputs = data.input_specs(model)
    return collect_layer_stats(model, specs, data.samples_from(arrays, inputs), inputs, batch)


def synthetic(model, samples, seed=0, dims=None):
    """Seeded synthetic samples on which the model runs (validate.synthetic_plan)."""
    from onnxq.check.validate import synthetic_plan

    plan = synthetic_plan(model, conftest.session(model), data.input_specs(model), dims or {}, seed)
    return plan.feeds(samples, seed)


# ---------------------------------------------------------------------------
# References


def reference_pads(spatial, kernel, strides, dilations, pads, auto_pad):
    """(begin, end) per axis, written out from the ONNX Conv spec."""
    nd = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        result = []
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i])
            extra = total - total // 2
            result.append((total // 2, extra) if auto_pad == "SAME_UPPER" else (extra, total // 2))
        return result
    if auto_pad == "VALID" or not pads:
        return [(0, 0)] * nd
    return [(pads[i], pads[i + nd]) for i in range(nd)]


def loop_columns(x, groups, kernel, strides, dilations, pads) -> np.ndarray:
    """(G, M, K) in float64 by explicit loops: rows (n, *out), columns (channel, *kernel)."""
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *pads])
    n, c, *spatial = x.shape
    per_group = c // groups
    out = [(s - (k - 1) * d - 1) // st + 1 for s, k, d, st in zip(spatial, kernel, dilations, strides)]
    cols = np.zeros((groups, n * math.prod(out), per_group * math.prod(kernel)))
    for g in range(groups):
        for row, (i, pos) in enumerate(itertools.product(range(n), itertools.product(*map(range, out)))):
            col = 0
            for ch in range(per_group):
                for k in itertools.product(*map(range, kernel)):
                    at = tuple(p * st + kk * d for p, st, kk, d in zip(pos, strides, k, dilations))
                    cols[g, row, col] = x[(i, g * per_group + ch, *at)]
                    col += 1
    return cols


def moments(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[x] and E[x x^T] of (G, M, K) columns."""
    return cols.mean(axis=1), np.einsum("gmk,gml->gkl", cols, cols) / cols.shape[1]


def conv_model(x_shape, w, **attrs) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)
    nd = len(x_shape) - 2
    return make_model(
        [node],
        [value("x", ["N", *x_shape[1:]])],
        [value("y", ["N", w.shape[0], *[None] * nd])],
        [numpy_helper.from_array(w, "w")],
    )


def specs_of(model: onnx.ModelProto) -> list[LayerSpec]:
    specs, _ = layer_specs(model, find_weights(model, 1)[0])
    return specs


# ---------------------------------------------------------------------------
# Conv, Gemm, MatMul

CONVS = {
    "plain": ((3, 4, 6, 7), (5, 4, 3, 3), {}),
    "strided, padded, dilated": (
        (2, 3, 9, 8),
        (4, 3, 3, 2),
        {"strides": [2, 1], "dilations": [2, 1], "pads": [1, 0, 2, 1]},
    ),
    "dilated, asymmetric pads, stride 1": (
        (2, 3, 8, 9),
        (4, 3, 3, 3),
        {"dilations": [2, 1], "pads": [2, 0, 1, 1]},
    ),
    "grouped": ((2, 6, 7, 7), (4, 3, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    "depthwise": ((2, 5, 8, 8), (5, 1, 3, 3), {"group": 5, "pads": [1, 1, 1, 1]}),
    "depthwise, stride 2": ((2, 4, 9, 9), (8, 1, 5, 5), {"group": 4, "strides": [2, 2], "pads": [2] * 4}),
    "SAME_UPPER, stride 2": ((2, 3, 7, 8), (4, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "SAME_LOWER, even kernel": ((2, 3, 6, 5), (2, 3, 2, 2), {"auto_pad": "SAME_LOWER"}),
    "VALID, 1x1 stride 2": ((2, 4, 7, 6), (3, 4, 1, 1), {"auto_pad": "VALID", "strides": [2, 2]}),
    "1x1, grouped": ((3, 6, 5, 4), (4, 3, 1, 1), {"group": 2}),
    "1D, grouped, strided": ((3, 4, 11), (6, 2, 3), {"group": 2, "strides": [2], "pads": [1, 2]}),
    "1D, stride 1": ((2, 3, 10), (2, 3, 4), {"pads": [0, 3], "dilations": [2]}),
    "3D": ((2, 2, 4, 5, 4), (3, 2, 2, 3, 2), {"pads": [1, 0, 0, 0, 1, 1]}),
}


@pytest.mark.parametrize("case", CONVS)
def test_conv_columns_and_stats_match_the_definition(case, rng):
    x_shape, w_shape, attrs = CONVS[case]
    x, w = randn(rng, *x_shape), randn(rng, *w_shape)
    model = conv_model(x_shape, w, **attrs)
    (y,) = run(model, {"x": x})
    groups, kernel = attrs.get("group", 1), w_shape[2:]
    nd = len(kernel)
    strides, dilations = tuple(attrs.get("strides", [1] * nd)), tuple(attrs.get("dilations", [1] * nd))
    pads = reference_pads(x_shape[2:], kernel, strides, dilations, attrs.get("pads"), attrs.get("auto_pad"))
    ref = loop_columns(x, groups, kernel, strides, dilations, pads)

    # The reference is right: each group's weight rows times its columns is onnxruntime's output.
    out = np.einsum("grk,gmk->grm", w.reshape(groups, w_shape[0] // groups, -1), ref)
    out = out.reshape(w_shape[0], x_shape[0], *y.shape[2:]).swapaxes(0, 1)
    np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-4)

    (spec,) = specs_of(model)
    assert (spec.groups, spec.columns) == (groups, w_shape[1] * math.prod(kernel))
    got_pads = conv_pads(x_shape[2:], kernel, strides, dilations, spec.pads, spec.auto_pad)
    assert got_pads == pads
    cols, keep = conv_columns(x, groups, kernel, strides, dilations, got_pads)
    if keep is not None:
        cols = cols[..., keep.astype(bool)]
    np.testing.assert_array_equal(cols.swapaxes(1, 2), ref)

    stats = collect(model, [spec], {"x": x}, batch=2)["conv"]
    mean, hessian = moments(ref)
    assert stats.count == ref.shape[1]
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.hessian, hessian, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_stats_are_the_moments_of_its_input_rows(trans_a, trans_b, rng):
    k, n = 6, 4
    w = randn(rng, *((n, k) if trans_b else (k, n)))
    nodes = [helper.make_node("Gemm", ["a", "w"], ["y"], transA=trans_a, transB=trans_b, name="gemm")]
    if trans_a:  # A is (K, M): transpose a (M, K) input so that samples stay on axis 0
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["a"]))
    else:
        nodes.insert(0, helper.make_node("Identity", ["x"], ["a"]))
    model = make_model(
        nodes, [value("x", ["N", k])], [value("y", [None, None])], [numpy_helper.from_array(w, "w")]
    )
    x = randn(rng, 9, k)
    (spec,) = specs_of(model)
    assert (spec.groups, spec.columns, spec.trans_a) == (1, k, bool(trans_a))
    stats = collect(model, [spec], {"x": x}, batch=4)["gemm"]
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(stats.mean, x64.mean(0)[None], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats.hessian, (x64.T @ x64 / 9)[None], rtol=1e-5, atol=1e-6)
    assert stats.count == 9


def test_matmul_flattens_batch_dims_into_rows(rng):
    w = randn(rng, 5, 3)
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")],
        [value("x", ["N", 4, 5])],
        [value("y", ["N", 4, 3])],
        [numpy_helper.from_array(w, "w")],
    )
    x = randn(rng, 6, 4, 5)
    stats = collect(model, specs_of(model), {"x": x}, batch=4)["mm"]
    rows = np.maximum(x, 0).reshape(-1, 5).astype(np.float64)
    assert stats.count == 24
    np.testing.assert_allclose(stats.mean, rows.mean(0)[None], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats.hessian, (rows.T @ rows / 24)[None], rtol=1e-5, atol=1e-6)


def test_layers_that_read_one_input_share_its_statistics(rng):
    """q, k and v read the same rows: one LayerStats for the three, equal to each one's alone;
    a MatMul on another input keeps its own."""
    names = ["q", "k", "v", "o"]
    ws = {n: randn(rng, 5, 5) for n in names}
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    nodes += [helper.make_node("MatMul", ["r", f"{n}.w"], [n], name=n) for n in names[:3]]
    nodes += [helper.make_node("MatMul", ["q", "o.w"], ["y"], name="o")]
    model = make_model(
        nodes,
        [value("x", ["N", 5])],
        [value("y", ["N", 5]), value("k", ["N", 5]), value("v", ["N", 5])],
        [numpy_helper.from_array(w, f"{n}.w") for n, w in ws.items()],
    )
    arrays = {"x": randn(rng, 7, 5)}
    specs = specs_of(model)
    together = collect(model, specs, arrays)
    assert together["q"] is together["k"] is together["v"] and together["o"] is not together["q"]
    for s in specs:
        alone = collect(model, [s], arrays)[s.key]
        assert np.array_equal(alone.hessian, together[s.key].hessian) and alone.count == together[s.key].count


# ---------------------------------------------------------------------------
# Batching


def integer_network(rng) -> tuple[onnx.ModelProto, np.ndarray]:
    """Conv -> depthwise Conv -> Flatten -> Gemm with small integer weights and inputs.

    Every product and partial sum is an integer below 2^24, exact in float32, so
    the statistics cannot depend on how the samples are batched.
    """
    inits = [
        numpy_helper.from_array(rng.integers(-1, 2, (4, 2, 3, 3)).astype(np.float32), "c1.w"),
        numpy_helper.from_array(rng.integers(-1, 2, (4, 1, 3, 3)).astype(np.float32), "dw.w"),
        numpy_helper.from_array(rng.integers(-1, 2, (4 * 25, 3)).astype(np.float32), "fc.w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w"], ["c1"], pads=[1] * 4, name="c1"),
        helper.make_node("Conv", ["c1", "dw.w"], ["dw"], pads=[1] * 4, group=4, name="dw"),
        helper.make_node("Flatten", ["dw"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w"], ["y"], name="fc"),
    ]
    model = make_model(nodes, [value("x", ["N", 2, 5, 5])], [value("y", ["N", 3])], inits)
    return model, rng.integers(-1, 2, (14, 2, 5, 5)).astype(np.float32)


def test_statistics_do_not_depend_on_the_batch_size(rng):
    model, x = integer_network(rng)
    specs = specs_of(model)
    assert [s.key for s in specs] == ["c1", "dw", "fc"]
    results = [collect(model, specs, {"x": x}, batch=b) for b in (1, 7, 14, 5)]
    for other in results[1:]:
        for key, stats in results[0].items():
            assert other[key].count == stats.count
            np.testing.assert_allclose(other[key].mean, stats.mean, rtol=1e-10, atol=0)
            np.testing.assert_allclose(other[key].hessian, stats.hessian, rtol=1e-10, atol=0)
    assert results[0]["dw"].hessian.shape == (4, 9, 9)
    assert results[0]["fc"].count == 14 and results[0]["c1"].count == 14 * 25


@pytest.mark.parametrize("batch", [1, 5])
def test_h_rebuilt_from_the_columns_is_the_summed_h_bit_for_bit(rng, monkeypatch, batch):
    """Whether a layer keeps its columns (few of them through a wide layer), its sums, or switches
    from one to the other midway; and only the H last read is held."""
    from onnxq.refine import calibrate

    model, x = integer_network(rng)
    x = x + rng.standard_normal(x.shape).astype(np.float32)  # rounding that order would show
    monkeypatch.setattr(calibrate, "COLUMNS_FROM", 0)
    specs = specs_of(model)
    got = {}
    for share in (0.0, 0.02, 0.1, 1e9):
        monkeypatch.setattr(calibrate, "COLUMNS_SHARE", share)
        got[share] = collect(model, specs, {"x": x}, batch=batch)
    kept = {share: {k: s._hessian is None for k, s in stats.items()} for share, stats in got.items()}
    assert not any(kept[0.0].values()) and all(kept[1e9].values())
    assert kept[0.02] != kept[0.0] or kept[0.1] != kept[0.0]  # some layers switched or kept columns
    for stats in got.values():
        for key, s in stats.items():
            whole = got[0.0][key]
            assert np.array_equal(s.hessian, whole.hessian) and np.array_equal(s.mean, whole.mean)
            g, k = s.mean.shape
            delta = rng.standard_normal((2 * g, k)).astype(np.float32)  # tr(dW H dW^T), from either
            d = delta.reshape(g, 2, k).astype(np.float64)
            assert s.error(delta) == pytest.approx(
                np.einsum("gok,gkl,gol->", d, whole.hessian, d), rel=1e-6
            )  # H: float32 products
    a, b = got[1e9]["c1"], got[1e9]["fc"]
    assert a.hessian is a.hessian  # made once while it is the last read
    assert b.hessian.shape == (1, 100, 100)
    assert a._rebuilt is None and b._rebuilt is not None


def test_weights_handed_in_place_give_the_same_statistics_without_copying_the_model(rng, monkeypatch):
    """arrays: the session reads those weights in place, as steps.layer_statistics hands them (stubs
    in the model it gets, or, for a weight only a MatMul, Gemm or Gather reads, an input fed at each
    run), and the statistics are the same."""
    from onnxq import runtime

    model, x = integer_network(rng)
    specs = specs_of(model)
    whole = collect(model, specs, {"x": x}, batch=5)
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    given = []
    real = runtime.session
    monkeypatch.setattr(runtime, "session", lambda proto, **k: given.append(proto) or real(proto, **k))
    inputs = data.input_specs(model)
    got = collect_layer_stats(model, specs, data.samples_from({"x": x}, inputs), inputs, 5, arrays=arrays)
    (proto,) = given
    stubs = {t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    fed = {i.name for i in proto.graph.input} & set(arrays)
    assert stubs == {"c1.w", "dw.w"} and fed == {"fc.w"}  # Conv weights held, the Gemm's fed
    assert not any(t.raw_data for t in proto.graph.initializer)
    for key, stats in whole.items():
        np.testing.assert_array_equal(got[key].hessian, stats.hessian)
        np.testing.assert_array_equal(got[key].mean, stats.mean)


def test_a_fixed_batch_dimension_sets_the_samples_per_run(rng):
    w = randn(rng, 3, 2)
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [value("x", [2, 3])],
        [value("y", [2, 2])],
        [numpy_helper.from_array(w, "w")],
    )
    x = randn(rng, 6, 3)
    stats = collect(model, specs_of(model), {"x": x}, batch=5)["mm"]
    np.testing.assert_allclose(stats.hessian[0], x.T.astype(np.float64) @ x / 6, rtol=1e-5)
    with pytest.raises(OnnxqError, match="multiple of 2"):
        collect(model, specs_of(model), {"x": x[:5]})


# ---------------------------------------------------------------------------
# Which layers


def test_layer_specs_cover_main_graph_layers_and_say_why_others_are_left_out(tiny):
    specs, skips = layer_specs(tiny[0], find_weights(tiny[0], 1)[0])
    assert {s.key: (s.op, s.weight, s.activation) for s in specs} == {
        "conv": ("Conv", "conv.w", "x"),
        "mm": ("MatMul", "mm.b", "flat"),
        "gemm": ("Gemm", "gemm.b", "m1"),
        "gemm2": ("Gemm", "gemm2.b", "g1"),
    }
    reasons = {s.name: s.reason for s in skips}
    assert reasons == {
        "convt.w": "ConvTranspose convt: ConvTranspose input 1 is not supported",
        "emb": "Gather gather: Gather input 0 is not supported",
    }
    assert {s.key: (s.groups, s.columns) for s in specs} == {
        "conv": (1, 27),
        "mm": (1, 400),
        "gemm": (1, 24),
        "gemm2": (1, 13),
    }


def test_subgraph_layers_are_absent():
    model, _ = control_flow_model()
    specs, skips = layer_specs(model, find_weights(model, 1)[0])
    assert [(s.key, s.weight) for s in specs] == [("const.mm", "const.w")]
    assert {s.name for s in skips} == {"then.w", "else.w", "loop.w"}
    assert all("subgraphs" in s.reason for s in skips)


def test_a_weight_with_two_consumers_gives_two_specs_and_constant_inputs_none(rng):
    w = randn(rng, 4, 4)
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
            helper.make_node("MatMul", ["h", "w"], ["y"]),  # unnamed: keyed by its output
            helper.make_node("MatMul", ["c", "w"], ["z"], name="const"),
        ],
        [value("x", ["N", 4])],
        [value("y", ["N", 4]), value("z", [2, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(randn(rng, 2, 4), "c")],
    )
    specs, skips = layer_specs(model, find_weights(model, 1)[0])
    assert [(s.key, s.activation) for s in specs] == [("first", "x"), ("y", "h")]
    assert {s.name: s.reason for s in skips} == {
        "c": "MatMul const: the weight is the first operand, which is not supported",
        "w": "MatMul const: its input is a constant",
    }


def test_missing_inputs_are_an_error_before_any_run(tiny):
    specs, _ = layer_specs(tiny[0], find_weights(tiny[0], 1)[0])
    with pytest.raises(OnnxqError, match=r"lacks inputs \['ids'\]"):
        collect(tiny[0], specs, {"x": tiny[1]["x"]})


def masked_matmul(w: np.ndarray) -> onnx.ModelProto:
    """y = (x * mask) @ w, x (N, S, 4) and an int64 attention mask (N, S)."""
    return make_model(
        [
            helper.make_node("Cast", ["mask"], ["m"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
            helper.make_node("Mul", ["x", "m3"], ["xm"]),
            helper.make_node("MatMul", ["xm", "w"], ["y"], name="mm"),
        ],
        [value("x", ["N", "S", 4]), value("mask", ["N", "S"], onnx.TensorProto.INT64)],
        [value("y", ["N", "S", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([2], np.int64), "axes")],
    )


def test_padding_rows_are_left_out_of_matmul_statistics(rng):
    model = masked_matmul(randn(rng, 4, 3))
    x = randn(rng, 3, 5, 4) + 1.0
    mask = np.ones((3, 5), np.int64)
    mask[0, 3:] = mask[2, 1:] = 0  # padding: 2 + 4 of the 15 positions
    stats = collect(model, specs_of(model), {"x": x, "mask": mask})["mm"]
    rows = x.reshape(-1, 4)[mask.ravel() != 0].astype(np.float64)
    assert stats.count == 9
    np.testing.assert_allclose(stats.mean[0], rows.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.hessian[0], rows.T @ rows / 9, rtol=1e-5)


def test_a_layer_that_sees_no_input_has_no_statistics(rng):
    """Every position padding: the MatMul sees no row, and gets no entry rather than an error."""
    model = masked_matmul(randn(rng, 4, 3))
    x, mask = randn(rng, 2, 5, 4), np.zeros((2, 5), np.int64)
    assert collect(model, specs_of(model), {"x": x, "mask": mask}) == {}


def test_samples_of_different_lengths_each_run_at_their_own(rng):
    w = randn(rng, 4, 3)
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [value("x", [1, "S", 4])],
        [value("y", [1, "S", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    xs = [randn(rng, 1, n, 4) for n in (3, 7, 1)]
    inputs = data.input_specs(model)
    samples = data.samples_from({f"x/{i}": x for i, x in enumerate(xs)}, inputs)
    stats = collect_layer_stats(model, specs_of(model), samples, inputs)["mm"]
    rows = np.concatenate([x.reshape(-1, 4) for x in xs]).astype(np.float64)
    assert stats.count == 11
    np.testing.assert_allclose(stats.hessian[0], rows.T @ rows / 11, rtol=1e-5)


# ---------------------------------------------------------------------------
# A real model


@pytest.mark.skipif(
    not (MODELS / "mobilenet_v1_0.25_128.onnx").exists(), reason=f"no shared models in {MODELS}"
)
def test_every_conv_and_gemm_of_a_real_model():
    model = onnx.load(MODELS / "mobilenet_v1_0.25_128.onnx")
    specs = specs_of(model)
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(specs) == len(layers)
    samples = synthetic(model, 8)
    start = time.perf_counter()
    stats = collect_layer_stats(model, specs, samples, data.input_specs(model), batch=4)
    conftest.MEASUREMENTS[
        f"calibration statistics, {len(specs)} layers, 8 samples, mobilenet_v1_0.25_128"
    ] = f"{time.perf_counter() - start:.2f} s"
    for spec in specs:
        h = stats[spec.key].hessian
        assert h.shape == (spec.groups, spec.columns, spec.columns)
        assert np.all(np.diagonal(h, axis1=1, axis2=2) >= 0)
        assert np.array_equal(h, h.transpose(0, 2, 1))


def test_data_free_statistics_for_inputs_with_different_fixed_first_dimensions():
    model, _ = tiny_model()  # x is (1, 3, 8, 8) and ids (6,): a sample is 1 image and 6 ids
    samples = synthetic(model, 4)
    assert [s["ids"].shape for s in samples] == [(6,)] * 4
    weights, _ = find_weights(model, 1)
    specs, _ = layer_specs(model, weights)
    stats = collect_layer_stats(model, specs, samples, data.input_specs(model))
    assert stats and all(s.count > 0 for s in stats.values())


def test_calibration_files_give_fixed_length_inputs_their_rows_per_sample(tmp_path, rng):
    model, _ = tiny_model()
    path = tmp_path / "calib.npz"
    np.savez(path, x=randn(rng, 5, 3, 8, 8), ids=rng.integers(0, 40, 30))
    samples = data.read_samples(path, data.input_specs(model), "calibration file")
    assert len(samples) == 5 and samples[1]["ids"].shape == (6,)
    # GPTQ and bias correction run on it, one sample (1 image and 6 ids) per run.
    _, report = onnxq.compress_model(model, onnxq.Config(bits=5, calibration=str(path), validate=False))
    assert report.calibration.startswith("calibration")
    assert {w.rounding for w in report.weights} >= {"gptq"}
    np.savez(path, x=randn(rng, 5, 3, 8, 8), ids=rng.integers(0, 40, 29))
    with pytest.raises(OnnxqError, match="multiple of 6"):
        data.read_samples(path, data.input_specs(model), "calibration file")


def test_layer_statistics_hands_the_weights_in_place(rng, monkeypatch):
    from onnxq.refine import calibrate, sensitivity, steps

    monkeypatch.setattr(sensitivity, "IN_PLACE_BYTES", 0)  # this model's weights are small
    model, x = integer_network(rng)
    weights = find_weights(model, 1)[0]
    inputs = data.input_specs(model)
    source = steps.Data("calibration", "test", data.samples_from({"x": x}, inputs), inputs)
    seen = []
    real = calibrate.collect_layer_stats
    monkeypatch.setattr(calibrate, "collect_layer_stats", lambda *a, **k: seen.append(k) or real(*a, **k))
    layers, _ = steps.layer_statistics(model, weights, source)
    assert layers and set(seen[0]["arrays"]) == {w.name for w in weights} == {"c1.w", "dw.w", "fc.w"}
