"""The passes over every weight, compiled with numba (the `fast` extra): each does in one loop
what grid.py and quantize.py do with a dozen numpy passes over float64 and int64 copies.

They give numpy's codes, counts and sums bit for bit. score_grid() sums the correlations in
another order than numpy's matrix products; both take the first point within grid.TIE of the
best, so that rounding does not pick between points that tie. Only kernels.py imports this module, and only when numba is installed.
"""

from __future__ import annotations

import numba
import numpy as np

from onnxq.quant.grid import SCAN


@numba.njit(cache=True, nogil=True)
def score_grid(w, norm, lut, padded, bounds, levels, tie):  # pragma: no cover - compiled
    """grid.best_on_grid's scores of u = |w| / norm[:, None] (divided in float64, as numpy divides),
    row by row: the count and sum of u per cell (grid.cells), their prefix sums, then per point
    the sums over each level's cells, bounds[k, l]..bounds[k, l + 1], in L steps instead of a
    product over every cell. Returns the best point of each row (the first within `tie` of the
    highest), its correlation, and the counts and sums of u per level there, summed in the row's
    order as numpy sums them."""
    g, n = w.shape
    k_points, count = levels.shape
    edges = padded.shape[0] - SCAN
    width = edges + 1
    scale = float(lut.shape[0] - 1)
    cum_n, cum_s = np.zeros(width + 1), np.zeros(width + 1)
    cell, level_of, scores = np.empty(n, np.int64), np.empty(width, np.int64), np.empty(k_points)
    best, corr = np.zeros(g, np.int64), np.zeros(g)
    level_n, level_s = np.zeros((g, count)), np.zeros((g, count))
    u = np.empty(n)
    for r in range(g):
        cum_n[:] = 0.0
        cum_s[:] = 0.0
        suu = 0.0
        peak = norm[r]
        for i in range(n):  # a loop of its own, which the compiler vectorizes: 13% of the kernel
            u[i] = abs(np.float64(w[r, i])) / peak
        for i in range(n):
            x = u[i]
            b = lut[int(x * scale)]
            if b >= 0:  # the bin's few edges compared: no branch
                b += (padded[b] <= x) + (padded[b + 1] <= x)
            else:  # a bin crowded with midpoints (near 0, where small x0 put many): searched
                b = np.searchsorted(padded[:edges], x, side="right")
            cell[i] = b
            cum_n[b + 1] += 1.0
            cum_s[b + 1] += x
            suu += x * x
        for c in range(1, width + 1):
            cum_n[c] += cum_n[c - 1]
            cum_s[c] += cum_s[c - 1]
        k = _best_point(cum_n, cum_s, suu, bounds, levels, tie, scores)
        best[r], corr[r] = k, scores[k]
        for j in range(count):
            level_of[bounds[k, j] : bounds[k, j + 1]] = j
        for i in range(n):
            j = level_of[cell[i]]
            level_n[r, j] += 1.0
            level_s[r, j] += u[i]
    return best, corr, level_n, level_s


@numba.njit(cache=True, nogil=True)
def _best_point(cum_n, cum_s, suu, bounds, levels, tie, scores):  # pragma: no cover - compiled
    """The first point whose correlation is within tie of the highest (scores: every point's)."""
    k_points, count = levels.shape
    for k in range(k_points):
        suy = 0.0
        syy = 0.0
        for j in range(count):
            a, e = bounds[k, j], bounds[k, j + 1]
            y = levels[k, j]
            suy += y * (cum_s[e] - cum_s[a])
            syy += y * y * (cum_n[e] - cum_n[a])
        denom = np.sqrt(suu * syy)
        scores[k] = suy / denom if denom > 0 else 0.0
    top = scores.max()
    for k in range(k_points):
        if scores[k] >= top - tie:
            return k
    return 0


