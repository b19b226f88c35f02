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

from onnxq.quant import grid, search_exact
from onnxq.quant.codebooks import Codebook, code_layout, magnitude_count, zero_code
from onnxq.quant.search import LOG_X0_MIN, SortedGroups, bin_index, level_magnitudes, maximize_correlation

SCALES = ("variance", "lsq")
# How x0 is chosen: the fast grid and golden-section search, or a branch and bound
# that proves the maximum to within 1e-6 (search.py, search_exact.py).
# The continuous searches; --search grid (grid.py) scores the grid of stored values instead.
CONTINUOUS = {"fast": maximize_correlation, "exact": search_exact.maximize_correlation}
SEARCHES = ("grid", *CONTINUOUS)
DEFAULT_SEARCH = "exact"  # the pipeline's (api.Config.search) and quantize's
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
    dequantized: np.ndarray  # (groups, n) float32, what the graph rebuilds
    correlation: float  # corr(w, w_q) over the whole tensor
    sqnr_db: float  # 10 log10(sum w^2 / sum (w - w_q)^2)
    tensor_offset: bool = False  # offset is this tensor's own (a fitted table), not its codebook's
    rounding: str = "nearest"  # how the codes were chosen: nearest, gptq, or why GPTQ could not run

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


def _x0_grid(groups: SortedGroups, codebook: Codebook, bits: int, log_x0: np.ndarray, live: np.ndarray):
    """Codes of ln(x0) on a 64-point grid over the middle 96% of the groups' optima.

    Each group takes the grid point with the highest correlation, so an outlier
    group whose optimum lies off the grid still gets the best stored x0. Measured
    on MobileNetV2 at 5 bits: a grid over the full range lost 9 points of
    agreement (a few degenerate channels stretched it), and trying only the 5
    points nearest each optimum lost 1.7 (small groups have several peaks of
    nearly equal height).
    """
    codes = np.zeros(log_x0.shape, dtype=np.int64)
    if not live.any():
        return codes, np.zeros(2, np.float32)
    lo, hi = np.percentile(log_x0[live], [2.0, 98.0])
    steps = (1 << X0_BITS) - 1
    rng = np.array([lo, (hi - lo) / steps], dtype=np.float32)
    if rng[1] == 0:
        return codes, rng
    best = np.full(log_x0.shape, -np.inf)
    levels: np.ndarray | None = None
    edges: np.ndarray | None = None
    for code in range(steps + 1):
        previous, levels = levels, level_magnitudes(codebook, _decode(np.full(log_x0.shape, code), rng), bits)
        # Levels that only rise from one grid point to the next let the counts walk up.
        rising = previous is not None and bool(np.all(levels >= previous))
        score, edges = groups.correlation_edges(levels, start=edges if rising else None)
        better = score > best
        codes[better] = code
        best[better] = score[better]
    return codes, rng


COARSE_MIDPOINTS = 2048  # the coarse grid's points times the midpoints of each: its cells' edges
COARSE_ROWS = 512  # groups the coarse grid scores, evenly spaced


