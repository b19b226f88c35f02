"""w (groups, n) -> codes, per-group log-parameters, and the dequantized w_q.

Per group: u = |w| / max|w|; x0 = argmax corr(u, round(u)) (search.py); the
paper's rescale s (variance: sqrt(sum w^2 / sum y^2), or least squares:
sum w*y / sum y^2). The level of code k in group g is then

    w_q = sign_k * exp(slope_k * ln(x0_g) + offset_k + ln(s_g))

Each group's parameters share one uint16 on per-tensor grids: 6 bits of
ln(x0) and 10 of ln(s) (a linear codebook needs only ln(s*x0), which gets all
16). Scale code 0 marks an all-zero group. A fitted codebook (kmeans) has one
table t per tensor instead of x0: offset_k = ln t_k, stored with the tensor, and
ln(s) gets all 16 bits. Every weight then takes the code of
its nearest stored level; the graph rebuilds these levels with the same
float32 operations, so they match to within the 1-2 ulp by which onnxruntime's
Exp differs from numpy's. (tools/param_coding.py measures codings: at 5 bits,
6 + 10 bits cost no agreement against exact parameters; 4 or 5 bits of ln(x0) do.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from onnxq.quant import grid, kernels, search_exact
from onnxq.quant.codebooks import Codebook, code_layout, magnitude_count, zero_code
from onnxq.quant.search import LOG_X0_MIN, SortedGroups, bin_index, level_magnitudes, maximize_correlation

SCALES = ("variance", "lsq")
# How x0 is chosen: the fast grid and golden-section search, or a branch and bound
# that proves the maximum to within 1e-6 (search.py, search_exact.py).
# The continuous searches; --search grid (grid.py) scores the grid of stored values instead.
CONTINUOUS = {"fast": maximize_correlation, "exact": search_exact.maximize_correlation}
SEARCHES = ("auto", "grid", *CONTINUOUS)
DEFAULT_SEARCH = "auto"  # the pipeline's (api.Config.search) and quantize's
# auto: the grid for groups of at least GRID_MIN_GROUP weights, else the exact search. The grid
# is 3-6x faster and as accurate on the shared models, except on depthwise 3x3 channels (9
# weights), whose correlation has many near-equal spikes: there its 64 points, spread over a
# sample of channels' optima, lost 12 points of MobileNetV2's top-1 (docs/RESULTS.md, search).
# A linear codebook stores its step on 16 bits, finer than the grid's 64 points: up to
# LINEAR_GRID_BITS the grid's SQNR is within 0.004 dB of the exact search's (1024 x 1024
# Gaussian channels), at 8 bits 0.17 dB below, and a dense ramp left 4 of 255 levels unused.
GRID_MIN_GROUP = 64
LINEAR_GRID_BITS = 6
X0_BITS = 6  # ln(x0): codes 0..63; each group takes the one that correlates best
SCALE_BITS = 10  # ln(s): codes 1..1023, and 0 for an all-zero group
SPLIT = float(1 << SCALE_BITS)  # params = x0_code * SPLIT + scale_code


@dataclass
class QuantizedTensor:
    """One weight, quantized: everything a storage format needs to rebuild it."""

    bits: int
    codebook: str
    codes: np.ndarray  # (groups, n) uint8
    params: np.ndarray  # (groups,) uint16: x0_code * 1024 + scale_code (P = 2), or step code (P = 1)
    ranges: np.ndarray  # (P, 2) float32: value = ranges[p, 0] + code * ranges[p, 1]
    slope: np.ndarray  # (2^bits,) float32, per code, multiplies ln x0 (unused when P = 1)
    offset: np.ndarray  # (2^bits,) float32
    sign: np.ndarray  # (2^bits,) float32: -1, 0 or 1
    correlation: float  # corr(w, w_q) over the whole tensor
    sqnr_db: float  # 10 log10(sum w^2 / sum (w - w_q)^2)
    tensor_offset: bool = False  # offset is this tensor's own (a fitted table), not its codebook's
    rounding: str = "nearest"  # how the codes were chosen: nearest, gptq, or why GPTQ could not run

    @property
    def dequantized(self) -> np.ndarray:
        """(groups, n) float32: what the graph rebuilds (computed on each call, never kept)."""
        fast = kernels.engine(self.codes.size)
        if fast is not None:  # without numpy's int64 copy of the codes: 8 bytes per weight
            return fast.dequantize(self.level_table(), self.codes)
        return np.take_along_axis(self.level_table(), self.codes.astype(np.int64), axis=1).astype(np.float32)

    @property
    def groups(self) -> int:
        return int(self.codes.shape[0])

    @property
    def codebook_bytes(self) -> int:
        """What the file stores besides the indices: parameters, ranges, and an own offset table."""
        own = self.offset.nbytes if self.tensor_offset else 0
        return int(self.params.nbytes + self.ranges.nbytes + own)

    def level_table(self) -> np.ndarray:
        """(groups, 2^bits) float32 levels, computed in the graph's order of operations."""
        return level_table(self.params, self.ranges, self.slope, self.offset, self.sign)