@numba.njit(cache=True, nogil=True)
def _count(v, thresholds, r):  # pragma: no cover - compiled
    """How many of row r's thresholds are <= v, compared as search.bin_index compares them:
    both shifted by 2r (the rounding of that shift decides the rare value within 1e-13 of one)."""
    shift = 2.0 * r
    key = v + shift
    lo, hi = 0, thresholds.shape[1]
    while lo < hi:
        mid = (lo + hi) // 2
        if min(thresholds[r, mid], 1.5) + shift <= key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def nearest(w, top, tables, kind, thresholds, live, zero, levels, codes):  # pragma: no cover
    """Nearest.codes() for the rows of w (codes written in place, the zero code in dead rows),
    and the sums that with_codes() reads: (w - q)^2, w^2, w q and q^2, q the float32 level.
    tables (kinds, bins + 1) of grid.Bins, or (1, 1) for none: every value is then searched."""
    g, n = w.shape
    size = tables.shape[1] - 1
    e0 = e1 = e2 = e3 = 0.0
    for r in range(g):
        t, kr, on = top[r], kind[r], live[r]
        for i in range(n):
            x = np.float64(w[r, i])
            code = zero
            if on:
                v = min(abs(x) / t, 1.0)
                index = tables[kr, min(int(v * size), size)] if size > 0 else -1
                if index < 0:
                    index = _count(v, thresholds, r)
                code = zero - index if x < 0 else zero + index
            codes[r, i] = code
            q = np.float64(np.float32(levels[r, code]))
            d = x - q
            e0 += d * d
            e1 += x * x
            e2 += x * q
            e3 += q * q
    return np.array([e0, e1, e2, e3])


LINEAR_COUNT = 32  # up to this many midpoints per row, nearest_column counts them all: a binary
# search's unpredictable branches took 21 ns per weight on the 134M decoder's columns


@numba.njit(cache=True, nogil=True, inline="always")
def _column_code(x, r, keys, offsets, bound, m):  # pragma: no cover - compiled
    """Row r's code for its weight x: x against that row's m midpoints, the keys keys[r*m:(r+1)*m]
    (shifted by offsets[r]), compared as numpy's searchsorted compares them: min(|x|, bound) in
    x's own type, plus offsets[r] in float64."""
    v = min(abs(x), bound)
    key = np.float64(v) + offsets[r]
    first = r * m
    index = 0
    if m <= LINEAR_COUNT:  # how many keys are <= key: searchsorted side="right", without branches
        for j in range(first, first + m):
            index += keys[j] <= key
    else:
        lo, hi = first, first + m
        while lo < hi:
            mid = (lo + hi) // 2
            if keys[mid] <= key:
                lo = mid + 1
            else:
                hi = mid
        index = lo - first
    return m - index if x < 0 else m + index


@numba.njit(cache=True, nogil=True)
def nearest_column(w, keys, offsets, bound, m, flat, starts):  # pragma: no cover - compiled
    """Nearest.column() for m > 0: each row's one weight against that row's midpoints
    (_column_code). Returns the codes (int64) and their levels (float64) from flat at
    starts + code."""
    g = w.shape[0]
    codes = np.empty(g, np.int64)
    levels = np.empty(g)
    for r in range(g):
        code = _column_code(w[r], r, keys, offsets, bound, m)
        codes[r] = code
        levels[r] = flat[starts[r] + code]
    return codes, levels


GPTQ_TILE = 64  # rows that round_columns takes through a block's columns together


@numba.njit(cache=True, nogil=True)
def round_columns(
    cols, residual, codes, v, s0, s1, keys, offsets, bound, m, flat, starts
):  # pragma: no cover - compiled
    """gptq._round_block's columns s0..s1-1 (cols, residual and codes (G, B, R), v (G, B, B)),
    GPTQ_TILE rows at a time: GPTQ's rows are independent, so a tile is rounded column by column
    and its residuals moved onto its later columns while its midpoints stay in the cache, rather
    than every row's midpoints read once per column. The same float32 products and sums as
    numpy's column by column."""
    g, _, r = cols.shape
    for gi in range(g):
        for t0 in range(0, r, GPTQ_TILE):
            t1 = min(t0 + GPTQ_TILE, r)
            for j in range(s0, s1):
                for ri in range(t0, t1):
                    row = gi * r + ri
                    code = _column_code(cols[gi, j, ri], row, keys, offsets, bound, m)
                    codes[gi, j, ri] = code
                    residual[gi, j, ri] = residual[gi, j, ri] - flat[starts[row] + code]
                for jj in range(j + 1, s1):
                    factor = v[gi, j, jj]
                    for ri in range(t0, t1):
                        cols[gi, jj, ri] += factor * residual[gi, j, ri]


@numba.njit(cache=True, nogil=True)
def dequantize(table, codes):  # pragma: no cover - compiled
    """QuantizedTensor.dequantized: each code's level in its row's table, as float32."""
    g, n = codes.shape
    out = np.empty((g, n), np.float32)
    for r in range(g):
        for i in range(n):
            out[r, i] = table[r, codes[r, i]]
    return out
