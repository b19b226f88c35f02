"""toy: a storage format written for the registry test, in one file.

One byte per code and a float32 table of levels per group, decoded by standard ops:
w = Reshape(GatherElements(levels, Cast(codes)), shape). Nothing in onnxq names it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.quant.quantize import QuantizedTensor
from onnxq.storage.base import Encoded, Piece, Read, Stored, WholeWeights

NAME = "toy"
CHANNEL_FIRST = True
REPLACES_READERS = False
WHOLE: WholeWeights | None = None
DOMAINS: tuple[str, ...] = ()
BATCH_WEIGHTS = 1


def supports(codebook: str, bits: int) -> str | None:
    return None


def min_opset(bits: int, granularity: str, group_size: int | None) -> int:
    return 11  # GatherElements


def weight_problem(shape: tuple[int, ...], axis: int, group_size: int) -> str | None:
    return None


def default_group_size(weight, codebook: str, bits: int) -> int | None:
    return None  # a codebook per channel unless --group-size says otherwise


def load_notes(weights: list[tuple[list[str], int]], packed_rows: bool) -> list[str]:
    return []


def notes(widths: set[int]) -> list[str]:
    return [f"toy stores {sorted(widths)} bits as a byte per weight"]


def index_bytes(q: QuantizedTensor) -> int:
    return q.codes.size


def codebook_bytes(q: QuantizedTensor) -> int:
    return 4 * q.groups << q.bits


def file_bytes(q: QuantizedTensor, shape: tuple[int, ...], uses: list[str]) -> tuple[int, int]:
    return index_bytes(q), codebook_bytes(q)


def batch_key(q: QuantizedTensor) -> None:
    return None


def call_name(q: QuantizedTensor) -> str:
    return "Reshape"


def encode(pieces: list[Piece], opset: int, name: str) -> Encoded:
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for p in pieces:
        stem = f"{p.name}.onnxq"
        inits += [
            numpy_helper.from_array(p.q.codes.astype(np.uint8), f"{stem}.indices"),
            numpy_helper.from_array(p.q.level_table().astype(np.float32), f"{stem}.codebook"),
            numpy_helper.from_array(np.array(p.shape, np.int64), f"{stem}.shape"),
        ]
        nodes += [
            helper.make_node("Cast", [f"{stem}.indices"], [f"{stem}.codes"], to=TensorProto.INT64),
            helper.make_node(
                "GatherElements", [f"{stem}.codebook", f"{stem}.codes"], [f"{stem}.rows"], axis=1
            ),
            helper.make_node("Reshape", [f"{stem}.rows", f"{stem}.shape"], [p.output]),
        ]
    return inits, nodes, []


def replace_consumer(q, weight, node, block, opset, packed_rows):
    return None


def unfuse(model: onnx.ModelProto, graph: onnx.GraphProto, evaluate) -> int:
    return 0


def stored(model: onnx.ModelProto, graph: onnx.GraphProto, read: Read) -> list[Stored]:
    """Every weight a GatherElements of a toy level table rebuilds."""
    inits = {t.name: t for t in graph.initializer}
    out = []
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "GatherElements" else None
        if table is None or not table.name.endswith(".onnxq.codebook"):
            continue
        stem = table.name.removesuffix(".codebook")
        groups, levels = (int(d) for d in table.dims)
        shape = tuple(int(d) for d in read(inits[f"{stem}.shape"]))
        n = int(np.prod(shape))
        out.append(
            Stored(
                stem.removesuffix(".onnxq"),
                shape,
                NAME,
                "levels",
                levels.bit_length() - 1,
                groups,
                n,
                4 * groups * levels,
            )
        )
    return out
