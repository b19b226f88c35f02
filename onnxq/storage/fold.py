"""fold: packed b-bit codes that a standard-op subgraph rebuilds at session creation.

w = Reshape(GatherElements(levels(params), unpack(indices)), shape), where
levels[g, k] = sign_k * exp(slope_k * ln x0_g + offset_k + ln s_g) * [g is live].
The decoder is one model-local function per (codebook, bits); each weight adds
two initializers (indices, codebook) and one call node whose attributes carry the
shape and the parameter ranges. Every op in it is constant-foldable,
so onnxruntime turns each call into a float initializer when the session is
created and inference runs at float speed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.packing import field_widths, pack_bits
from onnxq.quantize import SPLIT, QuantizedTensor

DOMAIN = "onnxq"
NAME = "fold"
SUMMARY = "packed b-bit indices, rebuilt by standard ops that onnxruntime folds into constants"


def function_name(codebook: str, bits: int) -> str:
    return f"Decode_{codebook}_{bits}"


def _ref(name: str) -> onnx.NodeProto:
    """A Constant whose value is the call's tensor attribute of the same name.

    Tensor attributes (not value_ints/value_floats) keep this valid from opset 11.
    """
    node = helper.make_node("Constant", [], [name])
    node.attribute.append(
        onnx.AttributeProto(name="value", ref_attr_name=name, type=onnx.AttributeProto.TENSOR)
    )
    return node


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def decoder(q: QuantizedTensor, opset: int) -> onnx.FunctionProto:
    """The function that rebuilds any weight quantized like q (same codebook and bits)."""
    bits = q.bits
    nodes: list[onnx.NodeProto] = []

    def add(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def const(name: str, value) -> str:
        nodes.append(_const(name, np.asarray(value)))
        return name

    # The shape and the parameter ranges are attributes of the call: cheaper than
    # two more named initializers per weight.
    nodes.append(_ref("shape"))
    nodes.append(_ref("ranges"))

    # Unpack: one stream of bytes per bit field, each byte holding 8/w values.
    nbytes = add("Shape", ["indices"], "nbytes")
    n8 = add("Div", [nbytes, const("bits", np.array([bits], np.int64))], "n8")
    count = add("ReduceProd", ["shape"], "count", keepdims=1)
    acc = ""
    start, shift = 0, bits
    for width in field_widths(bits):
        shift -= width
        tag = f"w{width}"
        begin = add("Mul", [n8, const(f"{tag}_start", np.array([start], np.int64))], f"{tag}_b")
        end = add("Mul", [n8, const(f"{tag}_end", np.array([start + width], np.int64))], f"{tag}_e")
        start += width
        part = add("Slice", ["indices", begin, end], f"{tag}_part")
        col = add("Reshape", [part, const(f"{tag}_col", np.array([-1, 1], np.int64))], f"{tag}_c")
        lefts = np.array([width * i for i in range(8 // width)], np.uint8)
        hi = add("BitShift", [col, const(f"{tag}_l", lefts)], f"{tag}_hi", direction="LEFT")
        right = const(f"{tag}_r", np.array([8 - width], np.uint8))
        field = add("BitShift", [hi, right], f"{tag}_f", direction="RIGHT")
        flat = add("Reshape", [field, const(f"{tag}_flat", np.array([-1], np.int64))], f"{tag}_v")
        part_codes = add("Cast", [flat], f"{tag}_i", to=TensorProto.INT32)
        if shift:
            scale = const(f"{tag}_m", np.array([1 << shift], np.int32))
            part_codes = add("Mul", [part_codes, scale], f"{tag}_s")
        acc = add("Add", [acc, part_codes], f"{tag}_acc") if acc else part_codes
    codes = add("Slice", [acc, const("zero", np.array([0], np.int64)), count], "codes")
    rows = add(
        "Concat",
        [add("Shape", ["params"], "groups"), const("minus1", np.array([-1], np.int64))],
        "rows",
        axis=0,
    )
    codes2 = add("Reshape", [codes, rows], "codes2")

    # Levels per group from the uint16 parameter codes (see quantize.level_table).
    pf = add(
        "Reshape",
        [
            add("Cast", ["params"], "pf0", to=TensorProto.FLOAT),
            const("colshape", np.array([-1, 1], np.int64)),
        ],
        "pf",
    )

    def cell(row: int, col: int) -> str:
        """ranges[row, col], as a (1, 1) tensor."""
        begin = const(f"r{row}c{col}b", np.array([row, col], np.int64))
        end = const(f"r{row}c{col}e", np.array([row + 1, col + 1], np.int64))
        return add("Slice", ["ranges", begin, end], f"r{row}c{col}")

    def value(code: str, i: int) -> str:
        return add("Add", [add("Mul", [code, cell(i, 1)], f"c{i}s"), cell(i, 0)], f"v{i}")

    one = const("onef", np.array(1.0, np.float32))
    offset = const("offset", q.offset)
    if q.ranges.shape[0] == 2:
        split = const("split", np.array(SPLIT, np.float32))
        hi = add("Floor", [add("Div", [pf, split], "pdiv")], "phi")
        lo = add("Sub", [pf, add("Mul", [hi, split], "phis")], "plo")
        slope = const("slope", q.slope)
        exponent = add(
            "Add", [add("Add", [add("Mul", [slope, value(hi, 0)], "e0"), offset], "e1"), value(lo, 1)], "e"
        )
        live = add("Min", [lo, one], "live")
    else:
        exponent = add("Add", [offset, value(pf, 0)], "e")
        live = add("Min", [pf, one], "live")
    table = add(
        "Mul", [add("Mul", [const("sign", q.sign), add("Exp", [exponent], "mag")], "sl"), live], "table"
    )
    gathered = add("GatherElements", [table, codes2], "gathered", axis=1)
    nodes.append(helper.make_node("Reshape", [gathered, "shape"], ["weight"]))
    return helper.make_function(
        DOMAIN,
        function_name(q.codebook, bits),
        ["indices", "params"],
        ["weight"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=["shape", "ranges"],
    )


def encode(
    q: QuantizedTensor, name: str, output: str, shape: tuple[int, ...]
) -> tuple[list[onnx.TensorProto], onnx.NodeProto]:
    """Initializers named after weight `name`, and the call node that builds `output`."""
    inits = [
        numpy_helper.from_array(pack_bits(q.codes.ravel(), q.bits), f"{name}.onnxq.indices"),
        numpy_helper.from_array(q.params, f"{name}.onnxq.codebook"),
    ]
    node = helper.make_node(
        function_name(q.codebook, q.bits),
        [t.name for t in inits],
        [output],
        domain=DOMAIN,
        shape=numpy_helper.from_array(np.array(shape, np.int64)),
        ranges=numpy_helper.from_array(q.ranges.astype(np.float32)),
    )
    return inits, node
