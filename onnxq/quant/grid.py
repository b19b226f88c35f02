"""x0 over a grid, scored exactly for every group at once: corr(u, round(u; levels(x0_k))) for
every group and every point x0_k, and the best point per group (--search grid).

The levels of each grid point have fixed midpoints, and the union of all of them cuts [0, 1]
into cells. Each magnitude falls in one cell (cells(), through a table of 2^16 bins, exact),
and the counts and sums of the magnitudes per (group, cell), times the level each cell takes at
every grid point (two matrix products), give every group's sum u*y and sum y^2 at every grid
point, hence its correlation exactly: the same numbers as assigning every weight to its
nearest level, in O(n) per pass instead of O(n) per grid point. (The products replaced prefix
sums gathered at every point's midpoints, which cost 3-4x as much: (group, point, level)
arrays of float64.) quantize.py runs two passes: a coarse grid over all of ln(x0), then the
64 points that the file stores (6 bits of ln(x0) per group), spanning the coarse optima of the
middle 96% of the groups; each group takes the stored point with the highest correlation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from onnxq.quant import kernels

LUT_BITS = 16  # cells() bins [0, 1] into 2^16 bins; a bin holding a midpoint is resolved exactly
TIE = 1e-12  # correlations this close tie: the first such grid point is chosen, whatever the rounding
# score_grid compares the edges inside a value's bin with it, up to this many; a bin that more edges
# split is searched. On a 5-bit grid (960 edges) 13% of Gaussian magnitudes fell in a split bin,
# and their binary searches took 9.6 of score_grid's 15 ns per weight; compared, 1.8.
SCAN = 2
CELLS_AT_ONCE = 1 << 21  # (group, cell) pairs in one chunk of the histogram: 32 MB of float64 sums


def cells(u: np.ndarray, edges: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
    """How many edges are <= each u in [0, 1]: np.searchsorted(edges, u, side="right"), in int32.

    u * 2^16 is exact in binary floating point, so its integer part names the bin [k, k + 1) / 2^16
    that holds u; a table gives the count for every bin that no edge splits, and only the values
    in the few bins that one does (about 1% of them for a thousand edges) are searched. table:
    cell_table(edges), when the caller has it.
    """
    table = cell_table(edges) if table is None else table
    out = np.take(table, (u * np.float32(1 << LUT_BITS)).astype(np.int32))
    split = np.flatnonzero(out < 0)
    if split.size:
        out.flat[split] = np.searchsorted(edges, u.flat[split], side="right")
    return out


def cell_table(edges: np.ndarray, scan: int = 0) -> np.ndarray:
    """For each of the 2^16 + 1 bins of [0, 1], how many of the ascending edges lie below it (are
    <= its start), or -1 for a bin that more than scan edges split, whose values are searched
    (cells() takes scan 0; the compiled score_grid compares up to SCAN edges inside a bin).

    Counted per edge, from the bin it falls in (e * 2^16 is exact): np.searchsorted of every
    bin's start took 3.8 ms per grid, twice per weight."""
    size = 1 << LUT_BITS
    scaled = np.asarray(edges, dtype=np.float64) * size
    bin_of = np.floor(scaled)
    interior = scaled != bin_of  # an edge on a bin's start splits no bin
    first = np.clip(bin_of + interior, 0, size + 1).astype(np.intp)  # the first bin above the edge
    below = np.cumsum(np.bincount(first, minlength=size + 2))[: size + 1]
    held = bin_of[interior & (bin_of >= 0) & (bin_of <= size)].astype(np.intp)
    inside = np.bincount(held, minlength=size + 1)
    return np.where(inside <= scan, below, -1).astype(np.int32)


def padded(edges: np.ndarray) -> np.ndarray:
    """The edges and SCAN infinities after them: the edges in a bin are compared without a
    bound check."""
    return np.concatenate([edges, np.full(SCAN, np.inf, edges.dtype)])


@dataclass
class GridScores:
    """Per group: the best grid point, its correlation, and the counts and sums of u per level there."""

    index: np.ndarray  # (G,) int: the first grid point with the highest correlation
    correlation: np.ndarray  # (G,)
    counts: np.ndarray  # (G, L) at the best point
    sums: np.ndarray  # (G, L)