def _on_grid(u, live, codebook: Codebook, bits: int, two_params: bool):
    """ln(x0) per group from the exact scores on two grids (grid.py): a coarse one over all of
    [LOG_X0_MIN, 0] (on at most COARSE_ROWS groups), then 64 points spanning the coarse optima of
    the middle 96% of those groups, widened by a coarse step each way. For a codebook that stores ln(x0) those 64 are the stored
    grid, so each group gets the best value the file can hold. Returns (ln x0, x0 codes or None,
    their range or None, counts and sums of u per level)."""
    levels = magnitude_count(bits) + (0 if bits == 1 else 1)
    coarse = np.linspace(LOG_X0_MIN, 0.0, int(np.clip(COARSE_MIDPOINTS // levels, 16, 128)))
    g = u.shape[0]
    log_x0, counts, sums = np.zeros(g), np.zeros((g, levels)), np.zeros((g, levels))
    codes = np.zeros(g, dtype=np.int64)
    if not live.any():
        return log_x0, codes if two_params else None, np.zeros(2, np.float32), counts, sums
    sample = u[live][
        :: max(1, int(live.sum()) // COARSE_ROWS)
    ]  # the range is a percentile: a sample finds it
    first = grid.best_on_grid(sample, level_magnitudes(codebook, coarse, bits))
    step = coarse[1] - coarse[0]
    lo, hi = np.percentile(coarse[first.index], [2.0, 98.0])
    lo, hi = max(LOG_X0_MIN, lo - step), min(0.0, hi + step)
    rng = np.array([lo, (hi - lo) / ((1 << X0_BITS) - 1)], dtype=np.float32)
    points = _decode(np.arange(1 << X0_BITS), rng) if two_params else np.linspace(lo, hi, 1 << X0_BITS)
    second = grid.best_on_grid(u[live], level_magnitudes(codebook, points, bits))
    codes[live] = second.index
    log_x0[live] = points[second.index]
    counts[live], sums[live] = second.counts, second.sums
    return log_x0, codes if two_params else None, rng if two_params else None, counts, sums


def _searched(u, live, codebook: Codebook, bits: int, two_params: bool, search: str):
    """ln(x0) per group from a continuous search (CONTINUOUS), then, for a codebook that stores it, the
    stored grid's best point (_x0_grid). Returns what _on_grid does."""
    groups = SortedGroups(u)
    log_x0, _ = CONTINUOUS[search](groups, codebook, bits)
    codes = rng = None
    if two_params:
        codes, rng = _x0_grid(groups, codebook, bits, log_x0, live)
        log_x0 = _decode(codes, rng)
    mags = level_magnitudes(codebook, log_x0, bits)
    index = bin_index(u, 0.5 * (mags[:, 1:] + mags[:, :-1]))
    flat = (index + np.arange(u.shape[0])[:, None] * mags.shape[1]).ravel()
    counts = np.bincount(flat, minlength=mags.size).reshape(mags.shape).astype(np.float64)
    sums = np.bincount(flat, weights=u.ravel(), minlength=mags.size).reshape(mags.shape)
    return log_x0, codes, rng, counts, sums


def _decode(codes: np.ndarray, rng: np.ndarray) -> np.ndarray:
    return (codes.astype(np.float32) * rng[1] + rng[0]).astype(np.float64)


def nearest_codes(w: np.ndarray, table: np.ndarray, bits: int) -> np.ndarray:
    """The code of the nearest level of every weight; ties go away from zero."""
    m = magnitude_count(bits)
    mags = np.abs(table[:, -m - 1 : -1] if bits > 1 else table[:, -m:]).astype(np.float64)
    if bits > 1:
        mags = np.concatenate([np.zeros((mags.shape[0], 1)), mags], axis=1)
    if bits == 1:
        return np.where(w < 0, 0, 1).astype(np.uint8)
    top = mags[:, -1:].copy()
    top[top == 0] = 1.0
    index = grid.count_at_or_below(np.minimum(np.abs(w) / top, 1.0), 0.5 * (mags[:, 1:] + mags[:, :-1]) / top)
    signed = np.where(w < 0, -index, index)
    return (signed + zero_code(bits)).astype(np.uint8)


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
    w64 = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w64)):
        raise ValueError("weights contain NaN or Inf")
    if codebook.candidates():
        return _least_error(w64, codebook.candidates(), bits, scale, error, search)
    if codebook.fitted:
        return _quantize_fitted(w64, codebook, bits, scale)
    peak = np.abs(w64).max(axis=1)
    live = peak > 0
    norm = np.where(live, peak, 1.0)
    u = np.abs(w64) / norm[:, None]

    slope, offset, sign = _code_coefficients(codebook, bits)
    a, _c = codebook.log_coefficients(bits)
    two_params = bool(np.ptp(a) > 0)
    if search == "grid":
        log_x0, x0_codes, x0_rng, counts, sums = _on_grid(u, live, codebook, bits, two_params)
    else:
        log_x0, x0_codes, x0_rng, counts, sums = _searched(u, live, codebook, bits, two_params, search)

    # The paper's assignment in normalized units (counts and sums of u per level), then its rescale.
    mags = level_magnitudes(codebook, log_x0, bits)
    syy = np.einsum("gl,gl->g", mags * mags, counts)
    safe = np.where(syy > 0, syy, 1.0)
    if scale == "variance":
        s = np.sqrt(np.einsum("gn,gn->g", u, u) / safe)
    else:
        s = np.einsum("gl,gl->g", mags, sums) / safe
    live &= s > 0
    log_s = np.log(np.where(live, s * norm, 1.0))  # s scales y/norm = the normalized levels

    if two_params:
        assert x0_codes is not None and x0_rng is not None
        s_codes, s_rng = _encode(log_s, live, SCALE_BITS, zero_code=True)
        x0_codes[~live] = 0
        params = (x0_codes * int(SPLIT) + s_codes).astype(np.uint16)
        ranges = np.stack([x0_rng, s_rng])
    else:
        step_codes, step_rng = _encode(a[0] * log_x0 + log_s, live, 16, zero_code=True)
        params = step_codes.astype(np.uint16)
        ranges = step_rng[None, :]
    return _nearest(w64, codebook, bits, params, ranges, (slope, offset, sign), live)


def _nearest(w64, codebook, bits, params, ranges, tables, live, tensor_offset=False) -> QuantizedTensor:
    """Every weight at its nearest stored level (zero in dead groups)."""
    slope, offset, sign = tables
    table = level_table(params, ranges, slope, offset, sign)
    codes = nearest_codes(w64, table, bits)
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
        dequantized=np.zeros(0, np.float32),
        correlation=0.0,
        sqnr_db=0.0,
        tensor_offset=tensor_offset,
    )
    return with_codes(q, w64, codes)


def _quantize_fitted(w64: np.ndarray, codebook: Codebook, bits: int, scale: str) -> QuantizedTensor:
    """A fitted codebook: its per-tensor table as offset_k = ln t_k, and ln(s) on 16 bits."""
    t, s = codebook.fit(np.abs(w64), bits, scale)
    sign, index = code_layout(bits)
    log_t = np.log(t)
    offset = np.where(index >= 0, log_t[np.maximum(index, 0)], 0.0).astype(np.float32)
    live = s > 0
    codes, rng = _encode(np.log(np.where(live, s, 1.0)), live, 16, zero_code=True)
    tables = (np.zeros(sign.size, np.float32), offset, sign.astype(np.float32))
    return _nearest(w64, codebook, bits, codes.astype(np.uint16), rng[None, :], tables, live, True)


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


def with_codes(q: QuantizedTensor, w: np.ndarray, codes: np.ndarray) -> QuantizedTensor:
    """q with other codes (same levels), its dequantized values and its error against w."""
    w64 = np.asarray(w, dtype=np.float64).reshape(codes.shape)
    table = q.level_table()
    deq = np.take_along_axis(table, codes.astype(np.int64), axis=1)
    err = float(np.sum((w64 - deq) ** 2))
    energy = float(np.sum(w64 * w64))
    dot = float(np.sum(w64 * deq))
    dd = float(np.sum(deq.astype(np.float64) ** 2))
    corr = dot / np.sqrt(energy * dd) if energy > 0 and dd > 0 else (1.0 if err == 0 else 0.0)
    sqnr = 10 * np.log10(energy / err) if err > 0 else float("inf")
    return replace(
        q,
        codes=codes.astype(np.uint8),
        dequantized=deq.astype(np.float32),
        correlation=float(corr),
        sqnr_db=float(sqnr),
    )
