"""matmulnbits: a MatMul whose constant B has linear levels becomes com.microsoft.MatMulNBits.

Y = A @ W with W[k, n] = (q[n, k] - 2^(b-1)) * scale[n, k // block]. A linear codebook's
code c stands for (c - M) * step with M = 2^(b-1) - 1, so onnxq stores q = c + 1 and
onnxruntime's default zero point 2^(b-1) gives back c - M exactly. q is packed per
row and block, least significant bits first (two 4-bit values per byte, the first in
the low nibble). The weights stay packed in memory and the kernel unpacks them on
the fly (accuracy_level 0: exact float arithmetic). Other weights (Conv, Gather,
widths other than 2, 4 and 8, other codebooks) fall back to `fold`, and the report
says which.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.codebooks import magnitude_count
from onnxq.quantize import QuantizedTensor
from onnxq.storage import fold

NAME = "matmulnbits"
SUMMARY = "MatMul weights as com.microsoft.MatMulNBits (linear, 2/4/8 bits); other weights as fold"
MS_DOMAIN = "com.microsoft"
BITS = (2, 4, 8)
BLOCK = 128  # per-channel scales are repeated over blocks of up to this many inputs

# The fallback for weights MatMulNBits cannot take (Conv, Gather, ...) is fold, hooks and all.
CHANNEL_FIRST = fold.CHANNEL_FIRST
decoders = fold.decoders
encode = fold.encode
min_opset = fold.min_opset
weight_problem = fold.weight_problem
notes = fold.notes
index_bytes = fold.index_bytes
codebook_bytes = fold.codebook_bytes


def _block_for(k: int) -> int:
    """The largest power of two from 16 to BLOCK dividing k (no padding), else 16."""
    return next((b for b in (128, 64, 32, 16) if b <= BLOCK and k % b == 0), 16)


def supports(codebook: str, bits: int) -> str | None:
    """Why weights quantized so cannot become MatMulNBits, or None if they can.

    Asked of --bits (an error: no MatMul could use the format) and of each width
    --target-bits picks (that weight falls back to fold).
    """
    if codebook != "linear":
        return f"MatMulNBits needs linear levels, not {codebook}"
    if bits not in BITS:
        return f"MatMulNBits has kernels for {', '.join(map(str, BITS))} bits, not {bits}"
    return None


def replace_consumer(
    q: QuantizedTensor, weight, node: onnx.NodeProto, block: int | None
) -> tuple[list[onnx.TensorProto], onnx.NodeProto] | str:
    """The initializers and the MatMulNBits node that replace node, or why not."""
    why = supports(q.codebook, q.bits)
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
    m = magnitude_count(q.bits)
    table = q.level_table()
    steps = table[:, m + 1].astype(np.float32)  # level of code M + 1 = one step, per group
    if q.codes.shape[0] == 1 and n != 1:  # tensor granularity: one step, codes in W's own (k, n) order
        codes = q.codes.astype(np.int64).reshape(k, n).T
        steps = np.full((n, 1), steps[0], np.float32)
    else:  # groups are rows (n), or blocks along k
        codes = q.codes.astype(np.int64).reshape(n, k)
        steps = steps.reshape(n, -1)
    blocks = -(-k // block)
    if steps.shape[1] == 1:
        scales = np.repeat(steps, blocks, axis=1)
    elif steps.shape[1] * (k // steps.shape[1]) == k and k // steps.shape[1] == block:
        scales = steps
    else:
        return f"per-block levels of {k // steps.shape[1]} inputs do not match MatMulNBits blocks of {block}"
    stored = np.full((n, blocks * block), 1 << (q.bits - 1), dtype=np.uint8)  # padding decodes to 0
    stored[:, :k] = codes + 1
    per_byte = 8 // q.bits
    grouped = stored.reshape(n, -1, per_byte)
    packed = np.zeros(grouped.shape[:2], dtype=np.uint8)
    for i in range(per_byte):
        packed |= (grouped[:, :, i] << (q.bits * i)).astype(np.uint8)
    name = weight.name
    inits = [
        numpy_helper.from_array(packed.reshape(n, blocks, block * q.bits // 8), f"{name}.onnxq.indices"),
        numpy_helper.from_array(scales.astype(np.float32).ravel(), f"{name}.onnxq.scale"),
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
    return inits, new
