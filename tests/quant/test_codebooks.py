"""Every registered codebook: the documented level formulas, the code layout, and the
level properties of what the quantizer builds from it (hypothesis, bits 1..8)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxq.quant.codebooks import CODEBOOKS, Codebook, code_layout, magnitude_count, zero_code
from onnxq.quant.quantize import quantize

BITS = list(range(1, 9))
CODEBOOK_BITS = [(name, bits) for name in CODEBOOKS for bits in BITS]
# The log-linear families, whose x0 search.py searches (not fitted, not a choice among others)
SEARCHED = [name for name, codebook in CODEBOOKS.items() if not codebook.fitted and not codebook.candidates()]
# 15 examples for each of the 32 (codebook, bits) pairs: 480 per property. At 25 the default suite
# took 315 CPU-s on the 2026-12-07 machine, over its 5 CPU-minute bound.
PROPERTY = settings(max_examples=15, deadline=None)


@st.composite
def weight_groups(draw) -> np.ndarray:
    """(groups, n) float32 weights: per-group scales from 1e-4 to 30, zeros and repeats allowed."""
    groups = draw(st.integers(1, 4))
    n = draw(st.integers(1, 48))
    values = draw(
        hnp.arrays(np.float32, (groups, n), elements=st.floats(-1, 1, width=32, allow_subnormal=False))
    )
    scales = draw(hnp.arrays(np.float64, (groups, 1), elements=st.sampled_from([1e-4, 1e-2, 1.0, 30.0])))
    w = (values * scales).astype(np.float32)
    # Products below float32's smallest normal (1e-38 * 1e-4) would be subnormal, and decode
    # with a few bits of precision, moving the per-tensor scale grid on every pass: flush them.
    w[np.abs(w) < np.finfo(np.float32).tiny] = 0
    return w


def used_levels(table: np.ndarray, bits: int) -> np.ndarray:
    """The columns of a level table that codes can select: all but the spare last code (bits >= 2)."""
    return table if bits == 1 else table[:, : (1 << bits) - 1]


# ---------------------------------------------------------------------------
# The registry and the code layout


def test_registry_keys_are_one_lowercase_word_matching_the_codebook_name():
    assert set(CODEBOOKS) >= {"linear", "exponential", "kmeans", "auto"}
    assert SEARCHED == ["linear", "exponential"]
    for key, codebook in CODEBOOKS.items():
        assert key.isalpha() and key.islower()
        assert isinstance(codebook, Codebook)
        assert codebook.name == key
        assert codebook.summary


@pytest.mark.parametrize("bits", BITS)
def test_code_layout_is_sorted_by_level_with_one_spare_code(bits):
    sign, index = code_layout(bits)
    m = magnitude_count(bits)
    assert sign.size == index.size == 1 << bits
    if bits == 1:
        assert m == 1
        assert sign.tolist() == [-1, 1] and index.tolist() == [0, 0]
        assert zero_code(bits) == 1
        return
    assert m == (1 << (bits - 1)) - 1
    # [-g_M .. -g_1, 0, g_1 .. g_M, spare]
    signed = sign[:-1] * (index[:-1] + 1)
    assert signed.tolist() == list(range(-m, m + 1))
    assert sign[-1] == 0 and index[-1] == -1
    assert zero_code(bits) == m and sign[m] == 0


@pytest.mark.parametrize("bits", BITS)
def test_linear_magnitudes_are_multiples_of_x0(bits):
    x0 = np.array([0.013, 0.2, 1.0])
    mags = CODEBOOKS["linear"].magnitudes(np.log(x0), bits)
    k = np.arange(1, magnitude_count(bits) + 1)
    np.testing.assert_allclose(mags, x0[:, None] * k[None, :], rtol=1e-12)


@pytest.mark.parametrize("bits", BITS)
def test_exponential_magnitudes_grow_geometrically_to_one(bits):
    x0 = np.array([1e-3, 0.2, 0.9])
    mags = CODEBOOKS["exponential"].magnitudes(np.log(x0), bits)
    m = magnitude_count(bits)
    np.testing.assert_allclose(mags[:, 0], x0, rtol=1e-12)
    if m > 1:
        np.testing.assert_allclose(mags[:, -1], 1.0, rtol=1e-12)
        q = (1 / x0) ** (1 / (m - 1))
        np.testing.assert_allclose(mags[:, 1:] / mags[:, :-1], np.repeat(q[:, None], m - 1, 1), rtol=1e-9)


@pytest.mark.parametrize("name", SEARCHED)
@pytest.mark.parametrize("bits", BITS)
def test_magnitudes_are_log_linear_in_x0(name, bits):
    # ln g_k = a_k ln x0 + c_k is what lets the graph rebuild levels from two numbers.
    a, c = CODEBOOKS[name].log_coefficients(bits)
    assert a.shape == c.shape == (magnitude_count(bits),)
    log_x0 = np.array([-5.0, -1.0, -0.1])
    mags = CODEBOOKS[name].magnitudes(log_x0, bits)
    np.testing.assert_allclose(np.log(mags), log_x0[:, None] * a + c, rtol=1e-12, atol=1e-12)
    assert np.all(np.diff(mags, axis=1) > 0)


# ---------------------------------------------------------------------------
# Level properties of the quantized tensors, for every codebook and bits 1..8


@pytest.mark.parametrize(("name", "bits"), CODEBOOK_BITS)
@PROPERTY
@given(w=weight_groups())
def test_levels_are_sorted_and_at_most_2_to_the_bits(name, bits, w):
    q = quantize(w, CODEBOOKS[name], bits, "lsq")
    table = q.level_table()
    assert table.shape == (w.shape[0], 1 << bits)
    levels = used_levels(table, bits)
    assert np.all(np.diff(levels, axis=1) >= 0), "levels are not sorted"
    for row in levels:
        assert np.unique(row).size <= 1 << bits
    if bits >= 2:
        # Symmetric around the zero level, and the spare code decodes to zero.
        np.testing.assert_array_equal(levels, -levels[:, ::-1])
        assert np.all(table[:, -1] == 0)


@pytest.mark.parametrize(("name", "bits"), CODEBOOK_BITS)
@PROPERTY
@given(w=weight_groups())
def test_every_decoded_value_is_a_level(name, bits, w):
    q = quantize(w, CODEBOOKS[name], bits, "lsq")
    assert q.codes.dtype == np.uint8 and q.codes.shape == w.shape
    assert q.dequantized.dtype == np.float32 and q.dequantized.shape == w.shape
    if bits >= 2:
        assert q.codes.max() < (1 << bits) - 1, "the spare code is used"
    else:
        assert q.codes.max() <= 1
    table = q.level_table()
    np.testing.assert_array_equal(q.dequantized, np.take_along_axis(table, q.codes.astype(np.int64), 1))
    for g in range(w.shape[0]):
        assert set(q.dequantized[g].tolist()) <= set(used_levels(table, bits)[g].tolist())


@pytest.mark.parametrize("name", CODEBOOKS)
@pytest.mark.parametrize("bits", BITS)
def test_all_levels_are_used_on_a_dense_ramp(name, bits):
    # A ramp over [-1, 1] that is much denser than the levels must hit every used level.
    w = np.linspace(-1, 1, 20001, dtype=np.float32)[None, :]
    q = quantize(w, CODEBOOKS[name], bits, "lsq")
    used = np.unique(q.codes)
    count = 2 if bits == 1 else (1 << bits) - 1
    if name == "linear":
        assert used.size == count
    else:
        # The exponential levels crowd near zero; most of them must still be used.
        assert used.size >= count * 0.8
    assert used.max() < count
