"""--group-size: per-block parameters along the input dimensions, in the file and in GPTQ."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import gptq, matmul_model, run, with_outputs
from hypothesis import given, settings
from hypothesis import strategies as st

import onnxq
from onnxq import jobs
from onnxq.check.inspect import float_weight
from onnxq.errors import OnnxqError
from onnxq.graph.select import find_weights
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.layout import block_size, group_rows
from onnxq.quant.quantize import quantize
from onnxq.refine.widths import Choice


def weight_of(model):
    (w,), _ = find_weights(model, 1)
    return w


def test_blocks_cut_each_channel_along_its_inputs(rng):
    model, _ = matmul_model(rng.standard_normal((64, 12)).astype(np.float32))  # 12 channels of K = 64
    w = weight_of(model)
    rows = group_rows(w, "channel", 16)
    assert rows.shape == (12 * 4, 16)
    np.testing.assert_array_equal(rows.reshape(12, 64), w.array.T)
    assert block_size(w, 16) == 16 and block_size(w, 48) is None and block_size(w, 64) is None
    assert group_rows(w, "channel", 48).shape == (12, 64)  # 48 does not divide 64: per channel


@pytest.mark.parametrize("codebook", ["linear", "exponential"])
@pytest.mark.parametrize("bits", [2, 4, 5])
def test_blocks_decode_in_onnxruntime_to_their_levels(rng, codebook, bits):
    w = (rng.standard_normal((64, 12)) * np.exp(rng.normal(0, 1, (64, 1)))).astype(np.float32)
    model, feeds = matmul_model(w)
    out, report = onnxq.compress_model(
        model, onnxq.Config(bits=bits, codebook=codebook, group_size=16, min_elements=1)
    )
    (entry,) = report.weights
    assert entry.groups == 12 * 4
    q = quantize(group_rows(weight_of(model), "channel", 16), CODEBOOKS[codebook], bits, "lsq")
    decoded = run(with_outputs(out, ["W"]), feeds)[0]
    np.testing.assert_allclose(decoded.T.reshape(-1, 16), q.dequantized, rtol=2e-6, atol=1e-7)


def test_blocks_fit_rows_whose_scale_changes_along_the_inputs_better(rng):
    w = rng.standard_normal((64, 12)) * np.where(np.arange(64) < 32, 0.01, 1.0)[:, None]
    model, _ = matmul_model(w.astype(np.float32))
    weight = weight_of(model)
    small = np.arange(64) < 32

    def small_part_sqnr(group_size):
        q = quantize(group_rows(weight, "channel", group_size), CODEBOOKS["exponential"], 3, "lsq")
        deq = q.dequantized.reshape(12, 64).T
        err = np.sum((deq[small] - w[small]) ** 2)
        return 10 * np.log10(np.sum(w[small] ** 2) / err)

    assert small_part_sqnr(32) > small_part_sqnr(None) + 10
    per_channel = onnxq.compress_model(model, onnxq.Config(bits=3, min_elements=1))[1].weights[0]
    per_block = onnxq.compress_model(model, onnxq.Config(bits=3, min_elements=1, group_size=32))[1].weights[0]
    assert per_block.codebook_bytes > per_channel.codebook_bytes  # the overhead is counted


def test_gptq_uses_each_block_its_own_levels(rng):
    w = rng.standard_normal((8, 48)) * np.repeat(rng.lognormal(0, 1, 3), 16)[None, :]
    x = rng.standard_normal((500, 48)) @ (np.eye(48) + 0.3 * rng.standard_normal((48, 48)))
    h = (x.T @ x / 500)[None]
    q = quantize(w.reshape(-1, 16), CODEBOOKS["exponential"], 3, "lsq")
    g = gptq(q, w, h)
    assert g.codes.shape == q.codes.shape
    np.testing.assert_array_equal(
        g.dequantized, np.take_along_axis(q.level_table(), g.codes.astype(np.int64), 1)
    )

    def out_err(deq):
        d = deq.reshape(w.shape) - w
        return float(np.sum((d @ h[0]) * d))

    assert out_err(g.dequantized) < out_err(q.dequantized)


def test_group_size_needs_channel_granularity(tmp_path, tiny_path):
    with pytest.raises(OnnxqError, match="--group-size"):
        onnxq.compress(tiny_path, tmp_path / "out.onnx", group_size=16, granularity="tensor")


def test_tensors_it_does_not_divide_are_named_in_a_note(rng):
    model, _ = matmul_model(rng.standard_normal((24, 12)).astype(np.float32))
    _, report = onnxq.compress_model(model, onnxq.Config(group_size=16, min_elements=1))
    assert any("--group-size 16 does not split 1 tensors" in n for n in report.notes)
    assert report.weights[0].groups == 12
    onnx.checker.check_model(_, full_check=True)


@settings(max_examples=40, deadline=None)
@given(
    k=st.sampled_from([8, 16, 48, 64, 96, 256]),
    n=st.integers(1, 9),
    fmt=st.sampled_from(["fold", "qdq", "matmulnbits"]),
    codebook=st.sampled_from(["linear", "exponential"]),
    bits=st.integers(2, 8),
    granularity=st.sampled_from(["channel", "tensor"]),
    asked=st.sampled_from([None, 16, 32]),
)
def test_inspect_predicts_the_rows_compress_quantizes(k, n, fmt, codebook, bits, granularity, asked):
    """One decision (storage.group_size) for both: inspect's groups are weight_rows' rows."""
    model, _ = matmul_model(np.ones((k, n), np.float32))
    w = weight_of(model)
    if granularity == "tensor":
        asked = None
    config = jobs.Settings(codebook, granularity, "lsq", "auto", asked, 1, fmt)
    rows = jobs.weight_rows(w, config, Choice(bits))
    predicted = float_weight(w, fmt, codebook, bits, granularity, asked)
    assert predicted.groups == rows.shape[0]
    blocks = rows.shape[0] > (n if granularity == "channel" else 1)
    by_default = fmt == "matmulnbits" and codebook == "linear" and bits in (2, 4, 8) and k > 16
    assert blocks == (
        granularity == "channel" and (asked is not None and k > asked or asked is None and by_default)
    )


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 2100),
    st.sampled_from([np.float32, np.float64, np.float16]),
)
def test_channels_moved_is_moveaxis_for_any_shape(rows, cols, dtype):
    """The tiled transpose of a 2-D weight (tiles of layout.TILE, ragged at the edges) gives
    np.moveaxis's values and shape, contiguous; other ranks and axis 0 give moveaxis itself."""
    from onnxq.quant.layout import channels_moved

    a = np.arange(rows * cols, dtype=np.float64).reshape(rows, cols).astype(dtype)
    got = channels_moved(a, 1)
    assert got.flags.c_contiguous and got.dtype == a.dtype
    np.testing.assert_array_equal(got, np.moveaxis(a, 1, 0))
    assert channels_moved(a, 0) is a
    cube = a.reshape(rows, cols, 1)
    np.testing.assert_array_equal(channels_moved(cube, 1), np.moveaxis(cube, 1, 0))


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([(7,), (5, 9), (9, 5), (3, 4, 2, 2), (1, 1)]),
    st.integers(0, 3),
    st.booleans(),
)
def test_weight_array_is_to_weight_contiguous(shape, axis, per_tensor):
    """What a session is fed of a weight's rows: to_weight's values, shape and type, contiguous,
    per channel and per tensor (rows of one)."""
    from onnxq.graph.select import Weight
    from onnxq.quant.layout import float_rows, to_rows, to_weight, weight_array

    axis = min(axis, len(shape) - 1) if len(shape) > 1 else 0
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    w = Weight("w", a, axis, onnx.GraphProto(), None)
    rows = float_rows(w)
    values = to_rows(
        w, a.reshape(1, -1) if per_tensor else np.ascontiguousarray(rows)
    )  # (1, n): original order
    got = weight_array(w, values)
    assert got.flags.c_contiguous and got.dtype == a.dtype
    np.testing.assert_array_equal(got, to_weight(w, values))
    np.testing.assert_array_equal(got, a)
