"""Lloyd-Max levels fitted to a tensor: one table t_1 < ... < t_M = 1 for the tensor, a scale per group.

Group g's magnitude levels are s_g * t (and zero), fitted to u = |w| / s_g by alternating
(a) Lloyd iterations for t on the pooled u of all groups, zero level fixed;
(b) per group, the scale with the least error sum_i (|w_gi| - s_g t_k(gi))^2: the
    least-squares s_g for the current assignment, then a small grid around it with
    the weights reassigned;
keeping the (t, s) of the round with the least squared error in weight space.
Everything is deterministic. Only the scale is per group: a table per channel
would cost as much as the indices (ALGORITHM.md, "Storage overhead decides the ratio").

Step (a) weighs every group alike, not by s_g^2 as the weight-space error would:
measured on Laplace and Gaussian groups with log-normal scales, weighting let the
few largest groups dictate the table and lost 1-6 dB at 5-8 bits; the grid in
(b) gained another 0.1-3 dB over least squares alone, most at 6-8 bits.
"""

from __future__ import annotations

import numpy as np

from onnxq.quant.codebooks.base import Codebook, magnitude_count

ROUNDS = 4  # table / scale alternations
ITERATIONS = 200  # Lloyd steps per round, each O(M log n) on sorted prefix sums
TOLERANCE = 1e-9  # stop Lloyd when no level moves by more than this (levels are <= 1)
SCALE_STEPS = np.exp(np.linspace(-0.12, 0.12, 9))  # the grid of (b), around the least-squares scale


def initial_table(u: np.ndarray, m: int, zero: bool) -> np.ndarray:
    """Strictly increasing levels in (0, 1] at evenly spaced quantiles of the sorted u.

    With a zero level, the lowest of the M + 1 quantiles belongs to it. Repeated
    values (a constant group) leave gaps, which a ladder below the level above fills.
    """
    cells = m + 1 if zero else m
    p = (np.arange(cells - m, cells) + 0.5) / cells
    t = np.minimum(u[np.minimum((p * u.size).astype(np.int64), u.size - 1)], 1.0)
    if not t[-1] > 0:
        t[-1] = 1.0
    for k in range(m - 2, -1, -1):
        if not 0 < t[k] < t[k + 1]:
            t[k] = t[k + 1] * (k + 1) / (k + 2)
    return t


def lloyd(u: np.ndarray, t: np.ndarray, zero: bool) -> np.ndarray:
    """Lloyd iterations for the magnitude levels t of sorted u, the zero level kept fixed.

    Each level moves to the mean of its cell (ties at a boundary go up, as in
    quantize.nearest_codes). A level whose cell is empty moves to the largest value
    of the cell with the most squared error, splitting it; when every cell is exact
    (fewer distinct values than levels) it stays where it is.
    """
    cu = np.concatenate([[0.0], np.cumsum(u)])
    cuu = np.concatenate([[0.0], np.cumsum(u * u)])
    for _ in range(ITERATIONS):
        levels = np.concatenate([[0.0], t]) if zero else t
        edges = np.concatenate([[0], np.searchsorted(u, 0.5 * (levels[1:] + levels[:-1])), [u.size]])
        mass = np.diff(edges).astype(np.float64)
        moment = np.diff(cu[edges])
        centroids = np.where(mass > 0, moment / np.where(mass > 0, mass, 1.0), levels)
        first = 1 if zero else 0
        empty = np.flatnonzero(mass[first:] == 0) + first
        if empty.size:
            spread = np.diff(cuu[edges]) - centroids * moment  # sum (u - mean)^2 per cell
            worst = int(np.argmax(spread))
            if spread[worst] > 1e-12 * max(float(cuu[-1]), 1e-300):
                centroids[empty[0]] = u[edges[worst + 1] - 1]
        new = np.sort(centroids[first:])
        moved = float(np.max(np.abs(new - t)))
        t = new
        if moved <= TOLERANCE:
            break
    return t


def assign(u: np.ndarray, t: np.ndarray, zero: bool) -> np.ndarray:
    """Each u's nearest level of [0,] t, as a magnitude (ties go up)."""
    levels = np.concatenate([[0.0], t]) if zero else t
    index = np.searchsorted(0.5 * (levels[1:] + levels[:-1]), u, side="right")
    return levels[index]


def refit_scales(a: np.ndarray, t: np.ndarray, s: np.ndarray, zero: bool) -> tuple[np.ndarray, np.ndarray]:
    """Step (b): per group, the scale with the least error, and that error (both (groups,))."""
    y = assign(a / s[:, None], t, zero)
    syy = np.einsum("ij,ij->i", y, y)
    fitted = syy > 0
    s = np.where(fitted, np.einsum("ij,ij->i", a, y) / np.where(fitted, syy, 1.0), s)
    best_s, best_e = s, np.full(s.shape, np.inf)
    for factor in SCALE_STEPS:
        trial = s * factor
        e = np.sum((a - assign(a / trial[:, None], t, zero) * trial[:, None]) ** 2, axis=1)
        better = e < best_e
        best_s = np.where(better, trial, best_s)
        best_e = np.where(better, e, best_e)
    return best_s, best_e


def fit_table(magnitudes: np.ndarray, bits: int, scale: str = "lsq") -> tuple[np.ndarray, np.ndarray]:
    """(t (M,), s (groups,)) for |w| (groups, n): see the module docstring. All-zero groups get s = 0.

    scale "variance" replaces the final scales by the paper's sqrt(sum w^2 / sum y^2)
    (y the assigned table levels); the table is fitted by least squares either way.
    """
    a = np.asarray(magnitudes, dtype=np.float64)
    m = magnitude_count(bits)
    zero = bits > 1
    s = np.zeros(a.shape[0])
    peak = a.max(axis=1) if a.size else s
    live = peak > 0
    if not live.any():
        return np.arange(1, m + 1) / m, s
    a = a[live]
    sl = peak[live]
    t = initial_table(np.sort(a / sl[:, None], axis=None), m, zero)
    best = (np.inf, t, sl)
    for _ in range(ROUNDS):
        t = lloyd(np.sort(a / sl[:, None], axis=None), t, zero)
        sl = sl * t[-1]  # keep t_M = 1: the top level is each group's scale
        t = t / t[-1]
        sl, errors = refit_scales(a, t, sl, zero)
        if errors.sum() < best[0]:
            best = (float(errors.sum()), t, sl)
    _, t, sl = best
    if scale == "variance":
        y = assign(a / sl[:, None], t, zero)
        syy = np.einsum("ij,ij->i", y, y)
        fitted = syy > 0
        sl = np.where(fitted, np.sqrt(np.einsum("ij,ij->i", a, a) / np.where(fitted, syy, 1.0)), sl)
    s[live] = sl
    return t, s


class KMeans(Codebook):
    fitted = True

    def log_coefficients(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError("kmeans levels are fitted to each tensor; they have no x0")

    def fit(self, magnitudes: np.ndarray, bits: int, scale: str) -> tuple[np.ndarray, np.ndarray]:
        return fit_table(magnitudes, bits, scale)


CODEBOOK = KMeans("kmeans", "Lloyd-Max levels fitted to each tensor, one table per tensor, a scale per group")
