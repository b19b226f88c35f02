"""Tiny seeded models for the hostile corpus, built in code, and ways to damage them."""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 18
IN, HID, OUT = 32, 32, 8


def _weights(seed: int, *shape: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def mlp(layers: int = 2, width: int = HID, opset: int = 13, ir_version: int = 8) -> onnx.ModelProto:
    """x [1, IN] -> MatMul W0 -> Relu -> ... -> MatMul -> y [1, OUT]: every weight compressible."""
    nodes, inits, prev, size = [], [], "x", IN
    for i in range(layers):
        last = i == layers - 1
        cols = OUT if last else width
        inits.append(numpy_helper.from_array(_weights(SEED + i, size, cols), f"W{i}"))
        out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [out], name=f"matmul{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
        size = cols
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def conv() -> onnx.ModelProto:
    """x [1, 4, 8, 8] -> Conv W [16, 4, 3, 3] (+ bias) -> y."""
    w = numpy_helper.from_array(_weights(SEED, 16, 4, 3, 3), "W")
    b = numpy_helper.from_array(_weights(SEED + 1, 16), "B")
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def typed_input(elem_type: int, cast_to: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """An input of another type (bool, int64, ...) cast to float before the MLP's first MatMul."""
    model = mlp()
    graph = model.graph
    graph.input[0].type.tensor_type.elem_type = elem_type
    graph.node[0].input[0] = "xf"
    graph.node.insert(0, helper.make_node("Cast", ["x"], ["xf"], to=cast_to))
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def save_external(model: onnx.ModelProto, path: Path, location: str = "model.data") -> Path:
    """The model with every weight in one external data file beside it."""
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


def set_external(tensor: onnx.TensorProto, **entries: str) -> None:
    """Rewrite (or add) the tensor's external_data entries: location, offset, length..."""
    for key, value in entries.items():
        found = [e for e in tensor.external_data if e.key == key]
        if found:
            found[0].value = value
        else:
            tensor.external_data.add(key=key, value=value)


def external_model(folder: Path, **entries: str) -> str:
    """m.onnx in folder with its first weight in m.data, whose references entries then rewrite."""
    model = mlp()
    save_external(model, folder / "m.onnx", "m.data")
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    set_external(model.graph.initializer[0], **entries)
    save(model, folder / "m.onnx")
    return "m.onnx"


def bytes_npz(path: Path, members: dict[str, bytes], compress: bool = False) -> Path:
    """A zip of raw members, as numpy.savez writes it (or anything else)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def npy_header(shape: tuple[int, ...], descr: str = "<f4", version: int = 1) -> bytes:
    """An .npy header declaring shape and dtype; the data that follows is the caller's."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    pre = 10 if version == 1 else 12
    pad = -(pre + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    size = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text


def deflate_bomb(path: Path, name: str, shape: tuple[int, ...], real_bytes: int) -> Path:
    """An npz whose member declares shape (float32) and really inflates to real_bytes of zeros:
    deflated, a GiB of zeros is about a MiB."""
    header = npy_header(shape)
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)  # level 1: a GiB of zeros in a second
    chunks, crc, left = [comp.compress(header)], zlib.crc32(header), real_bytes
    block = bytes(1 << 20)
    while left > 0:
        piece = block[: min(left, len(block))]
        chunks.append(comp.compress(piece))
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    chunks.append(comp.flush())
    data = b"".join(chunks)
    info = zipfile.ZipInfo(f"{name}.npy")
    info.compress_type = zipfile.ZIP_DEFLATED
    size = len(header) + real_bytes
    with zipfile.ZipFile(path, "w") as z:
        # write the deflated stream as-is: zipfile's raw path takes CRC and sizes from us
        info.CRC, info.compress_size, info.file_size = crc, len(data), size
        _write_raw(z, info, data)
    return path


def _write_raw(z: zipfile.ZipFile, info: zipfile.ZipInfo, data: bytes) -> None:
    """Write an already-deflated member (zipfile has no public call for it)."""
    info.header_offset = z.fp.tell()
    info._compresslevel = None
    zip64 = info.file_size > zipfile.ZIP64_LIMIT or info.compress_size > zipfile.ZIP64_LIMIT
    z.fp.write(info.FileHeader(zip64))
    z.fp.write(data)
    z.filelist.append(info)
    z.NameToInfo[info.filename] = info
    z.start_dir = z.fp.tell()
    z._didModify = True
