"""--search grid: every group scored exactly at every grid point, against a brute force over the same grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxq.quant import grid, kernels
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.quantize import _decode, quantize
from onnxq.quant.search import bin_index, level_magnitudes

TWO_PARAMETER = ["exponential"]  # codebooks that store ln(x0) on the 64-point grid
ENGINES = [  # numpy's matrix products, and the compiled loops' prefix sums (kernels.py)
    "numpy",
    pytest.param(
        "numba",
        marks=pytest.mark.skipif(
            kernels.name() != "numba", reason="numba is not installed: pip install -e '.[fast]'"
        ),
    ),
]


def brute_force(u: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """corr(u, nearest level) per group and grid point, by assigning every value explicitly.

    The nearest level with ties going up (away from zero): the number of midpoints <= u.
    """
    out = np.zeros((u.shape[0], levels.shape[0]))
    for k, lv in enumerate(levels):
        mids = 0.5 * (lv[1:] + lv[:-1])
        y = lv[(u[:, :, None] >= mids[None, None, :]).sum(axis=2)]
        suy, syy, suu = (u * y).sum(1), (y * y).sum(1), (u * u).sum(1)
        denom = np.sqrt(suu * syy)
        out[:, k] = np.divide(suy, denom, out=np.zeros_like(suy), where=denom > 0)
    return out


magnitudes = st.integers(0, 2**31 - 1).map(lambda seed: np.random.default_rng(seed))


@given(seed=st.integers(0, 2**31 - 1), edges=st.integers(1, 3000))
def test_cells_is_searchsorted(seed, edges):
    rng = np.random.default_rng(seed)
    e = np.unique(np.concatenate([rng.random(edges), [0.0, 0.5, 1.0]]))
    u = np.concatenate([rng.random(2000), e, np.nextafter(e, 0), np.nextafter(e, 2), [0.0, 1.0]]).clip(0, 1)
    for values in (u, u.astype(np.float32)):
        expected = np.searchsorted(e, values.astype(np.float64), side="right")
        np.testing.assert_array_equal(grid.cells(values, e), expected)


@given(seed=st.integers(0, 2**31 - 1), edges=st.integers(0, 400), scan=st.integers(0, 3))
def test_cell_table_counts_the_edges_below_each_bin(seed, edges, scan):
    """cell_table against its definition by searchsorted, with edges on bins' starts, crowded in
    one bin, below 0 and above 1."""
    rng = np.random.default_rng(seed)
    size = 1 << grid.LUT_BITS
    on_starts = rng.integers(0, size + 1, edges // 4) / size
    crowded = (rng.integers(0, size) + rng.random(int(rng.integers(0, 6)))) / size
    e = np.unique(np.concatenate([rng.random(edges), on_starts, crowded, [-0.5, 1.5]]))
    starts = np.arange(size + 2) / size
    below = np.searchsorted(e, starts[:-1], side="right")
    inside = np.searchsorted(e, starts[1:], side="left") - below
    want = np.where(inside <= scan, below, -1)
    np.testing.assert_array_equal(grid.cell_table(e, scan), want)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bits", [3, 5, 8])
def test_values_on_and_beside_the_edges_take_their_levels(engine, bits, rng):
    """A grid of 64 points has bins that many midpoints split (searched) and bins that one or two
    split (compared): the magnitudes on every midpoint and a step either side of it are counted
    at the level an explicit assignment gives."""
    points = np.linspace(-12.0, 0.0, 64)
    levels = level_magnitudes(CODEBOOKS["exponential"], points, bits)
    e = np.unique(0.5 * (levels[:, 1:] + levels[:, :-1]))
    u = np.concatenate([e, np.nextafter(e, 0), np.nextafter(e, 2), rng.random(4 * e.size) ** 4])
    u = rng.permutation(u.clip(0, 1))[: u.size // 8 * 8].reshape(8, -1)
    with kernels.use(engine):
        got = grid.best_on_grid(u, levels)
    for g, k in enumerate(got.index):
        mids = 0.5 * (levels[k, 1:] + levels[k, :-1])  # as Grid makes them, compared exactly
        index = np.searchsorted(mids, u[g], side="right")
        np.testing.assert_array_equal(got.counts[g], np.bincount(index, minlength=levels.shape[1]))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["exponential", "linear"])
@pytest.mark.parametrize("bits", [1, 2, 3, 5])
@given(seed=st.integers(0, 2**31 - 1))
def test_every_group_gets_its_best_grid_point(engine, name, bits, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    u = np.abs(rng.standard_normal((7, n)) * rng.lognormal(0, 1, (7, 1)))
    u /= np.maximum(u.max(axis=1, keepdims=True), 1e-30)
    u[0] = 0.0  # a dead group
    points = np.sort(rng.uniform(-8, 0, int(rng.integers(1, 20))))
    levels = level_magnitudes(CODEBOOKS[name], points, bits)
    with kernels.use(engine):
        got = grid.best_on_grid(u, levels)
    want = brute_force(u, levels)
    np.testing.assert_allclose(got.correlation, want.max(axis=1), rtol=0, atol=1e-12)
    chosen_score = want[np.arange(u.shape[0]), got.index]
    np.testing.assert_allclose(chosen_score, want.max(axis=1), rtol=0, atol=1e-12)
    # Where one point is best by more than rounding, it is the one chosen (else the first of equals).
    top2 = np.sort(want, axis=1)[:, -2:] if want.shape[1] > 1 else np.zeros((u.shape[0], 2))
    clear = top2[:, 1] - top2[:, 0] > 1e-9
    np.testing.assert_array_equal(got.index[clear], want.argmax(axis=1)[clear])
    # The counts and sums of u per level at the chosen point are those of the explicit assignment.
    chosen = levels[got.index]
    index = (
        bin_index(u, 0.5 * (chosen[:, 1:] + chosen[:, :-1]))
        if chosen.shape[1] > 1
        else np.zeros(u.shape, int)
    )
    for g in range(u.shape[0]):
        np.testing.assert_array_equal(got.counts[g], np.bincount(index[g], minlength=levels.shape[1]))
        np.testing.assert_allclose(got.sums[g], np.bincount(index[g], u[g], levels.shape[1]), atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@given(seed=st.integers(0, 2**31 - 1))
def test_weights_over_their_peaks_score_as_their_magnitudes(engine, dtype, seed):
    """best_on_grid(w, levels, norm) is best_on_grid(|w| / norm, levels), bit for bit."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((9, int(rng.integers(1, 80)))) * rng.lognormal(0, 2, (9, 1))).astype(dtype)
    w[1] = 0.0
    peak = np.abs(w.astype(np.float64)).max(axis=1)
    norm = np.where(peak > 0, peak, 1.0)
    levels = level_magnitudes(CODEBOOKS["exponential"], np.linspace(-6, 0, 64), 5)
    with kernels.use(engine):
        got = grid.best_on_grid(w, levels, norm)
        want = grid.best_on_grid(np.abs(w.astype(np.float64)) / norm[:, None], levels)
    for field in ("index", "correlation", "counts", "sums"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", TWO_PARAMETER)
@pytest.mark.parametrize("bits", [3, 4, 5, 6])  # at 2 bits one level: no x0 to store
def test_the_stored_x0_is_the_best_point_of_the_stored_grid(engine, name, bits, rng):
    """What the file holds for each group is the best of the 64 ln(x0) it can hold."""
    w = rng.standard_normal((48, 200)) * rng.lognormal(0, 0.5, (48, 1))
    w[:, :3] *= 6.0  # outliers
    with kernels.use(engine):
        q = quantize(w, CODEBOOKS[name], bits, "lsq", search="grid")
    points = _decode(np.arange(64), q.ranges[0])
    u = np.abs(w) / np.abs(w).max(axis=1, keepdims=True)
    scores = brute_force(u, level_magnitudes(CODEBOOKS[name], points, bits))
    stored = (q.params // 1024).astype(int)
    np.testing.assert_array_equal(stored, scores.argmax(axis=1))


@given(seed=st.integers(0, 2**31 - 1), kinds=st.integers(1, 9))
def test_counting_through_tables_is_bin_index(seed, kinds):
    rng = np.random.default_rng(seed)
    rows = 40
    base = np.sort(rng.random((kinds, 15)), axis=1)
    thresholds = base[rng.integers(0, kinds, rows)] * (1 + 1e-7 * rng.standard_normal((rows, 1)))
    v = rng.random((rows, 300))
    v[:, :15] = np.clip(thresholds, 0, 1)  # values on the thresholds themselves
    v[:, 15] = 1.0
    v[:, 16] = 0.0
    np.testing.assert_array_equal(grid.count_at_or_below(v, thresholds), bin_index(v, thresholds))


@given(seed=st.integers(0, 2**31 - 1))
def test_row_kinds_are_the_distinct_rows(seed):
    rng = np.random.default_rng(seed)
    marks = rng.integers(0, int(rng.integers(1, 5)), (int(rng.integers(1, 60)), int(rng.integers(0, 6))))
    kinds, kind = grid._row_kinds(marks)
    np.testing.assert_array_equal(kinds[kind], marks)  # each row is its kind
    assert len({tuple(r) for r in kinds.tolist()}) == kinds.shape[0] == np.unique(marks, axis=0).shape[0]
