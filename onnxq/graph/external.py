"""External data read as it is needed: a large tensor is memory-mapped from its file when its
values are first read, not loaded with the graph.

read_model leaves the external tensors of at least LAZY_BYTES in their files when asked to
(io.read_model(lazy=True)); their paths are checked there. A weight is then a read-only map of
its bytes (mapped_array), which the quantizer reads a part at a time and then drops
(released), and every other such tensor is loaded before the model is written (load_remaining).
With data-driven steps the weights stay mapped throughout: their sessions read them in place.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from onnxq.errors import ModelLoadError
from onnxq.graph.select import iter_graphs

LAZY_BYTES = 1 << 20  # external tensors this large stay in their file until they are read


def all_tensors(model: onnx.ModelProto):
    """Every tensor of the model: initializers and Constant values, in every graph."""
    for graph in iter_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t


def info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def stored_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a tensor's values, from its shape and type."""
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    return int(np.prod([int(d) for d in tensor.dims], dtype=np.int64)) * dtype.itemsize


def mapped_array(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """A read-only memory map of the tensor's values in its external file."""
    entries = info(tensor)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    shape = tuple(int(d) for d in tensor.dims)
    expected = stored_bytes(tensor)
    path = folder / entries["location"]
    offset = int(entries.get("offset", 0) or 0)
    length = int(entries.get("length", expected) or expected)
    size = path.stat().st_size
    if length != expected or offset < 0 or offset + length > size:
        raise ModelLoadError(
            f"external data of tensor {tensor.name!r} holds {length} bytes at offset {offset} of "
            f"{entries['location']} ({size} bytes), but its shape {list(shape)} needs {expected}; "
            "re-export the model"
        )
    if expected == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def reader(folder: Path) -> Callable[[onnx.TensorProto], np.ndarray]:
    """How find_weights reads a tensor's values: a map of its file when it is still there."""

    def read(tensor: onnx.TensorProto) -> np.ndarray:
        return mapped_array(tensor, folder) if uses_external_data(tensor) else numpy_helper.to_array(tensor)

    return read


def evict(*arrays: np.ndarray) -> None:
    """Drop the pages that reading these maps brought into this process: the page cache keeps the
    file, and the next read maps them again (a minor fault). A weight that data-driven steps read
    in several passes then counts in the process's memory while a pass reads it, not from its
    first read to the end. Arrays that are not maps are left alone."""
    for array in arrays:
        held = getattr(array, "_mmap", None)
        if held is not None and not held.closed:
            held.madvise(mmap.MADV_DONTNEED)


def released(array: np.ndarray) -> np.ndarray:
    """A stand-in that keeps the array's shape and dtype but none of its memory (all zeros, read
    only): for a weight whose values were quantized and are no longer needed."""
    return np.broadcast_to(np.zeros((), array.dtype), array.shape)


def is_released(array: np.ndarray) -> bool:
    """Whether the array is a released() stand-in rather than a weight's values."""
    return array.size > 1 and not any(array.strides) and not array.flags.writeable


def load_remaining(model: onnx.ModelProto, folder: Path, keep: Collection[str] = ()) -> None:
    """Load the values of every tensor still in its external file into the model, but those
    named in keep."""
    for tensor in all_tensors(model):
        if uses_external_data(tensor) and tensor.name not in keep:
            load_external_data_for_tensor(tensor, str(folder))
