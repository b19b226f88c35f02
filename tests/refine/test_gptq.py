"""gptq: same levels as plain rounding, codes chosen to cut the layer's output error."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import gptq
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.quantize import Nearest, nearest_codes, quantize
from onnxq.refine.gptq import DAMPING, damping_for, gptq_codes, prepare_hessian


def layer(seed: int, rows: int = 12, cols: int = 40, samples: int = 400, groups: int = 1):
    """Weights (rows, cols) and H of inputs whose columns are strongly correlated."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)) * rng.lognormal(0, 0.5, (rows, 1))
    hs = []
    for _ in range(groups):
        mix = rng.standard_normal((cols, cols)) * 0.3 + np.eye(cols)
        x = rng.standard_normal((samples, cols)) @ mix + rng.standard_normal(cols)
        hs.append(x.T @ x / samples)
    return w, np.stack(hs)


def output_error(w: np.ndarray, wq: np.ndarray, h: np.ndarray) -> float:
    g = h.shape[0]
    d = (wq - w).reshape(g, -1, w.shape[1])
    return float(np.einsum("grk,gkl,grl->", d, h, d))


@pytest.mark.parametrize("codebook", ["linear", "exponential"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_gptq_cuts_the_output_error_of_plain_rounding(codebook, bits):
    w, h = layer(bits)
    q = quantize(w, CODEBOOKS[codebook], bits, "lsq")
    g = gptq(q, w, h)
    plain = output_error(w, q.dequantized, h)
    ours = output_error(w, g.dequantized, h)
    assert ours < 0.9 * plain, (ours, plain)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.integers(1, 8), codebook=st.sampled_from(sorted(CODEBOOKS)))
def test_gptq_keeps_the_levels_and_stores_valid_codes(seed, bits, codebook):
    w, h = layer(seed, rows=6, cols=10, samples=50)
    q = quantize(w, CODEBOOKS[codebook], bits, "lsq")
    g = gptq(q, w, h)
    np.testing.assert_array_equal(g.params, q.params)
    np.testing.assert_array_equal(g.ranges, q.ranges)
    assert g.codes.shape == q.codes.shape and g.codes.dtype == np.uint8
    assert int(g.codes.max()) < 1 << bits
    table = q.level_table()
    np.testing.assert_array_equal(g.dequantized, np.take_along_axis(table, g.codes.astype(np.int64), 1))


@pytest.mark.parametrize("bits", [3, 5])
def test_uncorrelated_inputs_give_plain_nearest_rounding(bits):
    w, _ = layer(7)
    h = np.diag(np.random.default_rng(1).uniform(0.5, 2.0, w.shape[1]))[None]
    q = quantize(w, CODEBOOKS["exponential"], bits, "lsq")
    np.testing.assert_array_equal(gptq(q, w, h).codes, q.codes)


def test_groups_use_their_own_hessian():
    w, h = layer(3, rows=8, groups=2)
    q = quantize(w, CODEBOOKS["exponential"], 4, "lsq")
    both = gptq(q, w, h)
    top = replace(q, codes=q.codes[:4], params=q.params[:4])
    first = gptq(top, w[:4], h[:1])
    np.testing.assert_array_equal(both.codes[:4], first.codes)


def test_tensor_granularity_shares_one_level_table():
    w, h = layer(4)
    q = quantize(w.reshape(1, -1), CODEBOOKS["exponential"], 4, "lsq")
    g = gptq(q, w, h)
    assert g.codes.shape == (1, w.size)
    assert output_error(w, g.dequantized.reshape(w.shape), h) < output_error(
        w, q.dequantized.reshape(w.shape), h
    )


def test_dead_inputs_and_singular_hessians_do_not_break_it():
    w, h = layer(5)
    h[:, 3, :] = 0
    h[:, :, 3] = 0  # input 3 is never active
    h[:, 7] = h[:, 8]
    h[:, :, 7] = h[:, :, 8]  # two identical inputs: H is singular
    q = quantize(w, CODEBOOKS["linear"], 4, "lsq")
    g = gptq(q, w, h)
    assert np.all(np.isfinite(g.dequantized))
    assert output_error(w, g.dequantized, h) <= output_error(w, q.dequantized, h)


def test_it_is_deterministic():
    w, h = layer(6)
    q = quantize(w, CODEBOOKS["exponential"], 3, "lsq")
    np.testing.assert_array_equal(gptq(q, w, h).codes, gptq(q, w, h).codes)


def test_damping_raises_the_diagonal_and_revives_dead_inputs():
    h = np.diag([4.0, 0.0, 2.0])[None]
    d = np.diag(prepare_hessian(h)[0])
    assert d[1] > 0 and d[0] > 4.0 and d[2] > 2.0


def test_damping_grows_when_fewer_columns_than_inputs_were_seen():
    assert damping_for(9, 100 * 112 * 112) == DAMPING  # a depthwise conv over a large map
    assert damping_for(1280, 100) > damping_for(1280, 1000) > DAMPING  # a classifier, per image
    assert damping_for(40, 0) > DAMPING


def test_with_few_samples_the_grown_damping_fits_unseen_inputs_better():
    rng = np.random.default_rng(0)
    cols = 60
    mix = rng.standard_normal((cols, cols)) * 0.5 + np.eye(cols)
    seen, unseen = (rng.standard_normal((n, cols)) @ mix for n in (20, 4000))
    h_seen = (seen.T @ seen / len(seen))[None]
    h_unseen = (unseen.T @ unseen / len(unseen))[None]
    w = rng.standard_normal((16, cols))
    q = quantize(w, CODEBOOKS["exponential"], 3, "lsq")
    table = q.level_table()

    def unseen_error(damping: float) -> float:
        codes = gptq_codes(q, w, h_seen, damping)
        return output_error(w, np.take_along_axis(table, codes.astype(np.int64), axis=1), h_unseen)

    assert unseen_error(damping_for(cols, len(seen))) < unseen_error(DAMPING)


def test_a_hessian_of_the_wrong_shape_is_refused():
    w, h = layer(8)
    q = quantize(w, CODEBOOKS["linear"], 4, "lsq")
    with pytest.raises(ValueError, match="does not fit"):
        gptq(q, w, h[:, :5, :5])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.integers(1, 8), codebook=st.sampled_from(sorted(CODEBOOKS)))
