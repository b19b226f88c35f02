"""x0* = argmax over t = ln(x0) in [LOG_X0_MIN, 0] of C(t) = corr(u, round(u; levels(t))), per group, exactly.

`--search exact`. search.py's grid and golden-section search is the default: it
is about 3.5x faster, and misses by up to 1e-5 on the tests (1e-3 on a few
25-weight channels of EfficientNet-Lite0). This one proves its answer.

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

Each group's magnitudes are sorted once with their prefix sums; then counting
and summing the magnitudes above each midpoint costs O(M log n) per point,
and N, D and their derivatives follow by summation by parts. Every group's
brackets are processed at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxq.codebooks import Codebook
from onnxq.search import LOG_X0_MIN, SortedGroups, level_magnitudes

START_POINTS = 33  # the first brackets are 1/2 wide in ln(x0)
TOLERANCE = 9e-7  # in ln C: a bracket whose bound is within this of the best is dropped
MAX_ROUNDS = 64  # halvings: 2^-64 of a bracket is below float resolution


@dataclass
class _Ends:
    """Bracket ends: points (group, t = ln x0), the assignment at each and its shape there."""

    group: np.ndarray  # (P,)
    t: np.ndarray  # (P,)
    levels: np.ndarray  # (P, M) the magnitude levels at t
    counts: np.ndarray  # (P, M) how many magnitudes are at or above each midpoint
    sums: np.ndarray  # (P, M) their sum
    shape: np.ndarray  # (5, P) see _shape, for this point's own assignment

    def take(self, index: np.ndarray) -> _Ends:
        return _Ends(
            self.group[index],
            self.t[index],
            self.levels[index],
            self.counts[index],
            self.sums[index],
            self.shape[:, index],
        )


def _join(first: _Ends, first_keep: np.ndarray, second: _Ends, second_keep: np.ndarray) -> _Ends:
    """The kept ends of first, then the kept ends of second."""
    return _Ends(
        np.concatenate([first.group[first_keep], second.group[second_keep]]),
        np.concatenate([first.t[first_keep], second.t[second_keep]]),
        np.concatenate([first.levels[first_keep], second.levels[second_keep]]),
        np.concatenate([first.counts[first_keep], second.counts[second_keep]]),
        np.concatenate([first.sums[first_keep], second.sums[second_keep]]),
        np.concatenate([first.shape[:, first_keep], second.shape[:, second_keep]], axis=1),
    )


def _basis(levels: np.ndarray, a: np.ndarray) -> np.ndarray:
    """(6, P, M): the steps v_k - v_{k-1} (v_0 = 0) of v = L, aL, a^2 L, L^2, 2a L^2, 4a^2 L^2."""
    sq = levels * levels
    v = np.empty((6, *levels.shape))
    np.multiply(levels, 1.0, out=v[0])
    np.multiply(levels, a, out=v[1])
    np.multiply(levels, a * a, out=v[2])
    np.multiply(sq, 1.0, out=v[3])
    np.multiply(sq, 2.0 * a, out=v[4])
    np.multiply(sq, 4.0 * a * a, out=v[5])
    v[:, :, 1:] -= v[:, :, :-1]  # numpy buffers the overlapping operands
    return v


def _moments(basis: np.ndarray, counts: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """(6, P): N, N', N'', D, D', D'' in t for the assignment (counts, sums), levels from basis."""
    return np.concatenate(
        [np.einsum("kpm,pm->kp", basis[:3], sums), np.einsum("kpm,pm->kp", basis[3:], counts)]
    )


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


def _evaluate(
    groups: SortedGroups, a: np.ndarray, c: np.ndarray, group: np.ndarray, t: np.ndarray
) -> tuple[_Ends, np.ndarray]:
    """The points (group, t) as bracket ends, and their basis."""
    levels = np.exp(t[:, None] * a + c)
    mids = 0.5 * levels
    mids[:, 1:] += 0.5 * levels[:, :-1]
    counts, sums = groups.above(mids, group)
    basis = _basis(levels, a)
    shape = _shape(_moments(basis, counts, sums), groups.sumsq[group])
    return _Ends(group, t, levels, counts, sums, shape), basis


def _peak(
    l0: np.ndarray, d0: np.ndarray, l1: np.ndarray, d1: np.ndarray, h: np.ndarray, kappa: np.ndarray
) -> np.ndarray:
    """Upper bound over x in [0, h] of f with f(0) = l0, f'(0) = d0, f(h) = l1, f'(h) = d1, f'' <= kappa.

    f lies under both quadratic envelopes from the ends; their difference is linear in x,
    so the largest value of the lower one is at an end, where they cross, or at a vertex.
    """
    gap = l0 - l1 + d1 * h - 0.5 * kappa * h * h  # (q0 - q1)(0)
    rate = d0 - d1 + kappa * h  # its slope
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = np.where(rate != 0, -gap / rate, 0.0)
        concave = kappa < 0
        v0 = np.where(concave, -d0 / kappa, 0.0)
        v1 = np.where(concave, h - d1 / kappa, 0.0)
        best = np.full(l0.shape, -np.inf)
        for x in (np.zeros_like(h), h, cross, v0, v1):
            x = np.clip(np.nan_to_num(x), 0.0, h)
            q0 = l0 + d0 * x + 0.5 * kappa * x * x
            q1 = l1 + d1 * (x - h) + 0.5 * kappa * (x - h) ** 2
            best = np.maximum(best, np.minimum(q0, q1))
    return best


def _curvature(own: np.ndarray, other: np.ndarray, h: np.ndarray, spread: float) -> np.ndarray:
    """A bound on (ln C)'' = Var_N(a) - 2 Var_D(a) over a bracket, for one fixed assignment."""
    grow = np.exp(spread * h)
    var_n = np.minimum(np.minimum(own[2], other[2]) * grow, 0.25 * spread * spread)
    var_d = np.maximum(own[3], other[3]) / (grow * grow)
    return var_n - 2.0 * var_d


def _upper_bound(
    lo: _Ends, hi: _Ends, lo_at_hi: np.ndarray, hi_at_lo: np.ndarray, a: np.ndarray, spread: float
) -> np.ndarray:
    """An upper bound of ln C over each bracket [lo.t, hi.t] (see the module docstring)."""
    h = hi.t - lo.t
    with np.errstate(invalid="ignore", divide="ignore"):
        below = np.zeros_like(lo.levels)  # L_{k-1} at lo.t
        below[:, 1:] = lo.levels[:, :-1]
        step_max = hi.levels - below  # >= L_k - L_{k-1} anywhere on the bracket
        lo_mid = 0.5 * (lo.levels + below)
        hi_mid = 0.5 * hi.levels
        hi_mid[:, 1:] += 0.5 * hi.levels[:, :-1]
        hi_rate = 0.5 * a * hi.levels  # d m_k / dt at hi.t, the most over the bracket
        hi_rate[:, 1:] += 0.5 * (a[:-1] * hi.levels[:, :-1])
        crossed = lo.counts - hi.counts
        crossed_sum = lo.sums - hi.sums
        eta_lo = (
            np.maximum(np.einsum("ij,ij->i", step_max, hi_mid * crossed - crossed_sum), 0.0) / lo.shape[4]
        )
        slack_hi = step_max * np.maximum(crossed_sum - lo_mid * crossed, 0.0)
        eta_hi = slack_hi.sum(axis=1) / hi_at_lo[4]
        # (u - m_k(t))+ is convex in m_k, and m_k(hi.t) - m_k(t) <= m_k'(hi.t) (hi.t - t).
        rise = hi_mid - lo_mid
        rate = np.divide(hi_rate, rise, out=np.zeros_like(rise), where=rise > 0)
        ramp_hi = np.einsum("ij,ij->i", slack_hi, rate) / hi_at_lo[4]
        ramp_lo = eta_lo / h
        kappa_lo = _curvature(lo.shape, lo_at_hi, h, spread)
        kappa_hi = _curvature(hi.shape, hi_at_lo, h, spread)
        l0, d0, l1, d1 = lo.shape[0], lo.shape[1], lo_at_hi[0], lo_at_hi[1]
        from_lo = np.minimum(
            _peak(l0, d0, l1, d1, h, kappa_lo) + np.log1p(eta_lo),
            _peak(l0, d0 + ramp_lo, l1 + eta_lo, d1 + ramp_lo, h, kappa_lo),
        )
        l0, d0, l1, d1 = hi_at_lo[0], hi_at_lo[1], hi.shape[0], hi.shape[1]
        from_hi = np.minimum(
            _peak(l0, d0, l1, d1, h, kappa_hi) + np.log1p(eta_hi),
            _peak(l0 + ramp_hi * h, d0 - ramp_hi, l1, d1 - ramp_hi, h, kappa_hi),
        )
        bound = np.maximum(from_lo, from_hi)
    return np.where(np.isnan(bound), np.inf, bound)


def maximize_correlation(
    groups: SortedGroups, codebook: Codebook, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """ln(x0) maximising the correlation of each group, and that correlation."""
    g = groups.groups
    if bits == 1:  # one level: every magnitude maps to it, whatever x0
        best_t = np.zeros(g)
        return best_t, groups.correlation(level_magnitudes(codebook, best_t, bits))
    a, c = codebook.log_coefficients(bits)
    spread = float(np.ptp(a))
    sumsq = groups.sumsq
    grid = np.linspace(LOG_X0_MIN, 0.0, START_POINTS)
    pts, basis = _evaluate(groups, a, c, np.repeat(np.arange(g), START_POINTS), np.tile(grid, g))
    scores = pts.shape[0].reshape(g, START_POINTS)
    best_i = scores.argmax(axis=1)
    best_t = grid[best_i]
    best = scores[np.arange(g), best_i]

    def cross(ends: _Ends, at_basis: np.ndarray) -> np.ndarray:
        """The shape of ends' assignments at the other end of their brackets."""
        if spread == 0:  # every level scales with x0: a fixed assignment's C is constant
            return ends.shape
        return _shape(_moments(at_basis, ends.counts, ends.sums), sumsq[ends.group])

    first = np.flatnonzero(sumsq > 0)[:, None] * START_POINTS + np.arange(START_POINTS)
    lo_i, hi_i = first[:, :-1].ravel(), first[:, 1:].ravel()
    lo, hi = pts.take(lo_i), pts.take(hi_i)
    if spread:
        lo_at_hi, hi_at_lo = cross(lo, basis[:, hi_i]), cross(hi, basis[:, lo_i])
    else:
        lo_at_hi, hi_at_lo = lo.shape, hi.shape
    bound = _upper_bound(lo, hi, lo_at_hi, hi_at_lo, a, spread)
    keep = bound > best[lo.group] + TOLERANCE
    lo, hi = lo.take(keep), hi.take(keep)
    for _ in range(MAX_ROUNDS):
        if not lo.t.size:
            break
        mid, mid_basis = _evaluate(groups, a, c, lo.group, 0.5 * (lo.t + hi.t))
        np.maximum.at(best, mid.group, mid.shape[0])
        won = mid.shape[0] == best[mid.group]
        best_t[mid.group[won]] = mid.t[won]
        lo_basis = hi_basis = mid_basis  # unused when spread == 0
        if spread:
            lo_basis, hi_basis = _basis(lo.levels, a), _basis(hi.levels, a)
        left = _upper_bound(lo, mid, cross(lo, mid_basis), cross(mid, lo_basis), a, spread)
        right = _upper_bound(mid, hi, cross(mid, hi_basis), cross(hi, mid_basis), a, spread)
        limit = best[lo.group] + TOLERANCE
        keep_left, keep_right = left > limit, right > limit
        lo, hi = _join(lo, keep_left, mid, keep_right), _join(mid, keep_left, hi, keep_right)
    return best_t, groups.correlation(level_magnitudes(codebook, best_t, bits))