def split_params(params: np.ndarray, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The float32 parameter codes and the live flag, in the graph's order of operations."""
    cf = params.astype(np.float32)
    if count == 1:
        return [cf], np.minimum(cf, np.float32(1.0))
    hi = np.floor(cf / np.float32(SPLIT))
    lo = cf - hi * np.float32(SPLIT)
    return [hi, lo], np.minimum(lo, np.float32(1.0))


def level_table(params, ranges, slope, offset, sign) -> np.ndarray:
    codes, live = split_params(params, ranges.shape[0])
    v = [c * ranges[i, 1] + ranges[i, 0] for i, c in enumerate(codes)]
    if len(v) == 2:
        exponent = slope[None, :] * v[0][:, None] + offset[None, :] + v[1][:, None]
    else:
        exponent = offset[None, :] + v[0][:, None]
    return (sign[None, :] * np.exp(exponent)) * live[:, None]


def _code_coefficients(codebook: Codebook, bits: int):
    a, c = codebook.log_coefficients(bits)
    sign, index = code_layout(bits)
    slope = np.where(index >= 0, a[np.maximum(index, 0)], 0.0).astype(np.float32)
    offset = np.where(index >= 0, c[np.maximum(index, 0)], 0.0).astype(np.float32)
    return slope, offset, sign.astype(np.float32)


def _encode(values: np.ndarray, live: np.ndarray, bits: int, zero_code: bool):
    """Codes of values on a uniform grid over the live groups' range, and that range.

    With zero_code, code 0 is kept for all-zero groups and the grid is 1..2^bits-1.
    """
    codes = np.zeros(values.shape, dtype=np.int64)
    first = 1 if zero_code else 0
    steps = (1 << bits) - 1 - first
    if not live.any():
        return codes, np.zeros(2, np.float32)
    lo, hi = float(values[live].min()), float(values[live].max())
    step = (hi - lo) / steps
    rng = np.array([lo - first * step, step], dtype=np.float32)
    if step > 0:
        codes[live] = np.clip(np.rint((values[live] - lo) / step) + first, first, steps + first)
    else:
        codes[live] = first
    return codes, rng


CHUNK_WEIGHTS = 1 << 20  # quantize works on about this many weights at a time


def _parts(groups: int, n: int) -> list[slice]:
    """Slices of the groups (rows of n weights) of about CHUNK_WEIGHTS weights each."""
    step = max(1, CHUNK_WEIGHTS // max(1, n))
    return [slice(i, min(groups, i + step)) for i in range(0, groups, step)]


class _Rows:
    """The rows of w (groups, n) a part at a time, so that quantize's working arrays (some 70
    bytes per weight) stay near CHUNK_WEIGHTS weights, whatever the tensor's size. Every step
    works per group, so the parts give the same numbers as the whole."""

    def __init__(self, w: np.ndarray):
        self.w = w
        g, n = w.shape
        self.parts = _parts(g, n)
        self.peak = np.zeros(g)  # NaN where a group holds a NaN, inf where it holds an infinity
        for p in self.parts:
            if n:
                self.peak[p] = np.abs(w[p]).max(axis=1)
        self.live = self.peak > 0
        self.norm = np.where(self.live, self.peak, 1.0)

    def w64(self, rows) -> np.ndarray:
        return np.asarray(self.w[rows], dtype=np.float64)

    def u(self, rows) -> np.ndarray:
        """Magnitudes over the group's peak, in [0, 1]."""
        return np.abs(self.w64(rows)) / self.norm[rows, None]


def _x0_range(log_x0: np.ndarray, live: np.ndarray) -> np.ndarray:
    """The stored grid of ln(x0): 64 points over the middle 96% of the groups' optima."""
    if not live.any():
        return np.zeros(2, np.float32)
    lo, hi = np.percentile(log_x0[live], [2.0, 98.0])
    return np.array([lo, (hi - lo) / ((1 << X0_BITS) - 1)], dtype=np.float32)


def _x0_grid(u: np.ndarray, on: grid.Grid | None) -> np.ndarray:
    """Codes of ln(x0) on the stored grid (_x0_range): each group (row of u) takes the point with
    the highest correlation, scored exactly for every group at once (grid.best_on_grid).

    So an outlier group whose optimum lies off the grid still gets the best stored x0. Measured
    on MobileNetV2 at 5 bits: a grid over the full range lost 9 points of agreement (a few
    degenerate channels stretched it), and trying only the 5 points nearest each optimum lost
    1.7 (small groups have several peaks of nearly equal height).
    """
    if on is None:
        return np.zeros(u.shape[0], dtype=np.int64)
    return grid.best_on_grid(u, on).index


def _stored_grid(codebook: Codebook, bits: int, rng: np.ndarray) -> grid.Grid | None:
    """The Grid of the stored points of ln(x0) (_x0_range), None when the range is a single point."""
    if rng[1] == 0:
        return None
    return grid.Grid(level_magnitudes(codebook, _decode(np.arange(1 << X0_BITS), rng), bits))


COARSE_MIDPOINTS = 2048  # the coarse grid's points times the midpoints of each: its cells' edges
COARSE_ROWS = 512  # groups the coarse grid scores, evenly spaced


@dataclass
class _Search:
    """Per group: ln(x0), its stored code and the codes' range (None for a one-parameter
    codebook), the counts and sums of u per level there, and sum u^2."""

    log_x0: np.ndarray
    codes: np.ndarray | None
    rng: np.ndarray | None
    counts: np.ndarray
    sums: np.ndarray
    suu: np.ndarray


def _empty_search(g: int, levels: int) -> _Search:
    return _Search(
        np.zeros(g),
        np.zeros(g, dtype=np.int64),
        None,
        np.zeros((g, levels)),
        np.zeros((g, levels)),
        np.zeros(g),
    )


def _on_grid(rows: _Rows, codebook: Codebook, bits: int, two_params: bool, suu: bool) -> _Search:
    """ln(x0) per group from the exact scores on two grids (grid.py): a coarse one over all of
    [LOG_X0_MIN, 0] (on at most COARSE_ROWS groups), then 64 points spanning the coarse optima of
    the middle 96% of those groups, widened by a coarse step each way. For a codebook that stores
    ln(x0) those 64 are the stored grid, so each group gets the best value the file can hold.
    suu: fill in each group's sum of u^2 (the variance rescale reads it, least squares does not)."""
    live = rows.live
    levels = magnitude_count(bits) + (0 if bits == 1 else 1)
    coarse = np.linspace(LOG_X0_MIN, 0.0, int(np.clip(COARSE_MIDPOINTS // levels, 16, 128)))
    out = _empty_search(live.size, levels)
    out.rng = np.zeros(2, np.float32)
    if live.any():
        # The range is a percentile: a sample of the groups finds it.
        sample = rows.u(np.flatnonzero(live)[:: max(1, int(live.sum()) // COARSE_ROWS)])
        first = grid.best_on_grid(sample, level_magnitudes(codebook, coarse, bits))
        step = coarse[1] - coarse[0]
        lo, hi = np.percentile(coarse[first.index], [2.0, 98.0])
        lo, hi = max(LOG_X0_MIN, lo - step), min(0.0, hi + step)
        out.rng = np.array([lo, (hi - lo) / ((1 << X0_BITS) - 1)], dtype=np.float32)
        points = (
            _decode(np.arange(1 << X0_BITS), out.rng) if two_params else np.linspace(lo, hi, 1 << X0_BITS)
        )
        table = grid.Grid(level_magnitudes(codebook, points, bits))
        for p in rows.parts:
            if suu:
                u = rows.u(p)
                out.suu[p] = np.einsum("gn,gn->g", u, u)
            on = np.flatnonzero(live[p]) + p.start
            if not on.size:
                continue
            # The weights themselves: the compiled loops divide by the peak as they read them.
            second = grid.best_on_grid(rows.w[on], table, rows.norm[on])
            out.codes[on] = second.index  # type: ignore[index]  # set above when two_params
            out.log_x0[on] = points[second.index]
            out.counts[on], out.sums[on] = second.counts, second.sums
    if not two_params:
        out.codes = out.rng = None
    return out


def _searched(rows: _Rows, codebook: Codebook, bits: int, two_params: bool, search: str) -> _Search:
    """ln(x0) per group from a continuous search (CONTINUOUS), then, for a codebook that stores it, the
    stored grid's best point (_x0_grid)."""
    out = _empty_search(rows.live.size, 0)
    for p in rows.parts:
        out.log_x0[p] = CONTINUOUS[search](SortedGroups(rows.u(p)), codebook, bits)[0]
    out.codes = out.rng = None
    if two_params:
        out.rng = _x0_range(out.log_x0, rows.live)
        out.codes = np.zeros(rows.live.size, dtype=np.int64)
        on = _stored_grid(codebook, bits, out.rng)
        for p in rows.parts:
            out.codes[p] = _x0_grid(rows.u(p), on)
        out.log_x0 = _decode(out.codes, out.rng)
    mags = level_magnitudes(codebook, out.log_x0, bits)
    out.counts, out.sums = np.zeros(mags.shape), np.zeros(mags.shape)
    for p in rows.parts:
        u = rows.u(p)
        out.suu[p] = np.einsum("gn,gn->g", u, u)
        index = bin_index(u, 0.5 * (mags[p, 1:] + mags[p, :-1]))
        flat = (index + np.arange(u.shape[0])[:, None] * mags.shape[1]).ravel()
        size = u.shape[0] * mags.shape[1]
        out.counts[p] = np.bincount(flat, minlength=size).reshape(-1, mags.shape[1])
        out.sums[p] = np.bincount(flat, weights=u.ravel(), minlength=size).reshape(-1, mags.shape[1])
    return out


def _decode(codes: np.ndarray, rng: np.ndarray) -> np.ndarray:
    return (codes.astype(np.float32) * rng[1] + rng[0]).astype(np.float64)


def nearest_codes(w: np.ndarray, table: np.ndarray, bits: int) -> np.ndarray:
    """The code of the nearest level of every weight; ties go away from zero."""
    return Nearest(table, bits).codes(w)


class Nearest:
    """The nearest level in each row of a level table (groups, 2^bits), asked in two ways, each
    prepared on first use:
    - codes(w, rows): many weights per row, a part of the rows at a time (quantization);
    - column(w): one weight per row, asked many times over (GPTQ's column by column).

    Codes follow codebooks.base, [-g_M..-g_1, 0, g_1..g_M, spare], and ties go away from zero:
    a weight at the midpoint of two magnitudes takes the larger one. Both ways compare against
    the same midpoints (codes() after dividing each row by its largest magnitude).
    """

    def __init__(self, table: np.ndarray, bits: int):
        self.table, self.bits, self.m = table, bits, magnitude_count(bits)
        self._bins: tuple[np.ndarray, grid.Bins] | None = None
        self._keys: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None = None

    def _magnitudes(self) -> np.ndarray:
        """(groups, M + 1): 0, then g_1..g_M of each row, in float64."""
        mags = np.abs(self.table[:, -self.m - 1 : -1]).astype(np.float64)
        return np.concatenate([np.zeros((mags.shape[0], 1)), mags], axis=1)

    def _prepared(self) -> tuple[np.ndarray, grid.Bins]:
        """Each row's largest magnitude (1 where all are 0), and the Bins of its midpoints over it."""
        if self._bins is None:
            mags = self._magnitudes()
            top = mags[:, -1:].copy()
            top[top == 0] = 1.0
            self._bins = (top, grid.Bins(0.5 * (mags[:, 1:] + mags[:, :-1]) / top))
        return self._bins

    def codes(self, w: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        """The codes of weights w, the rows `rows` of the table."""
        if self.bits == 1:
            return np.where(w < 0, 0, 1).astype(np.uint8)
        top, bins = self._prepared()
        index = bins.count(np.minimum(np.abs(w) / top[rows], 1.0), rows)
        signed = np.where(w < 0, -index, index)
        return (signed + zero_code(self.bits)).astype(np.uint8)

    def compiled(self, fast, w: np.ndarray, rows: slice, live: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """codes() of the rows `rows` through the compiled loop, written into codes (the zero code in
        dead rows), and the sums of (w - q)^2, w^2, w q and q^2 over them."""
        top, bins = self._prepared()
        tables, kind = bins.tables, bins.kind[rows]
        if tables is None:  # too many kinds of rows for tables: every value is searched
            tables, kind = np.zeros((1, 1), np.int32), np.zeros(kind.shape, np.int32)
        # A weight's rows are often a transposed view: the loop reads a row-major copy faster.
        w = np.ascontiguousarray(w, dtype=w.dtype if w.dtype in (np.float32, np.float64) else np.float64)
        zero = zero_code(self.bits)
        return fast.nearest(
            w, top[rows, 0], tables, kind, bins.thresholds[rows], live, zero, self.table[rows], codes
        )

    def column(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes as int64, their levels in float64) for w of shape (groups,): one weight per row.
        Every row's midpoints sit in one sorted array, each row shifted past the one before."""
        flat, starts, keys, offsets, bound = self.column_tables()
        fast = kernels.engine(w.size)
        if self.bits == 1:
            codes = (w >= 0).astype(np.int64)
        elif fast is not None:  # the same search, a row at a time (a fifth of GPTQ's time in numpy)
            return fast.nearest_column(w, keys, offsets, w.dtype.type(bound), self.m, flat, starts)
        else:  # the keys below row r's are M per row
            index = np.searchsorted(keys, np.minimum(np.abs(w), bound) + offsets, side="right")
            index -= np.arange(w.shape[0]) * self.m
            codes = self.m + np.where(w < 0, -index, index)
        return codes, flat[starts + codes]

    def column_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """What column() searches: (flat, starts, keys, offsets, bound), see _column_keys."""
        if self._keys is None:
            self._keys = self._column_keys()
        return self._keys

    def _column_keys(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """column's tables: the levels flat, each row's start in them, and the midpoints of every
        row in one sorted array (row r shifted by offsets[r], past every magnitude below bound)."""
        flat = np.ascontiguousarray(self.table, dtype=np.float64).ravel()
        rows = np.arange(self.table.shape[0])
        starts = rows * self.table.shape[1]
        if self.bits == 1:
            return flat, starts, rows, rows, 0.0
        mags = self._magnitudes()
        bound = float(mags.max(initial=0.0)) + 1.0
        offsets = 2.0 * bound * rows
        keys = (0.5 * (mags[:, 1:] + mags[:, :-1]) + offsets[:, None]).ravel()
        return flat, starts, keys, offsets, bound


def quantize(
    w: np.ndarray,
    codebook: Codebook,
    bits: int,
    scale: str,
    error: Callable[[QuantizedTensor], float] | None = None,
    search: str = DEFAULT_SEARCH,
) -> QuantizedTensor:
    """Quantize each row of w (groups, n) to its own b-bit codebook.

    error ranks the candidates of a choosing codebook (auto); None means the
    weight-space squared error sum (w - w_q)^2. search names how x0 is found (SEARCHES).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}")
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}")
    w = np.asarray(w)
    rows = _Rows(w)
    if not np.all(np.isfinite(rows.peak)):  # the largest magnitude of each group tells
        raise ValueError("weights contain NaN or Inf")
    if codebook.candidates():
        return _least_error(
            np.asarray(w, dtype=np.float64), codebook.candidates(), bits, scale, error, search
        )
    if codebook.fitted:
        return _quantize_fitted(np.asarray(w, dtype=np.float64), codebook, bits, scale)

    slope, offset, sign = _code_coefficients(codebook, bits)
    a, _c = codebook.log_coefficients(bits)
    two_params = parameter_count(codebook, bits) == 2
    if search == "auto":
        grid_holds = two_params or bits <= LINEAR_GRID_BITS  # see GRID_MIN_GROUP
        search = "grid" if grid_holds and w.shape[1] >= GRID_MIN_GROUP else "exact"
    if search == "grid":
        found = _on_grid(rows, codebook, bits, two_params, scale == "variance")
    else:
        found = _searched(rows, codebook, bits, two_params, search)

    # The paper's assignment in normalized units (counts and sums of u per level), then its rescale.
    mags = level_magnitudes(codebook, found.log_x0, bits)
    syy = np.einsum("gl,gl->g", mags * mags, found.counts)
    safe = np.where(syy > 0, syy, 1.0)
    if scale == "variance":
        s = np.sqrt(found.suu / safe)
    else:
        s = np.einsum("gl,gl->g", mags, found.sums) / safe
    live = rows.live & (s > 0)
    log_s = np.log(np.where(live, s * rows.norm, 1.0))  # s scales y/norm = the normalized levels

    if two_params:
        assert found.codes is not None and found.rng is not None
        s_codes, s_rng = _encode(log_s, live, SCALE_BITS, zero_code=True)
        found.codes[~live] = 0
        params = (found.codes * int(SPLIT) + s_codes).astype(np.uint16)
        ranges = np.stack([found.rng, s_rng])
    else:
        step_codes, step_rng = _encode(a[0] * found.log_x0 + log_s, live, 16, zero_code=True)
        params = step_codes.astype(np.uint16)
        ranges = step_rng[None, :]
    return _nearest(rows, codebook, bits, params, ranges, (slope, offset, sign), live)


def _nearest(
    rows: _Rows, codebook, bits, params, ranges, tables, live, tensor_offset=False
) -> QuantizedTensor:
    """Every weight at its nearest stored level (zero in dead groups)."""
    slope, offset, sign = tables
    table = level_table(params, ranges, slope, offset, sign)
    codes = np.empty(rows.w.shape, dtype=np.uint8)
    nearest = Nearest(table, bits)
    fast = kernels.engine(codes.size) if bits > 1 else None
    stats = np.zeros(4)
    for p in rows.parts:
        if fast is not None:
            stats += nearest.compiled(fast, rows.w[p], p, live[p], codes[p])
        else:
            codes[p] = nearest.codes(rows.w64(p), p)
    codes[~live] = zero_code(bits)
    q = QuantizedTensor(
        bits=bits,
        codebook=codebook.name,
        codes=codes,
        params=params,
        ranges=ranges.astype(np.float32),
        slope=slope,
        offset=offset,
        sign=sign,
        correlation=0.0,
        sqnr_db=0.0,
        tensor_offset=tensor_offset,
    )
    return _with_error(q, *stats) if fast is not None else with_codes(q, rows.w, codes)


def _quantize_fitted(w64: np.ndarray, codebook: Codebook, bits: int, scale: str) -> QuantizedTensor:
    """A fitted codebook: its per-tensor table as offset_k = ln t_k, and ln(s) on 16 bits."""
    t, s = codebook.fit(np.abs(w64), bits, scale)
    sign, index = code_layout(bits)
    log_t = np.log(t)
    offset = np.where(index >= 0, log_t[np.maximum(index, 0)], 0.0).astype(np.float32)
    live = s > 0
    codes, rng = _encode(np.log(np.where(live, s, 1.0)), live, 16, zero_code=True)
    tables = (np.zeros(sign.size, np.float32), offset, sign.astype(np.float32))
    return _nearest(_Rows(w64), codebook, bits, codes.astype(np.uint16), rng[None, :], tables, live, True)


def _least_error(w64, candidates, bits, scale, error, search) -> QuantizedTensor:
    """The candidate codebook's quantization with the least error (the first one on a tie)."""
    best, best_error = None, np.inf
    for codebook in candidates:
        q = quantize(w64, codebook, bits, scale, search=search)
        e = error(q) if error is not None else float(np.sum((w64 - q.dequantized) ** 2))
        if best is None or e < best_error:
            best, best_error = q, e
    assert best is not None
    return best


def parameter_count(codebook: Codebook, bits: int) -> int:
    """P, the parameters per group: 2 (x0 and the scale) for a codebook whose levels move with x0,
    1 (a step or a scale) for a linear or a fitted one."""
    if codebook.fitted:
        return 1
    a, _ = codebook.log_coefficients(bits)
    return 2 if np.ptp(a) > 0 else 1


def shape_only(codebook: Codebook, bits: int, groups: int, n: int) -> QuantizedTensor:
    """A QuantizedTensor of groups rows of n codes with no values: the shapes a storage format's
    byte counts read, without quantizing. A choosing codebook (auto) takes its costliest candidate,
    so that the bytes are an upper bound."""
    if codebook.candidates():
        return max(
            (shape_only(c, bits, groups, n) for c in codebook.candidates()),
            key=lambda q: q.codebook_bytes,
        )
    p = parameter_count(codebook, bits)
    levels = np.zeros(1 << bits, np.float32)
    return QuantizedTensor(
        bits=bits,
        codebook=codebook.name,
        codes=np.broadcast_to(np.zeros((), np.uint8), (groups, n)),
        params=np.broadcast_to(np.zeros((), np.uint16), (groups,)),
        ranges=np.zeros((p, 2), np.float32),
        slope=levels,
        offset=levels,
        sign=levels,
        correlation=float("nan"),
        sqnr_db=float("nan"),
        tensor_offset=codebook.fitted,
    )


def with_codes(q: QuantizedTensor, w: np.ndarray, codes: np.ndarray) -> QuantizedTensor:
    """q with other codes (same levels), and its error against w."""
    w = np.asarray(w).reshape(codes.shape)
    table = q.level_table()
    err = energy = dot = dd = 0.0
    for p in _parts(*codes.shape):
        w64 = np.asarray(w[p], dtype=np.float64)
        deq = (
            np.take_along_axis(table[p], codes[p].astype(np.int64), axis=1)
            .astype(np.float32)
            .astype(np.float64)
        )
        err += float(np.sum((w64 - deq) ** 2))
        energy += float(np.sum(w64 * w64))
        dot += float(np.sum(w64 * deq))
        dd += float(np.sum(deq * deq))
    return _with_error(replace(q, codes=codes.astype(np.uint8)), err, energy, dot, dd)


def _with_error(q: QuantizedTensor, err: float, energy: float, dot: float, dd: float) -> QuantizedTensor:
    """q with its correlation and SQNR, from the sums of (w - q)^2, w^2, w q and q^2."""
    corr = dot / np.sqrt(energy * dd) if energy > 0 and dd > 0 else (1.0 if err == 0 else 0.0)
    sqnr = 10 * np.log10(energy / err) if err > 0 else float("inf")
    return replace(q, correlation=float(corr), sqnr_db=float(sqnr))
