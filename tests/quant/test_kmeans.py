"""kmeans (a Lloyd-Max table per tensor, a scale per group) and auto (the least-error codebook per tensor)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import matmul_model, reference_weights, run, tiny_model, with_outputs
from hypothesis import given
from hypothesis import strategies as st
from onnx import numpy_helper
from test_codebooks import PROPERTY, weight_groups

import onnxq
from onnxq.graph.select import find_weights
from onnxq.quant.codebooks import CODEBOOKS, code_layout, magnitude_count, zero_code
from onnxq.quant.codebooks.kmeans import fit_table
from onnxq.quant.layout import group_rows
from onnxq.quant.quantize import quantize
from onnxq.storage.fold import DOMAIN

KMEANS = CODEBOOKS["kmeans"]
AUTO = CODEBOOKS["auto"]
CHOICES = ("linear", "exponential", "kmeans")
MAX_ULP = 4  # onnxruntime's Exp against numpy's


def squared_error(w: np.ndarray, q) -> float:
    return float(np.sum((w.astype(np.float64) - q.dequantized) ** 2))


def layer_like(seed: int, dist: str, groups: int = 32, n: int = 256) -> np.ndarray:
    """Conv-like weights: Laplace or Gaussian rows with log-normal channel scales (seeded)."""
    rng = np.random.default_rng(seed)
    draw = rng.laplace if dist == "laplace" else rng.standard_normal
    return (draw(size=(groups, n)) * np.exp(rng.normal(0, 1, (groups, 1)))).astype(np.float32)


# ---------------------------------------------------------------------------
# kmeans: the fit


@pytest.mark.parametrize("bits", range(1, 9))
@PROPERTY
@given(w=weight_groups())
def test_the_table_is_strictly_increasing_in_0_1_with_its_top_at_1(bits, w):
    t, s = fit_table(np.abs(w), bits)
    assert t.shape == (magnitude_count(bits),)
    assert np.all(t > 0) and t[-1] == 1.0
    assert np.all(np.diff(t) > 0)
    live = np.abs(w).max(axis=1) > 0
    assert np.all(s[live] > 0) and np.all(s[~live] == 0)


@pytest.mark.parametrize("bits", [2, 5, 8])
@PROPERTY
@given(w=weight_groups())
def test_kmeans_is_deterministic_and_keeps_the_zero_level(bits, w):
    q = quantize(w, KMEANS, bits, "lsq")
    again = quantize(w.copy(), KMEANS, bits, "lsq")
    np.testing.assert_array_equal(q.codes, again.codes)
    np.testing.assert_array_equal(q.offset, again.offset)
    np.testing.assert_array_equal(q.params, again.params)
    table = q.level_table()
    assert np.all(table[:, zero_code(bits)] == 0)
    # One table per tensor: every group's levels are the same t, scaled.
    sign, _ = code_layout(bits)
    # Rows whose every positive level is a normal float32 (subnormals have few digits).
    live = table[:, sign > 0].min(axis=1) > 1e-30
    if live.any():
        top = table[live][:, 2 * magnitude_count(bits)]
        ratios = table[live][:, sign > 0] / top[:, None]
        np.testing.assert_allclose(ratios, np.broadcast_to(ratios[:1], ratios.shape), rtol=1e-5)


@pytest.mark.parametrize("bits", [3, 4, 5])
@pytest.mark.parametrize("dist", ["laplace", "gaussian"])
@PROPERTY
@given(seed=st.integers(0, 10_000))
def test_kmeans_has_no_more_error_than_the_searched_codebooks(bits, dist, seed):
    w = layer_like(seed, dist)
    ours = squared_error(w, quantize(w, KMEANS, bits, "lsq"))
    for name in ("linear", "exponential"):
        theirs = squared_error(w, quantize(w, CODEBOOKS[name], bits, "lsq"))
        assert ours <= 1.02 * theirs, (name, ours, theirs)


def test_kmeans_beats_exponential_by_a_margin_on_laplace_layers():
    # What the fitted table is for (seed 0, 32 x 256): measured 25.3 dB against 23.8 at 5 bits.
    w = layer_like(0, "laplace")
    for bits in (4, 5):
        assert (
            quantize(w, KMEANS, bits, "lsq").sqnr_db
            > quantize(w, CODEBOOKS["exponential"], bits, "lsq").sqnr_db + 0.5
        )


def test_a_tensor_with_fewer_values_than_levels_is_exact():
    # An empty cell's level moves to split the worst cell, so 1, 1/2 and 1/4 each get a level.
    w = np.array([[5e-5, 2.5e-5] + [1.25e-5] * 18], np.float32)
    q = quantize(w, KMEANS, 3, "lsq")
    np.testing.assert_allclose(q.dequantized, w, rtol=1e-4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["kmeans", "auto"])
def test_nan_or_inf_is_refused(name, bad):
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(np.array([[bad, 1.0, 2.0]], np.float32), CODEBOOKS[name], 4, "lsq")


# ---------------------------------------------------------------------------
# kmeans in the fold format


@pytest.mark.parametrize("bits", range(1, 9))
def test_the_kmeans_table_travels_with_the_call_and_decodes_to_the_levels(bits, rng):
    w = (rng.laplace(size=(40, 24)) * np.exp(rng.normal(0, 1, 24))).astype(np.float32)
    model, feeds = matmul_model(w)
    out, report = onnxq.compress_model(model, onnxq.Config(bits=bits, codebook="kmeans", min_elements=1))
    q = quantize(w.T.copy(), KMEANS, bits, "lsq")  # MatMul B: one group per column
    (call,) = [n for n in out.graph.node if n.domain == DOMAIN]
    (table,) = [t for t in out.graph.initializer if t.name == call.input[3]]
    assert table.name.endswith(".onnxq.offsets")
    offset = numpy_helper.to_array(table)
    assert offset.dtype == np.float32 and offset.shape == (1, 1 << bits)  # a row per weight of the call
    np.testing.assert_array_equal(offset[0], q.offset)
    decoded = run(with_outputs(out, ["W"]), feeds)[0]
    np.testing.assert_array_max_ulp(decoded.T, q.dequantized, maxulp=MAX_ULP)
    # The per-tensor table is counted as codebook bytes, in the weight and in the file.
    (weight,) = report.weights
    assert weight.codebook_bytes == q.params.nbytes + q.ranges.nbytes + 4 * (1 << bits)
    assert report.output.codebooks >= weight.codebook_bytes


def test_the_kmeans_decoder_reads_each_weights_table_from_the_call(tiny):
    model, feeds = tiny
    out, report = onnxq.compress_model(model, onnxq.Config(bits=4, codebook="kmeans"))
    (decoder,) = [f for f in out.functions if f.name == "Decode_kmeans_4"]
    assert list(decoder.input) == ["indices", "params", "ranges", "offsets"]
    (call,) = [n for n in out.graph.node if n.domain == DOMAIN]
    (table,) = [t for t in out.graph.initializer if t.name == call.input[3]]
    assert list(table.dims) == [len(report.weights), 16]
    onnx.checker.check_model(out, full_check=True)
    refs = reference_weights(model, 4, "kmeans", "channel")
    decoded = run(with_outputs(out, list(refs)), feeds)
    for (name, (want, _)), got in zip(refs.items(), decoded):
        np.testing.assert_array_max_ulp(got, want, maxulp=MAX_ULP)


# ---------------------------------------------------------------------------
# auto


@pytest.mark.parametrize("bits", range(1, 9))
@PROPERTY
@given(w=weight_groups())
def test_auto_is_the_least_error_candidate(bits, w):
    q = quantize(w, AUTO, bits, "lsq")
    errors = {name: squared_error(w, quantize(w, CODEBOOKS[name], bits, "lsq")) for name in CHOICES}
    assert q.codebook in CHOICES
    assert squared_error(w, q) == min(errors.values())
    assert q.codebook == min(CHOICES, key=errors.__getitem__)  # the first on a tie


def exponential_grids(bits: int = 3) -> np.ndarray:
    """Two groups exactly on exponential levels of very different x0: no one table fits both."""
    m = magnitude_count(bits)
    rows = []
    for x0 in (0.01, 0.3):
        levels = x0 ** ((m - np.arange(1, m + 1)) / (m - 1))
        rows.append(np.tile(np.concatenate([-levels, [0.0], levels]), 20))
    return np.array(rows, np.float32)


def uniform_grid(bits: int = 4) -> np.ndarray:
    """Groups on uniform grids: linear is exact, kmeans at best ties (its table can be uniform)."""
    m = magnitude_count(bits)
    k = np.tile(np.arange(-m, m + 1), 20).astype(np.float32)
    return np.stack([k, 0.5 * k, 3.0 * k])


@pytest.mark.parametrize(
    ("make", "bits", "winner"),
    [
        (uniform_grid, 4, "linear"),
        (exponential_grids, 3, "exponential"),
        (lambda bits: layer_like(0, "laplace"), 4, "kmeans"),
    ],
    ids=["uniform-grid", "exponential-grids", "laplace-layer"],
)
def test_auto_chooses_per_tensor(make, bits, winner):
    w = make(bits)
    errors = {name: squared_error(w, quantize(w, CODEBOOKS[name], bits, "lsq")) for name in CHOICES}
    q = quantize(w, AUTO, bits, "lsq")
    assert q.codebook == winner, errors
    assert squared_error(w, q) == min(errors.values())


def test_auto_ranks_by_the_error_it_is_given(rng):
    w = layer_like(1, "gaussian", 8, 64)
    by_weight = quantize(w, AUTO, 4, "lsq")
    # An error that prefers the worst candidate: auto follows it.
    worst = max(CHOICES, key=lambda n: squared_error(w, quantize(w, CODEBOOKS[n], 4, "lsq")))
    q = quantize(w, AUTO, 4, "lsq", error=lambda q: -squared_error(w, q))
    assert q.codebook == worst != by_weight.codebook


def test_a_model_compressed_with_auto_holds_a_decoder_per_chosen_codebook():
    model, feeds = tiny_model()
    out, report = onnxq.compress_model(model, onnxq.Config(bits=3, codebook="auto"))
    weights, _ = find_weights(model, 128)
    expected = {w.name: quantize(group_rows(w, "channel"), AUTO, 3, "lsq").codebook for w in weights}
    assert {w.name: w.codebook for w in report.weights} == expected  # the codebook actually chosen
    assert len(set(expected.values())) > 1, "this model should mix codebooks"
    assert {f.name for f in out.functions} >= {f"Decode_{c}_3" for c in expected.values()}
    onnx.checker.check_model(out, full_check=True)
    assert all(np.isfinite(y).all() for y in run(out, feeds))


@pytest.mark.parametrize("codebook", ["kmeans", "auto"])
def test_gptq_and_layer_error_with_fitted_and_chosen_codebooks(codebook, rng):
    # Synthetic calibration gives layer statistics: GPTQ rounds on kmeans levels, and
    # auto ranks its candidates by tr(dW H dW^T).
    w = (rng.laplace(size=(48, 32)) * np.exp(rng.normal(0, 1, 32))).astype(np.float32)
    model, feeds = matmul_model(w)
    config = onnxq.Config(bits=4, codebook=codebook, rounding="gptq", calibration_samples=256)
    out, report = onnxq.compress_model(model, config)
    (weight,) = report.weights
    assert weight.codebook in CHOICES and weight.rounding == "gptq"
    onnx.checker.check_model(out, full_check=True)
    nearest, _ = onnxq.compress_model(model, onnxq.Config(bits=4, codebook=codebook))
    y = run(model, feeds)[0]
    err = {
        name: float(np.sum((run(m, feeds)[0] - y) ** 2)) for name, m in (("gptq", out), ("nearest", nearest))
    }
    assert err["gptq"] < err["nearest"], err  # measured 170 against 241 (kmeans, seed 0)