def test_the_column_rounder_agrees_with_nearest_codes(seed, bits, codebook):
    rng = np.random.default_rng(seed)
    w = rng.laplace(size=(9, 30)) * rng.lognormal(0, 1, (9, 1))
    w[0] = 0  # an all-zero row
    q = quantize(w, CODEBOOKS[codebook], bits, "lsq")
    table = q.level_table()
    nearest = Nearest(table, bits)
    probe = rng.laplace(size=(9, 30)) * np.abs(w).max(axis=1, keepdims=True)
    expected = nearest_codes(probe, table, bits)
    for j in range(probe.shape[1]):
        codes, values = nearest.column(probe[:, j])
        live = np.abs(table).max(axis=1) > 0
        np.testing.assert_array_equal(codes[live], expected[live, j])
        np.testing.assert_array_equal(values, table[np.arange(9), codes])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), samples=st.integers(3, 40))
def test_one_factorisation_rounds_every_width_as_each_alone(seed, samples):
    """--target-bits rounds each weight at several widths with one factorised H: the codes are
    those of rounding each width on its own."""
    from onnxq.api import Weight
    from onnxq.refine.calibrate import LayerStats
    from onnxq.refine.steps import Layer, round_all_with_gptq, round_with_gptq

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 12)) * rng.lognormal(0, 1, 12)
    w = Weight(
        name="w",
        array=rng.standard_normal((12, 6)).astype(np.float32),
        axis=1,
        graph=None,
        constant_node=None,
    )
    stats = LayerStats(
        mean=x.mean(0)[None], hessian=(x.T @ x / samples)[None], count=samples, samples=samples
    )
    layers = [Layer(spec=None, stats=stats)]
    rows = w.array.T
    qs = {b: quantize(rows, CODEBOOKS["exponential"], b, "lsq") for b in (2, 3, 4)}
    qs["tensor"] = quantize(rows.reshape(1, -1), CODEBOOKS["linear"], 3, "lsq")
    together = round_all_with_gptq(w, qs, layers)
    for key, q in qs.items():
        alone = round_with_gptq(w, q, layers)
        assert together[key].rounding == alone.rounding == "gptq"
        np.testing.assert_array_equal(together[key].codes, alone.codes)
