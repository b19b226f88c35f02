"""x0* = argmax over t = ln(x0) in [LOG_X0_MIN, 0] of C(t) = corr(u, round(u; levels(t))), per group, exactly.

`--search exact`, the default. search.py's grid and golden-section search
(`--search fast`) is about twice as fast, and misses by up to 1e-5 on the tests
(1e-3 on a few 25-weight channels of EfficientNet-Lite0). This one proves its answer.

Branch and bound over brackets [t0, t1]: each group starts from START_POINTS
points 1/2 apart, and a bracket is halved until its upper bound (below) is
within TOLERANCE of the best C found, in ln C. So every group's returned C is
within TOLERANCE * C <= 1e-6 of its global maximum, plus float rounding
(~1e-15); no grid or local search can miss a narrow peak.

The bound. With N = sum u*y, D = sum y^2 and S = sum u^2, C^2 S = N^2 / D,
which is convex in (N, D) and increasing in N. When a magnitude u crosses the
midpoint m_k between levels L_{k-1} < L_k it drops one level: N falls by
u (L_k - L_{k-1}) and D by exactly 2 m_k (L_k - L_{k-1}). So, at any t of the
bracket, (N, D) lies on a segment of direction (1, 2) between the assignments
of the bracket's ends (0 and 1) evaluated at that t, up to a slack eta_j in N
from each crossing u not sitting on m_k at t (bounded with the largest step
and the farthest midpoint over the bracket). By convexity, for t in [t0, t1]

    ln C(t) <= max_j (ln C_j(t) + ln(1 + eta_j / N_j(t0))),

where C_j keeps end j's assignment (N_j grows with t, as every level does).
The slack also grows across the bracket: a crossed u's (m_k(t) - u)+ is convex
in t and 0 at t0, so it is at most its t1 value times (t - t0) / h; an uncrossed
u's (u - m_k(t))+ is convex in m_k and m_k is convex in t, so it falls at least
linearly to 0 at t1. Each eta_j is taken as the smaller of that ramp and its
largest value.
For a fixed assignment, ln C = ln N - ln D / 2 + const has slope
N'/N - D'/(2D) and curvature Var_N(a) - 2 Var_D(a), the variances of the
exponents a_k under the weights (sum of bin k) * L_k and (count of bin k) * L_k^2.
Those are exponential families in t, so d ln Var / dt is at most spread(a)
(2 spread(a) for D), and Var_N <= spread(a)^2 / 4: from the variances at the
two ends this bounds the curvature over the bracket, and the value and slope
at both ends then bound max C_j by the lower of two quadratic envelopes. Near
a peak the bound is negative curvature, so it is tight to O(h^3) there; the
crossings' slack is O(h^2), which sets how far brackets are halved. For the
linear codebook C_j is constant (a_k = 1), and the bound is its ends' values.

Each group's magnitudes are sorted once with their prefix sums; counting and
summing the magnitudes above each midpoint is then a binary search, needed at
a bracket's midpoint only where a magnitude lies between the midpoints of its
ends (elsewhere the count is theirs). N, D and their derivatives follow from
each level's count and sum. Groups are searched a slice at a time, each
slice's brackets at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxq.quant.codebooks import Codebook
from onnxq.quant.search import LOG_X0_MIN, SortedGroups, level_magnitudes

START_POINTS = 33  # the first brackets are 1/2 wide in ln(x0)
TOLERANCE = 9e-7  # in ln C: a bracket whose bound is within this of the best is dropped
MAX_ROUNDS = 64  # halvings: 2^-64 of a bracket is below float resolution
SLICE_VALUES = 1 << 18  # start points x (levels + 16) searched at once (see maximize_correlation)
PRODUCT_VALUES = 1 << 15  # matrix values per product (see _moments)


@dataclass
class _Ends:
    """Bracket ends: points (group, t = ln x0), the assignment at each and its shape there."""

    group: np.ndarray  # (P,)
    t: np.ndarray  # (P,)
    levels: np.ndarray  # (P, M) the magnitude levels at t
    mids: np.ndarray  # (P, M) the midpoint below each level (the lowest level's is with 0)
    counts: np.ndarray  # (P, M) how many magnitudes are at or above each midpoint
    sums: np.ndarray  # (P, M) their sum
    shape: np.ndarray  # (5, P) see _shape, for this point's own assignment

    def take(self, index: np.ndarray | slice) -> _Ends:
        return _Ends(
            self.group[index],
            self.t[index],
            self.levels[index],
            self.mids[index],
            self.counts[index],
            self.sums[index],
            self.shape[:, index],
        )


def _join(first: _Ends, first_kept: np.ndarray, second: _Ends, second_kept: np.ndarray) -> _Ends:
    """The ends of first at indices first_kept, then those of second at second_kept."""
    size = first_kept.size

    def rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # Straight into the result: indexing and concatenating copies twice (allocating, the most
        # of a round's copying). mode="clip" does not buffer; the indices are in range.
        out = np.empty((size + second_kept.size, *x.shape[1:]), x.dtype)
        x.take(first_kept, axis=0, out=out[:size], mode="clip")
        y.take(second_kept, axis=0, out=out[size:], mode="clip")
        return out

    return _Ends(
        rows(first.group, second.group),
        rows(first.t, second.t),
        rows(first.levels, second.levels),
        rows(first.mids, second.mids),
        rows(first.counts, second.counts),
        rows(first.sums, second.sums),
        np.concatenate([first.shape[:, first_kept], second.shape[:, second_kept]], axis=1),
    )


def _below(x: np.ndarray) -> np.ndarray:
    """(P, M): at each level, x at the level below (0 at the lowest).

    Shifted in the flattened array, then the first column set: numpy then runs one long loop,
    not one short loop per row (5x slower).
    """
    out = np.empty(x.shape)
    out.reshape(-1)[1:] = x.reshape(-1)[:-1]
    out[:, 0] = 0.0
    return out


def _above(x: np.ndarray) -> np.ndarray:
    """(P, M): at each level, x at the level above (0 at the highest); see _below."""
    out = np.empty(x.shape)
    out.reshape(-1)[:-1] = x.reshape(-1)[1:]
    out[:, -1] = 0.0
    return out


def _midpoints(levels: np.ndarray) -> np.ndarray:
    """(P, M): the midpoint below each level (the lowest level's is with 0)."""
    return 0.5 * (levels + _below(levels))


def _exponents(a: np.ndarray) -> np.ndarray:
    """(2, M, 3): bin sums * L and bin counts * L^2 times these give N, N', N'' and D, D', D''.

    (L_k grows as e^(a_k t).)
    """
    return np.stack([a[:, None] ** np.arange(3), (2.0 * a[:, None]) ** np.arange(3)])


def _bins(counts: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, M) twice: the sum and count of the magnitudes each level takes, from its midpoint to the next."""
    return sums - _above(sums), counts - _above(counts)


def _moments(
    blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], exponents: np.ndarray
) -> np.ndarray:
    """(6, P): N, N', N'', D, D', D'' for each block (bin sums, bin counts, levels, levels^2), in turn."""
    m = exponents.shape[1]
    values = np.empty((2, sum(len(levels) for *_, levels, _ in blocks), m))
    row = 0
    for bin_sums, bin_counts, levels, squares in blocks:
        size = len(levels)
        np.multiply(bin_sums, levels, out=values[0, row : row + size])
        np.multiply(bin_counts, squares, out=values[1, row : row + size])
        row += size
    # Products of a few rows at a time: OpenBLAS runs those on one thread. Its threads wait for a
    # core when other processes keep them busy, which made larger products up to 100x slower.
    rows = max(1, PRODUCT_VALUES // m)
    by_sum, by_count = (
        np.concatenate([part[i : i + rows] @ weights for i in range(0, row, rows)])
        for part, weights in zip(values, exponents)
    )
    return np.concatenate([by_sum.T, by_count.T])


def _shape(moments: np.ndarray, sumsq: np.ndarray) -> np.ndarray:
    """(5, P): ln C, its slope, Var_N(a), Var_D(a) (see the module docstring) and N."""
    n0, n1, n2, d0, d1, d2 = moments
    ok = (n0 > 0) & (d0 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_c = np.where(ok, np.log(n0) - 0.5 * np.log(d0 * sumsq), -np.inf)
        slope = np.where(ok, n1 / n0 - 0.5 * d1 / d0, 0.0)
        var_n = np.where(ok, np.maximum(n2 / n0 - (n1 / n0) ** 2, 0.0), 0.0)
        var_d = np.where(ok, np.maximum(0.25 * d2 / d0 - (0.5 * d1 / d0) ** 2, 0.0), 0.0)
    return np.stack([log_c, slope, var_n, var_d, n0])


def _locate(
    groups: SortedGroups,
    a: np.ndarray,
    c: np.ndarray,
    group: np.ndarray,
    t: np.ndarray,
    brackets: tuple[_Ends, _Ends] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Levels and midpoints at points (group, t), and the count and sum of magnitudes at or above each.

    Each point lies inside the bracket of the same index, if brackets are given.
    """
    levels = np.exp(t[:, None] * a + c)
    mids = _midpoints(levels)
    m = mids.shape[1]
    if brackets is None:
        # All of a group's magnitudes are at or above a midpoint up to its smallest one.
        counts = np.full(mids.shape, float(groups.n))
        sums = np.repeat(groups.cum[group, -1:], m, axis=1)
        search = mids > groups.cum[group, 1:2]
    else:
        # A count can only differ from both ends' where a magnitude lies between their midpoints:
        # search just those (binary searches cost ~100 elementwise operations each).
        lo, hi = brackets
        counts, sums = lo.counts.copy(), lo.sums.copy()
        search = (lo.counts != hi.counts) | (mids < lo.mids) | (mids > hi.mids)
    where = np.flatnonzero(search)
    found_counts, found_sums = groups.above(mids.ravel()[where, None], group[where // m])
    counts.ravel()[where] = found_counts[:, 0]
    sums.ravel()[where] = found_sums[:, 0]
    return levels, mids, counts, sums


def _peak(
    l0: np.ndarray, d0: np.ndarray, l1: np.ndarray, d1: np.ndarray, h: np.ndarray, kappa: np.ndarray
) -> np.ndarray:
    """Upper bound over x in [0, h] of f with f(0) = l0, f'(0) = d0, f(h) = l1, f'(h) = d1, f'' <= kappa.

    f lies under both quadratic envelopes from the ends; their difference is linear in x,
    so the largest value of the lower one is at an end, where they cross, or at a vertex.
    """
    half_kappa = 0.5 * kappa
    gap = l0 - l1 + d1 * h - half_kappa * h * h  # (q0 - q1)(0)
    rate = d0 - d1 + kappa * h  # its slope
    concave = kappa < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.stack(
            [-gap / rate, np.where(concave, -d0 / kappa, 0.0), np.where(concave, h - d1 / kappa, 0.0)]
        )
    x = np.fmin(np.fmax(x, 0.0), h)  # a NaN crossing (parallel envelopes) goes to 0, an end
    y = x - h
    q0 = l0 + d0 * x + half_kappa * x * x
    q1 = l1 + d1 * y + half_kappa * y**2
    at_ends = np.maximum(
        np.minimum(l0, l1 - d1 * h + half_kappa * (h * h)), np.minimum(l0 + d0 * h + half_kappa * h * h, l1)
    )
    return np.maximum(np.minimum(q0, q1).max(axis=0), at_ends)


def _curvature(own: np.ndarray, other: np.ndarray, h: np.ndarray, spread: float) -> np.ndarray:
    """A bound on (ln C)'' = Var_N(a) - 2 Var_D(a) over a bracket, for one fixed assignment."""
    grow = np.exp(spread * h)
    var_n = np.minimum(np.minimum(own[2], other[2]) * grow, 0.25 * spread * spread)
    var_d = np.maximum(own[3], other[3]) / (grow * grow)
    return var_n - 2.0 * var_d


def _slack(lo: _Ends, hi: _Ends, a: np.ndarray) -> np.ndarray:
    """(3, P): the crossings' slack in N over each bracket [lo.t, hi.t], for lo's assignment and for hi's,
    and the rate at which hi's falls (see the module docstring); divide each by its assignment's N."""
    step_max = hi.levels - _below(lo.levels)  # >= L_k - L_{k-1} anywhere on the bracket
    hi_rate = _midpoints(a * hi.levels)  # d m_k / dt at hi.t, the most over the bracket
    crossed = lo.counts - hi.counts
    crossed_sum = lo.sums - hi.sums
    slack_lo = hi.mids * crossed
    slack_lo -= crossed_sum
    slack_hi = lo.mids * crossed
    np.subtract(crossed_sum, slack_hi, out=slack_hi)
    np.maximum(slack_hi, 0.0, out=slack_hi)
    slack_hi *= step_max
    # (u - m_k(t))+ is convex in m_k, and m_k(hi.t) - m_k(t) <= m_k'(hi.t) (hi.t - t).
    rise = hi.mids - lo.mids
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.divide(hi_rate, rise, out=np.zeros_like(rise), where=rise > 0)
    return np.stack(
        [
            np.maximum(np.einsum("ij,ij->i", step_max, slack_lo), 0.0),
            slack_hi.sum(axis=1),
            np.einsum("ij,ij->i", slack_hi, rate),
        ]
    )


def _upper_bound(
    h: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    lo_at_hi: np.ndarray,
    hi_at_lo: np.ndarray,
    slack: np.ndarray,
    spread: float,
) -> np.ndarray:
    """An upper bound of ln C over brackets of width h, from the shapes of their ends' assignments
    at both ends and the crossings' slack (see the module docstring)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        eta_lo = slack[0] / lo[4]
        eta_hi = slack[1] / hi_at_lo[4]
        ramp_hi = slack[2] / hi_at_lo[4]
        ramp_lo = eta_lo / h
        kappa_lo = _curvature(lo, lo_at_hi, h, spread)
        kappa_hi = _curvature(hi, hi_at_lo, h, spread)
        # Each end's assignment, bounded twice: with its largest slack, and with the slack's ramp.
        l0, d0, l1, d1 = lo[0], lo[1], lo_at_hi[0], lo_at_hi[1]
        m0, e0, m1, e1 = hi_at_lo[0], hi_at_lo[1], hi[0], hi[1]
        peaks = _peak(
            np.stack([l0, l0, m0, m0 + ramp_hi * h]),
            np.stack([d0, d0 + ramp_lo, e0, e0 - ramp_hi]),
            np.stack([l1, l1 + eta_lo, m1, m1]),
            np.stack([d1, d1 + ramp_lo, e1, e1 - ramp_hi]),
            h,
            np.stack([kappa_lo, kappa_lo, kappa_hi, kappa_hi]),
        )
        from_lo = np.minimum(peaks[0] + np.log1p(eta_lo), peaks[1])
        from_hi = np.minimum(peaks[2] + np.log1p(eta_hi), peaks[3])
        bound = np.maximum(from_lo, from_hi)
    return np.where(np.isnan(bound), np.inf, bound)


def _search(groups: SortedGroups, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """ln(x0) maximising the correlation of each group, to within TOLERANCE in ln C."""
    g = groups.groups
    spread = float(np.ptp(a))
    exponents = _exponents(a)
    sumsq = groups.sumsq

    def shapes(
        group: np.ndarray, *blocks: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    ) -> list[np.ndarray]:
        """The shape of each block (bin sums, bin counts, levels, levels^2) of these groups' points.

        One pass for all, as numpy's cost per call outweighs the arithmetic on most rounds.
        """
        moments = _moments(list(blocks), exponents).reshape(6, len(blocks), -1)
        return list(_shape(moments, sumsq[group]).swapaxes(0, 1))

    grid = np.linspace(LOG_X0_MIN, 0.0, START_POINTS)
    group, t = np.repeat(np.arange(g), START_POINTS), np.tile(grid, g)
    levels, mids, counts, sums = _locate(groups, a, c, group, t)
    (bin_sums, bin_counts), squares = _bins(counts, sums), levels * levels
    (own,) = shapes(group, (bin_sums, bin_counts, levels, squares))
    pts = _Ends(group, t, levels, mids, counts, sums, own)
    scores = own[0].reshape(g, START_POINTS)
    best_i = scores.argmax(axis=1)
    best_t = grid[best_i]
    best = scores[np.arange(g), best_i]
    # The first brackets join consecutive points (views: no copies); those across groups are dropped.
    lo, hi = pts.take(slice(None, -1)), pts.take(slice(1, None))
    if spread:
        lo_at_hi, hi_at_lo = shapes(
            lo.group,
            (bin_sums[:-1], bin_counts[:-1], levels[1:], squares[1:]),
            (bin_sums[1:], bin_counts[1:], levels[:-1], squares[:-1]),
        )
    else:  # every level scales with x0: a fixed assignment's C is constant
        lo_at_hi, hi_at_lo = lo.shape, hi.shape
    bound = _upper_bound(hi.t - lo.t, lo.shape, hi.shape, lo_at_hi, hi_at_lo, _slack(lo, hi, a), spread)
    keep = (bound > best[lo.group] + TOLERANCE) & (lo.group == hi.group) & (sumsq[lo.group] > 0)
    kept = np.flatnonzero(keep)
    lo, hi = lo.take(kept), hi.take(kept)
    for _ in range(MAX_ROUNDS):
        if not lo.t.size:
            break
        t = 0.5 * (lo.t + hi.t)
        levels, mids, counts, sums = _locate(groups, a, c, lo.group, t, (lo, hi))
        bins, powers = _bins(counts, sums), (levels, levels * levels)
        if spread:  # mid's own shape, and the shapes across both halves of each bracket
            own, lo_at_mid, mid_at_hi, mid_at_lo, hi_at_mid = shapes(
                lo.group,
                (*bins, *powers),
                (*_bins(lo.counts, lo.sums), *powers),
                (*bins, hi.levels, hi.levels * hi.levels),
                (*bins, lo.levels, lo.levels * lo.levels),
                (*_bins(hi.counts, hi.sums), *powers),
            )
        else:
            (own,) = shapes(lo.group, (*bins, *powers))
            lo_at_mid, mid_at_hi, mid_at_lo, hi_at_mid = lo.shape, own, own, hi.shape
        mid = _Ends(lo.group, t, levels, mids, counts, sums, own)
        np.maximum.at(best, mid.group, own[0])
        won = own[0] == best[mid.group]
        best_t[mid.group[won]] = t[won]
        # Both halves of every bracket, the left ones first.
        bound = _upper_bound(
            np.concatenate([t - lo.t, hi.t - t]),
            np.concatenate([lo.shape, own], axis=1),
            np.concatenate([own, hi.shape], axis=1),
            np.concatenate([lo_at_mid, mid_at_hi], axis=1),
            np.concatenate([mid_at_lo, hi_at_mid], axis=1),
            np.concatenate([_slack(lo, mid, a), _slack(mid, hi, a)], axis=1),
            spread,
        )
        keep = bound > np.tile(best[mid.group], 2) + TOLERANCE
        keep_left, keep_right = np.flatnonzero(keep[: t.size]), np.flatnonzero(keep[t.size :])
        lo, hi = _join(lo, keep_left, mid, keep_right), _join(mid, keep_left, hi, keep_right)
    return best_t


def maximize_correlation(
    groups: SortedGroups, codebook: Codebook, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """ln(x0) maximising the correlation of each group, and that correlation."""
    g = groups.groups
    best_t = np.zeros(g)
    if bits > 1:  # with one level every magnitude maps to it, whatever x0
        a, c = codebook.log_coefficients(bits)
        # A slice of groups at a time: with all at once the first rounds' arrays reach ~100 MB, and
        # the allocator hands that back to the system and faults it in again for every tensor.
        step = max(1, SLICE_VALUES // (START_POINTS * (a.size + 16)))  # 16: a bracket's own numbers
        for first in range(0, g, step):
            stop = min(g, first + step)
            best_t[first:stop] = _search(groups.subset(first, stop), a, c)
    return best_t, groups.correlation(level_magnitudes(codebook, best_t, bits))