class Grid:
    """A grid's cells, prepared once for all the rows that are scored on it: the cells' edges (the
    distinct midpoints), each level's first cell at each point, and, built on first use by the
    engine that needs them, the tables of the cells and (numpy's matrix products) per (cell, point)
    the level index and value."""

    def __init__(self, levels: np.ndarray):
        """levels (K, L): each grid point's ascending magnitude levels."""
        self.points = levels
        mids = 0.5 * (levels[:, 1:] + levels[:, :-1])  # (K, L - 1)
        self.edges, where = np.unique(mids, return_inverse=True)
        self.where = where.reshape(mids.shape)  # each midpoint's index among the edges
        k, width = levels.shape[0], self.edges.size + 1
        # (K, L + 1): the first cell of each level at each point, then the cell count
        self.bounds = np.concatenate(
            [np.zeros((k, 1), np.int64), self.where + 1, np.full((k, 1), width)], axis=1
        )
        self._products: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @cached_property
    def lut(self) -> np.ndarray:
        """cells()' table of the edges (numpy's engine)."""
        return cell_table(self.edges)

    @cached_property
    def compiled_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """score_grid's table (cell_table with SCAN) and padded edges (the compiled engine)."""
        return cell_table(self.edges, SCAN), padded(self.edges)

    def products(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(K, cells) the level a magnitude in each cell takes at each point, (cells, K) that
        level's magnitude, and its square."""
        if self._products is None:
            index = _cell_levels(self.where, self.edges.size + 1)
            value = np.take_along_axis(self.points.T, index, axis=0)
            self._products = (np.ascontiguousarray(index.T), value, value * value)
        return self._products


def best_on_grid(values: np.ndarray, levels: np.ndarray | Grid, norm: np.ndarray | None = None) -> GridScores:
    """The grid point whose levels correlate best with each row of u (G, n), magnitudes in [0, 1].

    values: u itself, or weights w whose magnitudes over norm (G,) are u, |w| / norm[:, None] in
    float64 (as quantize makes them): the compiled loops then divide as they read, where numpy
    makes u first. levels: each grid point's ascending magnitude levels (K, L), or their Grid.
    Ties (within TIE) go to the first point.
    """
    on = levels if isinstance(levels, Grid) else Grid(levels)
    fast = kernels.engine(values.size)
    if fast is not None:
        norm = np.ones(values.shape[0]) if norm is None else np.ascontiguousarray(norm, dtype=np.float64)
        kind = values.dtype if values.dtype in (np.float32, np.float64) else np.float64
        tables = on.compiled_tables
        got = fast.score_grid(np.ascontiguousarray(values, kind), norm, *tables, on.bounds, on.points, TIE)
        return GridScores(*got)
    u = values if norm is None else np.abs(np.asarray(values, dtype=np.float64)) / norm[:, None]
    rows = max(1, CELLS_AT_ONCE // (on.edges.size + 1))
    parts = [_score_rows(u[i : i + rows], on) for i in range(0, u.shape[0], rows)]
    return GridScores(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in GridScores.__dataclass_fields__)
    )


def _cell_levels(where: np.ndarray, width: int) -> np.ndarray:
    """(cells, K) int: the level that a magnitude in each cell takes at each grid point, i.e. how
    many of that point's midpoints (where: their indices among the edges) lie at or below the cell."""
    k = where.shape[0]
    marks = np.zeros((width, k), dtype=np.int64)
    np.add.at(marks, (where + 1, np.broadcast_to(np.arange(k)[:, None], where.shape)), 1)
    return np.cumsum(marks, axis=0)


def _score_rows(u: np.ndarray, on: Grid) -> GridScores:
    """Per (group, cell), the count and the sum of the magnitudes; times each cell's level at every
    grid point (one matrix product each), every group's sums over its levels at every point."""
    g = u.shape[0]
    width = on.edges.size + 1
    index, value, square = on.products()
    cell = cells(u, on.edges, on.lut)
    flat = (cell + (np.arange(g, dtype=np.intp) * width)[:, None]).ravel()
    counts = np.bincount(flat, minlength=g * width).reshape(g, width).astype(np.float64)
    sums = np.bincount(flat, weights=u.ravel(), minlength=g * width).reshape(g, width)
    suy = sums @ value
    syy = counts @ square
    suu = np.einsum("gn,gn->g", u, u, dtype=np.float64)
    denom = np.sqrt(suu[:, None] * syy)
    corr = np.divide(suy, denom, out=np.zeros_like(suy), where=denom > 0)
    best = np.argmax(corr >= corr.max(axis=1, keepdims=True) - TIE, axis=1)  # the first of equals
    # The counts and sums per level at each group's best point, from its magnitudes' levels there.
    count = on.points.shape[1]
    at = (np.take(index, cell + (best * width)[:, None]) + (np.arange(g) * count)[:, None]).ravel()
    level_n = np.bincount(at, minlength=g * count).reshape(g, count).astype(np.float64)
    level_s = np.bincount(at, weights=u.ravel(), minlength=g * count).reshape(g, count)
    return GridScores(best, corr[np.arange(g), best], level_n, level_s)


MAX_TABLES = 512  # row signatures with a table of their own; more rows fall back to a plain search
# Bins' tables have 2^12 bins: up to 512 of them are built for each weight, and at 2^16 bins building
# them took longer than looking its weights up (a 768x2048 weight at 5 bits has 64 kinds: 4.2M table
# entries against 1.6M weights). The values in a bin that holds a threshold, about 0.1% of them on
# Gaussian weights, are searched.
BINS_BITS = 12


def count_at_or_below(v: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per row, how many of the row's ascending thresholds are <= each value in [0, 1] (int64):
    search.bin_index, through the tables of Bins."""
    return Bins(thresholds).count(v)


class Bins:
    """count_at_or_below for rows of ascending thresholds, prepared once and applied to the rows
    a part at a time: tables of 2^BINS_BITS bins shared by the rows whose thresholds fall in the same
    bins (a codebook's rows differ only in their scale, which the caller divides out); the values
    in a bin that holds a threshold of their row are resolved exactly."""

    def __init__(self, thresholds: np.ndarray):
        self.thresholds = thresholds
        size = 1 << BINS_BITS
        marks = np.minimum((thresholds * size).astype(np.int64), size)  # the bin of each threshold
        kinds, kind = _row_kinds(marks)
        self.kind = kind.astype(np.int32)
        self.tables = None  # too many kinds: a plain search instead
        if kinds.shape[0] <= MAX_TABLES:
            # Per kind, how many thresholds lie in bins below each bin; -1 marks a bin holding one.
            tables = np.zeros((kinds.shape[0], size + 2), dtype=np.int32)
            np.add.at(tables, (np.arange(kinds.shape[0])[:, None], kinds + 1), 1)
            self.tables = np.ascontiguousarray(np.cumsum(tables, axis=1, dtype=np.int32)[:, :-1])
            np.put_along_axis(self.tables, kinds, -1, axis=1)

    def count(self, v: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        """The counts for values v of the rows `rows` of the thresholds."""
        from onnxq.quant.search import bin_index

        thresholds = self.thresholds[rows]
        if self.tables is None:
            return bin_index(v, thresholds)
        size = 1 << BINS_BITS
        at = (v * np.float32(size)).astype(np.int32)
        np.minimum(at, size, out=at)
        at += (self.kind[rows] * (size + 1))[:, None]
        out = np.take(self.tables, at).astype(np.int64)
        r, c = np.nonzero(out < 0)
        if r.size:
            out[r, c] = _count_rows(v[r, c], thresholds, r)
        return out


def _row_kinds(marks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(marks, axis=0, return_inverse=True), one column at a time: each step numbers the
    distinct (kind so far, next column) pairs. np.unique over whole rows sorted them as records,
    1.4 s of the 17 that a 134M-weight decoder's blocks took."""
    kind = np.zeros(marks.shape[0], dtype=np.int64)
    for column in marks.T:
        _, kind = np.unique(kind * (int(column.max(initial=0)) + 1) + column, return_inverse=True)
    first = np.zeros(int(kind.max(initial=-1)) + 1, dtype=np.int64)
    first[kind[::-1]] = np.arange(marks.shape[0])[::-1]  # each kind's first row
    return marks[first], kind.ravel()


def _count_rows(values: np.ndarray, thresholds: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """How many of thresholds[rows[i]] are <= values[i], every row in one search (rows offset by 2)."""
    width = thresholds.shape[1]
    keys = (np.minimum(thresholds, 1.5) + 2.0 * np.arange(thresholds.shape[0])[:, None]).ravel()
    return np.searchsorted(keys, values + 2.0 * rows, side="right") - rows * width
