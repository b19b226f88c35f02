"""Conv input patches as columns (im2col), in the column order of the Conv weight.

For x of shape (N, C, *S) and a weight W of shape (G*R, C/G, *k), the columns
are P of shape (G, K, M) with K = (C/G) * prod(k) and M = N * prod(out), such
that W[g*R:(g+1)*R].reshape(R, K) @ P[g] is group g of the Conv output, with
the output positions (n, *out) row-major along M.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from onnxq.errors import OnnxqError

AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


def conv_pads(
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    pads: tuple[int, ...],
    auto_pad: str = "NOTSET",
) -> list[tuple[int, int]]:
    """(begin, end) zero padding per spatial axis, as the ONNX Conv spec defines it."""
    nd = len(kernel)
    if auto_pad == "NOTSET":
        return [(pads[i], pads[i + nd]) if pads else (0, 0) for i in range(nd)]
    if auto_pad == "VALID":
        return [(0, 0)] * nd
    if auto_pad not in AUTO_PADS:
        raise OnnxqError(f"Conv auto_pad {auto_pad!r} is not one of {list(AUTO_PADS)}; fix the model")
    result = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        result.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
    return result


def conv_columns(
    x: np.ndarray,
    groups: int,
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    pads: list[tuple[int, int]],
) -> tuple[np.ndarray, np.ndarray | None]:
    """The (G, K, M) columns of x for a Conv with these attributes, and which columns count.

    The second value is None when every column is an output position. Otherwise it is
    a 0/1 vector over M, and only the columns marked 1 are the columns of the module
    docstring, in their order; the others are zero. That happens with stride 1: each
    kernel position's row is then one contiguous slice of the flattened padded input,
    several times faster to copy than a window per output position, at the price of
    the few columns that wrap around a row's end.
    """
    n, c = x.shape[:2]
    per_group = c // groups
    if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(map(any, pads)):
        cols = x.reshape(n, groups, per_group, -1).transpose(1, 2, 0, 3)
        return cols.reshape(groups, per_group, -1), None
    x = _padded(x, pads) if any(map(any, pads)) else np.ascontiguousarray(x)
    if all(s == 1 for s in strides):
        return _flat_columns(x, groups, kernel, dilations)
    return _window_columns(x, groups, kernel, strides, dilations), None


def _padded(x: np.ndarray, pads: list[tuple[int, int]]) -> np.ndarray:
    """x with zeros around its spatial axes: np.pad's result, in half its time (one zeroed array
    and one copy; np.pad took 5 of the 17 s EfficientNet-Lite0's statistics take on 100 images)."""
    n, c, *spatial = x.shape
    out = np.zeros((n, c, *(size + a + b for size, (a, b) in zip(spatial, pads))), x.dtype)
    out[(slice(None), slice(None), *(slice(a, a + size) for size, (a, _) in zip(spatial, pads)))] = x
    return out


def _flat_columns(
    x: np.ndarray, groups: int, kernel: tuple[int, ...], dilations: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Stride 1: column m of sample n is flat position m of x[n]; the mask drops the wrapped ones."""
    n, c, *spatial = x.shape
    nd = len(kernel)
    steps = [math.prod(spatial[i + 1 :]) for i in range(nd)]  # elements per step along each axis
    out = [size - (k - 1) * d for size, k, d in zip(spatial, kernel, dilations)]
    length = sum((o - 1) * step for o, step in zip(out, steps)) + 1
    plane, item = math.prod(spatial), x.itemsize
    per_group = c // groups
    view = as_strided(
        x,
        (n, groups, per_group, *kernel, length),
        (c * plane * item, per_group * plane * item, plane * item)
        + tuple(d * step * item for d, step in zip(dilations, steps))
        + (item,),
        writeable=False,
    )
    order = (1, 2, *range(3, 3 + nd), 0, 3 + nd)
    cols = view.transpose(order).reshape(groups, per_group * math.prod(kernel), n * length)
    position = np.arange(length)
    keep = np.ones(length, bool)
    for o, step, size in zip(out, steps, spatial):
        keep &= position // step % size < o
    keep = np.tile(keep, n).astype(x.dtype)
    if not cols.flags.writeable:  # the reshape found a view of x: copy before zeroing
        cols = cols.copy()
    np.multiply(cols, keep, out=cols)
    return cols, keep


def _window_columns(
    x: np.ndarray,
    groups: int,
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
) -> np.ndarray:
    """Any strides: one window per output position, copied once."""
    n, c = x.shape[:2]
    nd = len(kernel)
    span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations))
    windows = sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))  # (n, c, *out_full, *span)
    step = (slice(None),) * 2 + tuple(slice(None, None, s) for s in strides)
    windows = windows[step + tuple(slice(None, None, d) for d in dilations)]  # (n, c, *out, *k)
    out = windows.shape[2 : 2 + nd]
    windows = windows.reshape(n, groups, c // groups, *out, *kernel)
    # Kernel positions follow the channel within a column; (n, *out) order the rows.
    order = (1, 2, *range(3 + nd, 3 + 2 * nd), 0, *range(3, 3 + nd))
    return windows.transpose(order).reshape(groups, (c // groups) * math.prod(kernel), n * math.prod(out))
