"""quantize(): nearest levels, monotonic, idempotent, and the edge cases."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import matmul_model
from hypothesis import given
from hypothesis import strategies as st
from onnx import numpy_helper
from test_codebooks import CODEBOOK_BITS, PROPERTY, used_levels, weight_groups

import onnxq
from onnxq.quant.codebooks import CODEBOOKS, zero_code
from onnxq.quant.quantize import SCALES, quantize

BITS = range(1, 9)


def nearest_violations(w: np.ndarray, q, bits: int) -> np.ndarray:
    """Per weight, how much farther its level is than the nearest level (<= 0 is right)."""
    levels = used_levels(q.level_table(), bits).astype(np.float64)
    w64 = w.astype(np.float64)
    best = np.abs(w64[:, :, None] - levels[:, None, :]).min(axis=2)
    got = np.abs(w64 - q.dequantized)
    scale = np.maximum(np.abs(w64).max(axis=1, keepdims=True), np.abs(levels).max(axis=1, keepdims=True))
    return got - best - 1e-6 * scale


# ---------------------------------------------------------------------------
# Properties, for every codebook and bits 1..8


@pytest.mark.parametrize(("name", "bits"), CODEBOOK_BITS)
@PROPERTY
@given(w=weight_groups(), scale=st.sampled_from(SCALES))
def test_each_weight_maps_to_its_nearest_level(name, bits, w, scale):
    q = quantize(w, CODEBOOKS[name], bits, scale)
    assert nearest_violations(w, q, bits).max() <= 0


@pytest.mark.parametrize(("name", "bits"), CODEBOOK_BITS)
@PROPERTY
@given(w=weight_groups())
def test_quantization_is_monotonic_within_a_group(name, bits, w):
    q = quantize(w, CODEBOOKS[name], bits, "lsq")
    for g in range(w.shape[0]):
        order = np.argsort(w[g], kind="stable")
        assert np.all(np.diff(q.dequantized[g][order]) >= 0)
        assert np.all(np.diff(q.codes[g][order].astype(int)) >= 0)


@pytest.mark.parametrize(("name", "bits"), CODEBOOK_BITS)
@PROPERTY
@given(w=weight_groups())
def test_quantization_is_odd_in_w(name, bits, w):
    q = quantize(w, CODEBOOKS[name], bits, "lsq")
    qn = quantize(-w, CODEBOOKS[name], bits, "lsq")
    nonzero = w != 0  # 1 bit has no zero level: 0 goes to +g_1 either way
    np.testing.assert_array_equal(qn.dequantized[nonzero], -q.dequantized[nonzero])


@pytest.mark.parametrize("name", CODEBOOKS)
@pytest.mark.parametrize("bits", [1, 2])
@PROPERTY
@given(w=weight_groups())
def test_quantizing_twice_changes_nothing_when_only_the_scale_is_free(name, bits, w):
    # At 1 and 2 bits the magnitudes are {g_1} (and 0): any x0 fits the output exactly.
    q = quantize(w, CODEBOOKS[name], bits, "lsq")
    again = quantize(q.dequantized, CODEBOOKS[name], bits, "lsq")
    np.testing.assert_allclose(again.dequantized, q.dequantized, rtol=1e-5, atol=0)
    np.testing.assert_array_equal(again.codes, q.codes)


@pytest.mark.parametrize("name", CODEBOOKS)
@pytest.mark.parametrize("bits", range(3, 9))
@PROPERTY
@given(w=weight_groups())
def test_quantizing_twice_stays_close(name, bits, w):
    # Not exact (see the xfail below), but never far: a regression guard. Measured over
    # 1500 examples: correlation >= 0.978 and moves <= 22% of the peak (exponential, 3 bits,
    # where constant groups pull ln(x0) to LOG_X0_MIN and stretch the per-tensor x0 grid).
    q = quantize(w, CODEBOOKS[name], bits, "lsq")
    again = quantize(q.dequantized, CODEBOOKS[name], bits, "lsq")
    a = q.dequantized.astype(np.float64)
    b = again.dequantized.astype(np.float64)
    for g in range(w.shape[0]):
        if not a[g].any():
            assert not b[g].any()
            continue
        corr = a[g] @ b[g] / np.sqrt((a[g] @ a[g]) * (b[g] @ b[g]))
        assert corr >= 0.95
        assert np.abs(a[g] - b[g]).max() <= 0.4 * np.abs(a[g]).max()


def idempotence_failures(seeds: int = 6) -> list[tuple]:
    """Seeded small groups (3-12 weights, two decimals) whose second quantization moves."""
    failures = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        w = np.round(rng.uniform(-1, 1, (1, int(rng.integers(3, 13)))), 2).astype(np.float32)
        for name in CODEBOOKS:
            for bits in (3, 4, 5, 6):
                q = quantize(w, CODEBOOKS[name], bits, "lsq")
                again = quantize(q.dequantized, CODEBOOKS[name], bits, "lsq")
                if not np.allclose(again.dequantized, q.dequantized, rtol=1e-5, atol=0):
                    failures.append((name, bits, w[0].tolist(), q.dequantized[0], again.dequantized[0]))
    return failures


@pytest.mark.xfail(
    strict=True,
    reason="BUG: quantize(quantize(w).dequantized) != quantize(w).dequantized at bits >= 3 "
    "(seen with exponential levels): the second pass searches x0 again, and any x0 whose "
    "correlation is within the search's 1e-6 of the exact fit (correlation 1) will do, which "
    "near that peak leaves ln(x0) free by about 1e-3; it also re-derives the per-tensor parameter "
    "grids. Values move by up to a few percent of the peak (the exact search: about 0.1%)",
)
def test_quantizing_twice_changes_nothing():
    failures = idempotence_failures()
    assert not failures, f"{len(failures)} cases move, e.g. {failures[:3]}"


# ---------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize(("name", "bits"), CODEBOOK_BITS)
def test_all_zero_groups_stay_zero_and_do_not_disturb_the_others(name, bits, rng):
    w = rng.standard_normal((4, 50)).astype(np.float32)
    alone = quantize(w[[1, 3]], CODEBOOKS[name], bits, "lsq")
    w[0] = 0
    w[2] = 0
    q = quantize(w, CODEBOOKS[name], bits, "lsq")
    assert np.all(q.dequantized[[0, 2]] == 0)
    assert np.all(q.codes[[0, 2]] == zero_code(bits))
    assert np.all(q.level_table()[[0, 2]] == 0)
    assert np.isfinite(q.sqnr_db) and q.correlation > 0.5
    # The zero groups enter neither the per-tensor parameter ranges nor a fitted table.
    np.testing.assert_array_equal(q.dequantized[[1, 3]], alone.dequantized)


@pytest.mark.parametrize("name", CODEBOOKS)
@pytest.mark.parametrize("bits", BITS)
def test_an_all_zero_tensor_is_exact(name, bits):
    q = quantize(np.zeros((3, 17), np.float32), CODEBOOKS[name], bits, "lsq")
    assert np.all(q.dequantized == 0)
    assert q.sqnr_db == float("inf")


@pytest.mark.parametrize(("name", "bits"), CODEBOOK_BITS)
@pytest.mark.parametrize("scale", SCALES)
def test_a_constant_group_is_reproduced(name, bits, scale):
    w = np.full((1, 20), -0.7, dtype=np.float32)
    w[0, ::2] = 0.7
    q = quantize(w, CODEBOOKS[name], bits, scale)
    np.testing.assert_allclose(q.dequantized, w, rtol=1e-5)
    assert q.correlation == pytest.approx(1.0)
    assert q.sqnr_db > 90


@pytest.mark.parametrize(("name", "bits"), CODEBOOK_BITS)
def test_constant_groups_of_different_scales_stay_close(name, bits):
    # The per-group scales share one per-tensor grid, so only the grid's ends are exact.
    w = np.array([[0.7] * 20, [-3.0] * 20, [1e-3] * 20, [0.05] * 20], dtype=np.float32)
    q = quantize(w, CODEBOOKS[name], bits, "lsq")
    np.testing.assert_allclose(q.dequantized, w, rtol=0.01)
    assert q.correlation > 0.9999


@pytest.mark.parametrize(("name", "bits"), CODEBOOK_BITS)
@pytest.mark.parametrize("value", [3.5, -2.0, 1e-6, -40.0])
def test_a_single_element_is_reproduced(name, bits, value):
    q = quantize(np.array([[value]], np.float32), CODEBOOKS[name], bits, "lsq")
    assert q.codes.shape == (1, 1)
    np.testing.assert_allclose(q.dequantized, [[value]], rtol=1e-5)
    assert (q.dequantized[0, 0] > 0) == (value > 0)


@pytest.mark.parametrize("name", CODEBOOKS)
@pytest.mark.parametrize("bits", BITS)
def test_signs_are_kept_and_more_bits_do_better(name, bits, rng):
    w = rng.laplace(size=(8, 300)).astype(np.float32)
    q = quantize(w, CODEBOOKS[name], bits, "lsq")
    signs = np.sign(q.dequantized)
    if bits == 1:
        np.testing.assert_array_equal(signs, np.where(w < 0, -1, 1))
    else:  # small weights may go to the zero level, but never to the other side
        assert np.all((signs == 0) | (signs == np.sign(w)))
    if bits < 8:
        more = quantize(w, CODEBOOKS[name], bits + 1, "lsq")
        assert more.sqnr_db > q.sqnr_db + 2


@pytest.mark.parametrize("name", CODEBOOKS)
def test_sqnr_and_correlation_are_what_the_docstring_says(name, rng):
    w = rng.standard_normal((5, 64)).astype(np.float32)
    q = quantize(w, CODEBOOKS[name], 4, "lsq")
    w64, d = w.astype(np.float64), q.dequantized.astype(np.float64)
    assert q.sqnr_db == pytest.approx(10 * np.log10((w64**2).sum() / ((w64 - d) ** 2).sum()), rel=1e-6)
    assert q.correlation == pytest.approx((w64 * d).sum() / np.sqrt((w64**2).sum() * (d**2).sum()), rel=1e-9)


def test_least_squares_scale_has_no_more_error_than_the_variance_scale(rng):
    w = rng.laplace(size=(16, 200)).astype(np.float32)
    for name in CODEBOOKS:
        for bits in (2, 3, 4, 5):
            lsq = quantize(w, CODEBOOKS[name], bits, "lsq")
            var = quantize(w, CODEBOOKS[name], bits, "variance")
            assert lsq.sqnr_db >= var.sqnr_db - 0.05, (name, bits)


def test_unknown_scale_is_refused(rng):
    with pytest.raises(ValueError, match="scale"):
        quantize(rng.standard_normal((1, 8)), CODEBOOKS["linear"], 4, "median")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_weight_raises_onnxq_error_naming_the_tensor(bad, rng):
    w = rng.standard_normal((16, 24)).astype(np.float32)
    w[3, 5] = bad
    model, _ = matmul_model(w, name="layer3.weight")
    with pytest.raises(onnxq.OnnxqError, match=r"layer3\.weight.*NaN or Inf"):
        onnxq.compress_model(model, onnxq.Config(bits=4))


def test_nan_weight_in_a_constant_node_raises_too(rng):
    w = rng.standard_normal((16, 24)).astype(np.float32)
    w[0, 0] = np.nan
    model, _ = matmul_model(w, name="W")
    const = onnx.helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w))
    model.graph.node.insert(0, const)
    del model.graph.initializer[:]
    with pytest.raises(onnxq.OnnxqError, match="'W'"):
        onnxq.compress_model(model)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_refuses_nan(bad):
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(np.array([[1.0, bad, 2.0], [1.0, 3.0, 2.0]], np.float32), CODEBOOKS["exponential"], 5, "lsq")


# ---------------------------------------------------------------------------
# Parts: a large tensor is quantized a few groups at a time, with the same result


@pytest.mark.parametrize("search", ["exact", "fast", "grid"])
@pytest.mark.parametrize("name", ["exponential", "linear"])
@PROPERTY
@given(w=weight_groups(), bits=st.sampled_from([1, 3, 5]), part=st.integers(1, 60))
def test_quantizing_in_parts_gives_the_same_tensor(name, search, w, bits, part):
    import onnxq.quant.quantize as quantize_module

    whole = quantize(w, CODEBOOKS[name], bits, "variance", search=search)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(quantize_module, "CHUNK_WEIGHTS", part)  # parts of one group up to a few
        parts = quantize(w, CODEBOOKS[name], bits, "variance", search=search)
    np.testing.assert_array_equal(parts.codes, whole.codes)
    np.testing.assert_array_equal(parts.params, whole.params)
    np.testing.assert_array_equal(parts.ranges, whole.ranges)
    assert parts.correlation == pytest.approx(whole.correlation, abs=1e-12)
    assert parts.sqnr_db == pytest.approx(whole.sqnr_db, rel=1e-12)


@pytest.mark.parametrize(
    ("name", "n", "bits", "expected"),
    [
        ("exponential", 64, 5, "grid"),
        ("exponential", 63, 5, "exact"),
        ("exponential", 64, 8, "grid"),
        ("linear", 200, 6, "grid"),
        ("linear", 200, 7, "exact"),
        ("linear", 40, 6, "exact"),  # smaller linear groups at <= 4 bits: grid and exact agree
    ],
)
def test_auto_search_takes_the_grid_for_large_groups_where_it_holds(name, n, bits, expected, rng):
    w = rng.standard_normal((16, n)).astype(np.float32)
    auto = quantize(w, CODEBOOKS[name], bits, "lsq", search="auto")
    chosen = quantize(w, CODEBOOKS[name], bits, "lsq", search=expected)
    np.testing.assert_array_equal(auto.codes, chosen.codes)
    np.testing.assert_array_equal(auto.params, chosen.params)
    other = quantize(w, CODEBOOKS[name], bits, "lsq", search="exact" if expected == "grid" else "grid")
    assert not np.array_equal(other.params, chosen.params)  # so the test tells them apart
