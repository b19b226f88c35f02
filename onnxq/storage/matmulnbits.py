"""matmulnbits: MatMul weights become com.microsoft.MatMulNBits, embedding tables GatherBlockQuantized.

Y = A @ W with W[k, n] = (q[n, k] - 2^(b-1)) * scale[n, k // block]. A linear codebook's
code c stands for (c - M) * step with M = 2^(b-1) - 1, so onnxq stores q = c + 1 and
onnxruntime's default zero point 2^(b-1) gives back c - M exactly. q is packed per
row and block, least significant bits first (two 4-bit values per byte, the first in
the low nibble). The weights stay packed in memory and the kernel unpacks them on
the fly (accuracy_level 0: exact float arithmetic). A Gather of a table's rows
becomes GatherBlockQuantized(packed table, ids, scales), packed and zero-pointed the
same way per row, which unpacks only the rows it gathers. Other weights (Conv,
widths other than 2, 4 and 8, other codebooks) fall back to `fold` (a large table
keeping its rows packed, as fold stores it), and the report says which.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.quant import layout
from onnxq.quant.codebooks import CODEBOOKS, magnitude_count
from onnxq.quant.quantize import QuantizedTensor
from onnxq.storage import fold
from onnxq.storage.base import MARK, Read, Stored

NAME = "matmulnbits"
MS_DOMAIN = "com.microsoft"
DOMAINS: tuple[str, ...] = (MS_DOMAIN,)
BITS = (2, 4, 8)
BLOCK = 128  # the largest block the format picks (_block_for)
# Without --group-size, only the weights MatMulNBits stores get blocks of their own (default_group_size):
# the kernel stores a scale per block anyway. --group-size applies to every weight, and the Conv
# weights stored as fold then pay per-block parameters too (the zoo's open_nsfw at --bits 4: 7.52x and
# cosine 0.934 per block against 7.68x and 0.984 per channel).

# Weights MatMulNBits cannot take (Conv, Gather, ...) are stored whole by fold: fold's
# opsets and byte counts hold for them, and (as bounds) for the fused ones.
WHOLE = fold
REPLACES_READERS = True  # a weight whose readers cannot be replaced falls back to fold, and is noted
min_opset = fold.min_opset
weight_problem = fold.weight_problem


def default_group_size(weight, codebook: str, bits: int) -> int | None:
    """The kernel's block (_block_for) for a 2-D weight only MatMul reads as B, at a width with
    kernels: MatMulNBits stores a float32 scale per block either way, so each block gets its own
    rather than its channel's repeated (ORT's quantizer does the same). Else per channel."""
    if supports(codebook, bits) or weight.array.ndim != 2 or weight.uses != ["MatMul input 1"]:
        return None
    block = _block_for(weight.array.shape[0])
    return layout.block_size(weight, block)


notes = fold.notes


def load_notes(weights: list[tuple[list[str], int]], packed_rows: bool) -> list[str]:
    """MatMul weights stay packed in memory (MatMulNBits reads them so); no warning."""
    return []


index_bytes = fold.index_bytes
codebook_bytes = fold.codebook_bytes


def file_bytes(q: QuantizedTensor, shape: tuple[int, ...], uses: list[str]) -> tuple[int, int]:
    """A weight only MatMul (as B) or only Gather (rows) reads, at a width with kernels: its codes
    padded to whole blocks, and a float32 scale per block (replace_consumer); else as fold."""
    if len(shape) == 2 and supports(q.codebook, q.bits) is None:
        if uses == ["MatMul input 1"] and (block := _block_of(q, shape[1], shape[0])):
            k, n = shape
            blocks = -(-k // block)
            return n * blocks * block * q.bits // 8, 4 * n * blocks
        if uses == ["Gather input 0"] and shape[1] % (8 // q.bits) == 0 and (block := _block_of(q, *shape)):
            v, d = shape
            return v * d * q.bits // 8, 4 * v * -(-d // block)
    return fold.index_bytes(q), fold.codebook_bytes(q)


def _block_of(q: QuantizedTensor, channels: int, k: int) -> int | None:
    """The kernel's block: the quantizer's blocks if it cut each channel, else _block_for; None
    when the kernels take no such block (the weight is then stored as fold)."""
    per_channel = q.groups // channels if q.groups > channels else 1
    block = k // per_channel if per_channel > 1 else _block_for(k)
    return block if block >= 16 and not block & (block - 1) else None


def _block_for(k: int) -> int:
    """The largest power of two from 16 to BLOCK dividing k (no padding), else 16."""
    return next((b for b in (128, 64, 32, 16) if b <= BLOCK and k % b == 0), 16)


def supports(codebook: str, bits: int) -> str | None:
    """Why weights quantized so cannot become MatMulNBits, or None if they can.

    Asked of --bits (an error: no MatMul could use the format) and of each width
    --target-bits picks (that weight falls back to fold).
    """
    if codebook not in CODEBOOKS or not CODEBOOKS[codebook].evenly_spaced:
        return f"MatMulNBits needs {_evenly_spaced()} levels, not {codebook}"
    if bits not in BITS:
        return f"MatMulNBits has kernels for {', '.join(map(str, BITS))} bits, not {bits}"
    return None


def _evenly_spaced() -> str:
    return " or ".join(name for name, c in CODEBOOKS.items() if c.evenly_spaced)


def replace_consumer(
    q: QuantizedTensor, weight, node: onnx.NodeProto, block: int | None, opset: int, packed_rows: bool = True
) -> tuple[list[onnx.TensorProto], onnx.NodeProto, list] | str:
    """The initializers, the node that replaces node and the functions it calls, or why not.

    A MatMul becomes MatMulNBits and a Gather of rows GatherBlockQuantized; a Gather
    GatherBlockQuantized cannot take keeps its rows packed as fold does, if it can.
    """
    why = supports(q.codebook, q.bits)
    if node.op_type == "Gather" and node.domain in ("", "ai.onnx"):
        why = why or _gather_problem(q, weight, node)
        if why:
            rows = fold.replace_consumer(q, weight, node, block, opset, packed_rows)
            return rows if rows is not None else why
        return _gather_block_quantized(q, weight, node, block)
    if why:
        return why
    if (
        node.op_type != "MatMul"
        or node.domain not in ("", "ai.onnx")
        or list(node.input).index(weight.name) != 1
    ):
        return f"{node.op_type} is not a MatMul with the weight as its second input"
    if weight.array.ndim != 2:
        return "MatMulNBits takes a 2-D weight"
    k, n = weight.array.shape
    block = block or _block_for(k)
    if block < 16 or block & (block - 1):
        return f"MatMulNBits needs a block size that is a power of two of at least 16, not {block}"
    if q.codes.shape[0] == 1 and n != 1:  # tensor granularity: codes in W's own (k, n) order
        codes = q.codes.reshape(k, n).T
    else:  # groups are rows (n), or blocks along k
        codes = q.codes.reshape(n, k)
    blocked = _blocks(q, codes, block)
    if isinstance(blocked, str):
        return blocked
    stored, scales = blocked
    packed = _pack_low_first(stored, q.bits)
    name = weight.name
    inits = [
        numpy_helper.from_array(
            packed.reshape(n, scales.shape[1], block * q.bits // 8), f"{name}.onnxq.indices"
        ),
        numpy_helper.from_array(scales.ravel(), f"{name}.onnxq.scale"),
    ]
    new = helper.make_node(
        "MatMulNBits",
        [node.input[0], inits[0].name, inits[1].name],
        list(node.output),
        name=node.name or None,
        domain=MS_DOMAIN,
        K=k,
        N=n,
        bits=q.bits,
        block_size=block,
        accuracy_level=0,
    )
    return inits, new, []


def _gather_problem(q: QuantizedTensor, weight, node: onnx.NodeProto) -> str | None:
    if list(node.input).index(weight.name) != 0 or any(a.name == "axis" and a.i != 0 for a in node.attribute):
        return "GatherBlockQuantized gathers rows (axis 0) of its first input"
    if weight.array.ndim != 2:
        return "GatherBlockQuantized takes a 2-D table"
    per_byte = 8 // q.bits
    if weight.array.shape[1] % per_byte:
        return f"GatherBlockQuantized at {q.bits} bits needs rows of a multiple of {per_byte} values"
    return None


def _gather_block_quantized(q: QuantizedTensor, weight, node: onnx.NodeProto, block: int | None):
    """Gather(table, ids) -> GatherBlockQuantized(packed table, ids, scales), same zero-point trick."""
    v, d = weight.array.shape
    block = block or _block_for(d)
    if block < 16 or block & (block - 1):
        return f"GatherBlockQuantized needs a block size that is a power of two of at least 16, not {block}"
    blocked = _blocks(q, q.codes.reshape(v, d), block)  # groups are rows, or blocks of rows
    if isinstance(blocked, str):
        return blocked
    stored, scales = blocked
    name = weight.name
    inits = [
        numpy_helper.from_array(_pack_low_first(stored[:, :d], q.bits), f"{name}.onnxq.indices"),
        numpy_helper.from_array(scales, f"{name}.onnxq.scale"),
    ]
    new = helper.make_node(
        "GatherBlockQuantized",
        [inits[0].name, node.input[1], inits[1].name],
        list(node.output),
        name=node.name or None,
        domain=MS_DOMAIN,
        gather_axis=0,
        quantize_axis=1,
        block_size=block,
        bits=q.bits,
    )
    return inits, new, []


def _blocks(q: QuantizedTensor, codes: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray] | str:
    """Codes (rows, k) -> stored values (rows, blocks * block) and float32 scales (rows, blocks).

    A linear code c stands for (c - M) * step; stored as c + 1, the kernels' default
    zero point 2^(b-1) = M + 1 gives c - M back. Padding stores the zero point (0).
    """
    rows, k = codes.shape
    m = magnitude_count(q.bits)
    steps = q.level_table()[:, m + 1].astype(np.float32)  # level of code M + 1 = one step, per group
    steps = np.full((rows, 1), steps[0], np.float32) if steps.size == 1 else steps.reshape(rows, -1)
    blocks = -(-k // block)
    if steps.shape[1] == 1:
        scales = np.repeat(steps, blocks, axis=1)
    elif steps.shape[1] * (k // steps.shape[1]) == k and k // steps.shape[1] == block:
        scales = steps
    else:
        return f"per-block levels of {k // steps.shape[1]} values do not match the kernel's blocks of {block}"
    stored = np.full((rows, blocks * block), 1 << (q.bits - 1), dtype=np.uint8)
    stored[:, :k] = codes  # uint8 throughout: an int64 copy took 8 bytes per weight, twice
    stored[:, :k] += 1  # codes stop at 2^b - 2, so c + 1 fits
    return stored, scales.astype(np.float32)


def _pack_low_first(stored: np.ndarray, bits: int) -> np.ndarray:
    """(rows, n) values of b bits -> (rows, n * b / 8) bytes, the first value in the low bits."""
    per_byte = 8 // bits
    grouped = stored.reshape(stored.shape[0], -1, per_byte)
    packed = np.zeros(grouped.shape[:2], dtype=np.uint8)
    for i in range(per_byte):
        packed |= (grouped[:, :, i] << (bits * i)).astype(np.uint8)
    return packed


def _low_first(packed: np.ndarray, bits: int, rows: int) -> np.ndarray:
    """(rows, bytes) packed least significant bits first -> (rows, values) uint8."""
    packed = packed.reshape(rows, -1)
    per_byte = 8 // bits
    return np.stack([(packed >> (bits * j)) & ((1 << bits) - 1) for j in range(per_byte)], axis=2).reshape(
        rows, -1
    )


def unfuse(model: onnx.ModelProto, graph: onnx.GraphProto, evaluate) -> int:
    """For decompress: MatMulNBits / GatherBlockQuantized nodes onnxq wrote -> MatMul / Gather of the
    float weight."""
    inits = {t.name: t for t in graph.initializer}
    count = 0
    for i, node in enumerate(list(graph.node)):
        if node.domain != MS_DOMAIN or node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        packed_name = node.input[1] if node.op_type == "MatMulNBits" else node.input[0]
        if MARK not in packed_name:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits, block = attrs["bits"], attrs["block_size"]
        packed = numpy_helper.to_array(inits[packed_name])
        name = packed_name.removesuffix(".onnxq.indices")
        if node.op_type == "MatMulNBits":
            k, n = attrs["K"], attrs["N"]
            scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, -1)
            q = _low_first(packed, bits, n)[:, :k]
            w = (q.astype(np.float32) - (1 << (bits - 1))) * np.repeat(scales, block, axis=1)[:, :k]
            weight, new = np.ascontiguousarray(w.T), helper.make_node("MatMul", [node.input[0], name], [])
        else:
            v = packed.shape[0]
            scales = numpy_helper.to_array(inits[node.input[2]]).reshape(v, -1)
            q = _low_first(packed, bits, v)
            d = q.shape[1]
            weight = (q.astype(np.float32) - (1 << (bits - 1))) * np.repeat(scales, block, axis=1)[:, :d]
            new = helper.make_node("Gather", [name, node.input[1]], [], axis=0)
        new.output.extend(node.output)
        if node.name:
            new.name = node.name
        graph.initializer.append(numpy_helper.from_array(weight, name))
        graph.node.insert(i, new)
        graph.node.remove(node)
        count += 1
    return count


def stored(model: onnx.ModelProto, graph: onnx.GraphProto, read: Read) -> list[Stored]:
    """Every MatMulNBits and GatherBlockQuantized that reads onnxq's packed weights (the weights
    stored as fold are fold's), with the bytes they hold: codes padded to whole blocks, and a
    float32 scale per block."""
    inits = {t.name: t for t in graph.initializer}
    out = []
    for node in graph.node:
        if node.domain != MS_DOMAIN or node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        packed_name = node.input[1] if node.op_type == "MatMulNBits" else node.input[0]
        if MARK not in packed_name or packed_name not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits = int(attrs["bits"])
        packed = inits[packed_name]
        if node.op_type == "MatMulNBits":
            shape = (int(attrs["K"]), int(attrs["N"]))
        else:
            shape = (int(packed.dims[0]), int(packed.dims[1]) * 8 // bits)
        groups = int(np.prod(inits[node.input[2]].dims))
        name = packed_name.removesuffix(".onnxq.indices")
        out.append(
            Stored(name, shape, NAME, _evenly_spaced(), bits, groups, int(np.prod(packed.dims)), 4 * groups)
        )
    return out
