"""qdq: evenly spaced levels as signed integers k, read by one standard DequantizeLinear.

w = DequantizeLinear(k, step, axis) = k * step, with k in -M..M (M = 2^(b-1) - 1;
one bit is k = +-1) stored as INT2 (1-2 bits, opset 25), INT4 (3-4 bits, opset 21)
or INT8 (5-8 bits), and step = g_1 of the linear codebook's level table: one
float32 per tensor, per output channel (axis) or per block of --group-size along
the weight's single input axis (block_size, opset 21). The zero point is omitted
(0). No local functions: any runtime with DequantizeLinear reads it, and
onnxruntime keeps the integers in memory (it never constant-folds
DequantizeLinear; a MatMul fed by it becomes MatMulNBits).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.errors import OnnxqError
from onnxq.quant.codebooks import CODEBOOKS, magnitude_count
from onnxq.quant.layout import channels_first
from onnxq.quant.quantize import QuantizedTensor
from onnxq.storage.base import MARK, Encoded, Piece, Read, Stored, WholeWeights

NAME = "qdq"
CHANNEL_FIRST = False  # the weight keeps its own layout; DequantizeLinear's axis names the channel
REPLACES_READERS = False  # every weight is stored whole
WHOLE: WholeWeights | None = None  # qdq stores whole weights itself
DOMAINS: tuple[str, ...] = ()  # DequantizeLinear is a standard op
BATCH_WEIGHTS = 1  # one DequantizeLinear per weight

# bits -> (element type, numpy dtype, bits per stored integer, opset DequantizeLinear needs for it)
_INT2 = (TensorProto.INT2, ml_dtypes.int2, 2, 25)
_INT4 = (TensorProto.INT4, ml_dtypes.int4, 4, 21)
_INT8 = (TensorProto.INT8, np.int8, 8, 10)
PER_AXIS_OPSET = 13
BLOCKED_OPSET = 21


def _element(bits: int):
    return _INT2 if bits <= 2 else _INT4 if bits <= 4 else _INT8


def stored_bits(bits: int) -> int:
    """Bits each weight takes on disk at this width (the next native integer type up)."""
    return _element(bits)[2]


def supports(codebook: str, bits: int) -> str | None:
    """None if this format stores the codebook at this width, else why not: levels k * step are
    all DequantizeLinear can express."""
    evenly = [name for name, c in CODEBOOKS.items() if c.evenly_spaced]
    if codebook in evenly:
        return None
    return f"--format qdq stores only --codebook {' or '.join(evenly)} levels (k * step, read by DequantizeLinear)"


def min_opset(bits: int, granularity: str, group_size: int | None) -> int:
    """The default-domain opset DequantizeLinear needs for this width and granularity."""
    need = _element(bits)[3]
    if granularity == "channel":
        need = max(need, BLOCKED_OPSET if group_size else PER_AXIS_OPSET)
    return need


def load_notes(weights: list[tuple[list[str], int]], packed_rows: bool) -> list[str]:
    """Loading keeps the stored weights as they are: nothing to warn of."""
    return []


def notes(widths: set[int]) -> list[str]:
    """What the report should say about how these widths are stored."""
    out = []
    for bits in sorted(widths):
        element, _, stored, _ = _element(bits)
        if stored != bits:
            name = TensorProto.DataType.Name(element)
            out.append(f"{bits}-bit linear levels stored as {name} ({stored} bits per weight on disk)")
    if widths & {1, 2}:
        # Seen with onnxruntime 1.32 (tests/check/test_decompress.py): the weights decode right,
        # but its DequantizeLinear + MatMul -> MatMulNBits rewrite gets INT2 wrong.
        out.append(
            "INT2 weights feeding MatMul: onnxruntime 1.32 rewrites DequantizeLinear + MatMul into "
            "MatMulNBits and computes wrong outputs; run with the session option "
            "session.disable_quant_qdq=1, or use 3 bits or more"
        )
    return out


def index_bytes(q: QuantizedTensor) -> int:
    return -(-q.codes.size * stored_bits(q.bits) // 8)


def codebook_bytes(q: QuantizedTensor) -> int:
    return 4 * q.groups  # one float32 step per group


def file_bytes(q: QuantizedTensor, shape: tuple[int, ...], uses: list[str]) -> tuple[int, int]:
    """index_bytes and codebook_bytes: the weight is stored whole, whatever reads it."""
    return index_bytes(q), codebook_bytes(q)


def block_axis(shape: tuple[int, ...], axis: int) -> int | None:
    """The weight's one input axis (all others but the channel axis are 1), or None.

    Blocks of the flattened input dimensions map to DequantizeLinear's block_size
    only when that flattening is a single axis: 2-D Gemm/MatMul weights, Conv with
    a 1x1 kernel.
    """
    inputs = [d for d in range(len(shape)) if d != axis and shape[d] > 1]
    return inputs[0] if len(inputs) == 1 else None


def weight_problem(shape: tuple[int, ...], axis: int, group_size: int) -> str | None:
    """Why this weight's blocks of group_size cannot be stored, or None."""
    if block_axis(shape, axis) is None:
        dims = "x".join(map(str, shape))
        return (
            f"blocks of {group_size} run across several input axes of a {dims} weight, which "
            "DequantizeLinear's block_size cannot express (only 2-D weights and 1x1 convolutions)"
        )
    return None


