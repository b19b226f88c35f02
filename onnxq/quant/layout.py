"""A weight's values between its own shape and the (groups, n) rows that quantize, the layer
statistics and the formats work on: rows = moveaxis(w, axis, 0).reshape(groups, n), and back.

One output channel per row (channel), one row in all (tensor), or blocks of group_size weights
within each channel, channel-major (block).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # quant/ imports no other stage: a Weight is only its array and axis here
    from onnxq.graph.select import Weight


def channels_first(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """The shape with the output-channel axis moved to the front."""
    return (shape[axis], *shape[:axis], *shape[axis + 1 :])


def group_rows(weight: Weight, granularity: str, group_size: int | None = None) -> np.ndarray:
    """The weight as (groups, n): one row per output channel, or one row in all.

    With group_size G, each output channel's K weights (the input dimensions,
    flattened) are cut into K / G rows of G, so every block of G has its own
    parameters; G must divide K (see block_size).
    """
    a = weight.array.astype(np.float32, copy=False)
    if granularity == "tensor" or a.ndim < 2:
        return a.reshape(1, -1)
    return channels_moved(a, weight.axis).reshape(rows_shape(weight, granularity, group_size))


def rows_shape(weight: Weight, granularity: str, group_size: int | None = None) -> tuple[int, int]:
    """(groups, n): the shape of group_rows(weight, ...), from the weight's shape alone."""
    a = weight.array
    if granularity == "tensor" or a.ndim < 2:
        return 1, int(a.size)
    if group_size and block_size(weight, group_size) == group_size:
        return int(a.size) // group_size, group_size
    channels = int(a.shape[weight.axis])
    return channels, int(a.size) // channels


def block_size(weight: Weight, group_size: int) -> int | None:
    """group_size if it splits each output channel of the weight evenly into several blocks, else None."""
    a = weight.array
    if a.ndim < 2:
        return None
    k = a.size // a.shape[weight.axis]
    return group_size if k % group_size == 0 and k > group_size else None


def float_rows(weight: Weight) -> np.ndarray:
    """The weight as (output channels, K), the layout of its layer's input statistics."""
    a = weight.array
    if a.ndim < 2:
        return a.reshape(1, -1)
    return np.moveaxis(a, weight.axis, 0).reshape(a.shape[weight.axis], -1)


TILE = (8, 1024)  # rows x columns of a 2-D weight that channels_moved transposes at a time


def channels_moved(a: np.ndarray, axis: int) -> np.ndarray:
    """np.moveaxis(a, axis, 0); for a 2-D weight with axis 1 (a MatMul's (K, N)), a contiguous copy,
    transposed a tile at a time. The quantizer reads its rows many times over, and every pass over
    the transposed view (or numpy's copy of it, which reads across rows) took 3-5x as long: 30 ms
    against 6 to copy a 4096 x 1024 float32 weight."""
    if axis == 0:
        return a
    if a.ndim != 2:
        return np.moveaxis(a, axis, 0)
    out = np.empty(a.shape[::-1], dtype=a.dtype)
    rows, cols = TILE
    for j in range(0, a.shape[1], cols):
        for i in range(0, a.shape[0], rows):
            out[j : j + cols, i : i + rows] = a[i : i + rows, j : j + cols].T
    return out


def to_rows(weight: Weight, values: np.ndarray) -> np.ndarray:
    """Values in a QuantizedTensor's layout (channel rows, or one row in the original order) as (O, K)."""
    a = weight.array
    if a.ndim < 2:
        return values.reshape(1, -1)
    if values.shape[0] == 1:
        return np.moveaxis(values.reshape(a.shape), weight.axis, 0).reshape(a.shape[weight.axis], -1)
    return values.reshape(a.shape[weight.axis], -1)


def from_rows(weight: Weight, rows: np.ndarray, layout: tuple[int, ...]) -> np.ndarray:
    """Inverse of to_rows, for a QuantizedTensor of the given codes shape."""
    if weight.array.ndim < 2 or layout[0] != 1:
        return rows.reshape(layout)
    return to_weight(weight, rows).reshape(layout)


def to_weight(weight: Weight, rows: np.ndarray) -> np.ndarray:
    """(O, K) rows back in the weight's own shape."""
    if weight.array.ndim < 2:
        return rows.reshape(weight.array.shape)
    return np.moveaxis(rows.reshape(channels_first(weight.array.shape, weight.axis)), 0, weight.axis)


def weight_array(weight: Weight, rows: np.ndarray) -> np.ndarray:
    """to_weight as a contiguous array, which is what a session takes: a 2-D weight's rows
    transposed a tile at a time (channels_moved), 8 ms against 30 for numpy's copy of the view
    (4096 x 1024 float32)."""
    if weight.array.ndim == 2 and weight.axis == 1:
        return channels_moved(rows.reshape(weight.array.shape[::-1]), 1)
    return np.ascontiguousarray(to_weight(weight, rows))