def default_group_size(weight, codebook: str, bits: int) -> int | None:
    """Per channel: DequantizeLinear's blocks cost bytes that only --group-size asks for."""
    return None


def batch_key(q: QuantizedTensor) -> None:
    """None: a DequantizeLinear per weight."""
    return


def call_name(q: QuantizedTensor) -> str:
    return "DequantizeLinear"


def encode(pieces: list[Piece], opset: int, name: str) -> Encoded:
    """Each piece's DequantizeLinear and its two initializers (see encode_weight); no functions."""
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for p in pieces:
        tensors, node = encode_weight(p.q, p.name, p.output, p.shape, p.axis)
        inits += tensors
        nodes.append(node)
    return inits, nodes, []


def replace_consumer(q, weight, node, block, opset, packed_rows):
    """None: qdq stores every weight whole."""
    return


def unfuse(model: onnx.ModelProto, graph: onnx.GraphProto, evaluate) -> int:
    """0: qdq fuses nothing; decompress evaluates its DequantizeLinear nodes."""
    return 0


def _levels(q: QuantizedTensor) -> tuple[np.ndarray, np.ndarray]:
    """k per code (the spare code decodes to 0, as in fold) and the step per group."""
    m = magnitude_count(q.bits)
    table = q.level_table()
    if q.bits == 1:
        return np.array([-1, 1], np.int8), table[:, 1]
    k = np.zeros(1 << q.bits, np.int8)
    k[: 2 * m + 1] = np.arange(-m, m + 1)
    return k, table[:, m + 1]


def encode_weight(
    q: QuantizedTensor, name: str, output: str, shape: tuple[int, ...], axis: int = 0
) -> tuple[list[onnx.TensorProto], onnx.NodeProto]:
    """Initializers named after weight `name`, and the DequantizeLinear that builds `output`.

    shape is the weight's own shape and axis its output-channel axis; q's rows are
    the whole tensor, one channel each, or blocks of one channel (channel-major).
    """
    element, dtype, _, _ = _element(q.bits)
    k, step = _levels(q)
    values = k[q.codes]
    attrs: dict[str, int] = {}
    if q.groups == 1:
        codes = values.reshape(shape)
        scale = step.reshape(())
    else:
        codes = np.moveaxis(values.reshape(channels_first(shape, axis)), 0, axis)
        attrs["axis"] = axis
        if q.groups == shape[axis]:
            scale = step
        else:
            blocks = block_axis(shape, axis)
            if blocks is None:
                raise OnnxqError(f"weight {name!r}: {weight_problem(shape, axis, q.codes.shape[1])}")
            per_channel = step.reshape(shape[axis], -1)
            scale_shape = [1] * len(shape)
            scale_shape[axis], scale_shape[blocks] = per_channel.shape
            scale = (per_channel if axis < blocks else per_channel.T).reshape(scale_shape)
            attrs["axis"] = blocks
            attrs["block_size"] = int(q.codes.shape[1])
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(codes).astype(dtype), f"{name}.onnxq.indices"),
        numpy_helper.from_array(np.ascontiguousarray(scale, np.float32), f"{name}.onnxq.scale"),
    ]
    assert inits[0].data_type == element
    node = helper.make_node("DequantizeLinear", [t.name for t in inits], [output], name=output)
    node.attribute.extend(helper.make_attribute(key, v) for key, v in attrs.items())
    return inits, node


def stored(model: onnx.ModelProto, graph: onnx.GraphProto, read: Read) -> list[Stored]:
    """Every weight a DequantizeLinear of onnxq's integers rebuilds. The width is the least one,
    within the integer type's, whose levels -M..M hold every stored integer: the type alone
    says only INT8 for 5 to 8 bits. (1 and 2 bits, both -1..1, tell apart by whether 0 occurs.)"""
    inits = {t.name: t for t in graph.initializer}
    out = []
    for node in graph.node:
        codes = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" and node.domain == "" else None
        if codes is None or MARK not in codes.name or node.input[1] not in inits:
            continue
        n = int(np.prod(codes.dims))
        groups = int(np.prod(inits[node.input[1]].dims))
        bits = _width(np.asarray(read(codes)), codes.data_type)
        name = codes.name.removesuffix(".onnxq.indices")
        shape = tuple(int(d) for d in codes.dims)
        out.append(
            Stored(name, shape, NAME, _linear(), bits, groups, -(-n * stored_bits(bits) // 8), 4 * groups)
        )
    return out


def _width(k: np.ndarray, element: int) -> int:
    top = int(np.abs(k.astype(np.int16)).max()) if k.size else 0
    low = next(b for b in range(1, 9) if _element(b)[0] == element)
    if top <= 1:
        return max(low, 2 if top == 0 or (k == 0).any() else 1)
    return max(low, int(np.ceil(np.log2(top + 1))) + 1)


def _linear() -> str:
    return " or ".join(name for name, c in CODEBOOKS.items() if c.evenly_spaced)
