"""fold: packed b-bit codes that a standard-op subgraph rebuilds at session creation.

w = Reshape(GatherElements(levels(params), unpack(indices)), shape), where
levels[g, k] = sign_k * exp(slope_k * ln x0_g + offset_k + ln s_g) * [g is live].
The decoder is one small model-local function per (codebook, bits), holding its
code tables, that calls two functions every width shares (Unpack reads the bit
width at run time); each weight adds two initializers (indices, codebook) and
one call node whose attributes carry the shape and the parameter ranges (and, for
a fitted codebook such as kmeans, the tensor's own offset table, which the decoder
reads instead of a constant of its own). Every op in it is constant-foldable,
so onnxruntime turns each call into a float initializer when the session is
created and inference runs at float speed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.packing import pack_bits, pack_rows
from onnxq.quantize import SPLIT, QuantizedTensor

DOMAIN = "onnxq"
NAME = "fold"
SUMMARY = "packed b-bit indices, rebuilt by standard ops that onnxruntime folds into constants"
CHANNEL_FIRST = True  # the decoder builds the weight channel-first; rewrite transposes it back
MIN_OPSET = 11  # BitShift, the unpacking op, needs opset 11


def supports(codebook: str, bits: int) -> str | None:
    """None: fold stores every codebook at every width."""
    return None


def min_opset(bits: int, granularity: str, group_size: int | None) -> int:
    return MIN_OPSET


def notes(widths: set[int]) -> list[str]:
    return []


def index_bytes(q: QuantizedTensor) -> int:
    return -(-q.codes.size // 8) * q.bits  # b planes of ceil(n / 8) bytes


def codebook_bytes(q: QuantizedTensor) -> int:
    return q.codebook_bytes


def weight_problem(shape: tuple[int, ...], axis: int, group_size: int) -> str | None:
    """None: fold stores any grouping of the rows."""
    return None


def function_name(codebook: str, bits: int) -> str:
    return f"Decode_{codebook}_{bits}"


ROWS_MIN_ELEMENTS = 1 << 20  # a Gather table this large keeps its rows packed (see replace_consumer)
UNPACK = "Unpack"  # (indices, bits, count) -> codes: any width, shared by every decoder
LEVELS = {1: "Levels1", 2: "Levels2"}  # (params, ranges, sign, slope, offset) -> (groups, 2^b) levels


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


class _Body:
    """Nodes of a function body, added in order."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []

    def add(self, op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], domain=domain, **attrs))
        return output

    def const(self, name: str, value) -> str:
        self.nodes.append(_const(name, np.asarray(value)))
        return name


def unpack_function(opset: int) -> onnx.FunctionProto:
    """codes[:count] from a blob of pack_bits(codes, bits), for any bits (read at run time).

    The blob is b planes of n8 bytes: split each byte into its 8 bits with two
    uint8 BitShifts, (x << i) >> 7, then weigh plane j by 2^(b-1-j) and sum,
    as a (1, b) x (b, 8*n8) MatMul.
    """
    b = _Body()
    planes = b.add("Concat", ["bits", b.const("m1", np.array([-1], np.int64))], "planes", axis=0)
    cube = b.add("Concat", [planes, b.const("one", np.array([1], np.int64))], "cube", axis=0)
    grid = b.add("Reshape", ["indices", cube], "grid")  # (b, n8, 1)
    lefts = b.const("lefts", np.arange(8, dtype=np.uint8))
    high = b.add("BitShift", [grid, lefts], "high", direction="LEFT")
    bit = b.add("BitShift", [high, b.const("seven", np.array([7], np.uint8))], "bit", direction="RIGHT")
    flat = b.add("Cast", [b.add("Reshape", [bit, planes], "flat8")], "flat", to=TensorProto.INT32)
    scalar = b.add("Reshape", ["bits", b.const("scalar", np.zeros(0, np.int64))], "b0")
    js = b.add(
        "Range",
        [b.const("zero", np.array(0, np.int64)), scalar, b.const("step", np.array(1, np.int64))],
        "js",
    )
    powers = b.add(
        "Cast",
        [b.add("Sub", [b.add("Sub", [scalar, b.const("uno", np.array(1, np.int64))], "top"), js], "p")],
        "pf",
        to=TensorProto.FLOAT,
    )
    weights = b.add(
        "Cast",
        [b.add("Pow", [b.const("two", np.array(2.0, np.float32)), powers], "w")],
        "wi",
        to=TensorProto.INT32,
    )
    row = b.add("Reshape", [weights, b.const("rowshape", np.array([1, -1], np.int64))], "row")
    codes = b.add(
        "Reshape", [b.add("MatMul", [row, flat], "sum"), b.const("m1b", np.array([-1], np.int64))], "all"
    )
    b.add("Slice", [codes, b.const("first", np.array([0], np.int64)), "count"], "codes")
    return helper.make_function(
        DOMAIN, UNPACK, ["indices", "bits", "count"], ["codes"], b.nodes, [helper.make_opsetid("", opset)]
    )


def levels_function(count: int, opset: int) -> onnx.FunctionProto:
    """levels[g, k] = sign_k * exp(slope_k * ln x0_g + offset_k + ln s_g) * live_g (quantize.level_table).

    count is how many parameters share each uint16: 2 (x0 and s) or 1 (the step).
    """
    b = _Body()
    pf = b.add(
        "Reshape",
        [
            b.add("Cast", ["params"], "pf0", to=TensorProto.FLOAT),
            b.const("colshape", np.array([-1, 1], np.int64)),
        ],
        "pf",
    )

    def cell(row: int, col: int) -> str:
        """ranges[row, col], as a (1, 1) tensor."""
        begin = b.const(f"r{row}c{col}b", np.array([row, col], np.int64))
        end = b.const(f"r{row}c{col}e", np.array([row + 1, col + 1], np.int64))
        return b.add("Slice", ["ranges", begin, end], f"r{row}c{col}")

    def value(code: str, i: int) -> str:
        return b.add("Add", [b.add("Mul", [code, cell(i, 1)], f"c{i}s"), cell(i, 0)], f"v{i}")

    one = b.const("onef", np.array(1.0, np.float32))
    if count == 2:
        split = b.const("split", np.array(SPLIT, np.float32))
        hi = b.add("Floor", [b.add("Div", [pf, split], "pdiv")], "phi")
        lo = b.add("Sub", [pf, b.add("Mul", [hi, split], "phis")], "plo")
        exponent = b.add(
            "Add",
            [b.add("Add", [b.add("Mul", ["slope", value(hi, 0)], "e0"), "offset"], "e1"), value(lo, 1)],
            "e",
        )
        live = b.add("Min", [lo, one], "live")
    else:
        exponent = b.add("Add", ["offset", value(pf, 0)], "e")
        live = b.add("Min", [pf, one], "live")
    b.add("Mul", [b.add("Mul", ["sign", b.add("Exp", [exponent], "mag")], "sl"), live], "table")
    return helper.make_function(
        DOMAIN,
        LEVELS[count],
        ["params", "ranges", "sign", "slope", "offset"],
        ["table"],
        b.nodes,
        [helper.make_opsetid("", opset)],
    )


def decoders(q: QuantizedTensor, opset: int) -> list[onnx.FunctionProto]:
    """The functions that rebuild any weight quantized like q (same codebook and bits).

    The first is the one the weight's node calls; it holds the code tables of its
    codebook and width, and calls the shared Unpack and Levels functions.
    """
    b = _Body()
    # The shape and the parameter ranges are attributes of the call: cheaper than
    # two more named initializers per weight.
    b.nodes += [_ref("shape"), _ref("ranges")]
    attributes = ["shape", "ranges"]
    count = b.add("ReduceProd", ["shape"], "count", keepdims=1)
    bits = b.const("bits", np.array([q.bits], np.int64))
    codes = b.add(UNPACK, ["indices", bits, count], "codes", domain=DOMAIN)
    rows = b.add(
        "Concat",
        [b.add("Shape", ["params"], "groups"), b.const("minus1", np.array([-1], np.int64))],
        "rows",
        axis=0,
    )
    codes2 = b.add("Reshape", [codes, rows], "codes2")
    tables = [b.const(name, getattr(q, name)) for name in ("sign", "slope")]
    if q.tensor_offset:  # a fitted table differs per tensor: the call carries it
        b.nodes.append(_ref("offset"))
        attributes.append("offset")
        tables.append("offset")
    else:
        tables.append(b.const("offset", q.offset))
    p = q.ranges.shape[0]
    table = b.add(LEVELS[p], ["params", "ranges", *tables], "table", domain=DOMAIN)
    gathered = b.add("GatherElements", [table, codes2], "gathered", axis=1)
    b.add("Reshape", [gathered, "shape"], "weight")
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)]
    call = helper.make_function(
        DOMAIN,
        function_name(q.codebook, q.bits),
        ["indices", "params"],
        ["weight"],
        b.nodes,
        imports,
        attributes=attributes,
    )
    return [call, unpack_function(opset), levels_function(p, opset)]


def encode(
    q: QuantizedTensor, name: str, output: str, shape: tuple[int, ...], axis: int = 0
) -> tuple[list[onnx.TensorProto], onnx.NodeProto]:
    """Initializers named after weight `name`, and the call node that builds `output`.

    shape is channel-first (CHANNEL_FIRST), so axis is always 0 here.
    """
    inits = [
        numpy_helper.from_array(pack_bits(q.codes.ravel(), q.bits), f"{name}.onnxq.indices"),
        numpy_helper.from_array(q.params, f"{name}.onnxq.codebook"),
    ]
    attrs = {
        "shape": numpy_helper.from_array(np.array(shape, np.int64)),
        "ranges": numpy_helper.from_array(q.ranges.astype(np.float32)),
    }
    if q.tensor_offset:
        attrs["offset"] = numpy_helper.from_array(q.offset.astype(np.float32))
    node = helper.make_node(
        function_name(q.codebook, q.bits), [t.name for t in inits], [output], domain=DOMAIN, **attrs
    )
    return inits, node


ROWS_PREFIX = "GatherRows_"


def rows_function_name(codebook: str, bits: int) -> str:
    return f"{ROWS_PREFIX}{codebook}_{bits}"


def rows_function(q: QuantizedTensor, opset: int) -> onnx.FunctionProto:
    """Gather(table, ids) from a table whose rows stay packed: only the gathered rows are unpacked.

    indices (V, b * D8) holds pack_rows(codes, b), params (V, r) each row's r
    groups; the call's shape attribute is the table's (V, D). Gather the packed
    rows and their parameters, unpack the rows as Unpack does, look their codes
    up in their own levels, and shape the result like Gather's: ids.shape + (D,).
    """
    b = _Body()
    b.nodes += [_ref("shape"), _ref("ranges")]
    attributes = ["shape", "ranges"]
    bits = q.bits
    rows = b.add("Gather", ["indices", "ids"], "rows", axis=0)  # (*ids, b * D8)
    width = b.add(
        "Slice",
        ["shape", b.const("one", np.array([1], np.int64)), b.const("two", np.array([2], np.int64))],
        "width",
    )
    planes = b.const("planes", np.array([bits], np.int64))
    n8 = b.add(
        "Div",
        [b.add("Slice", [b.add("Shape", ["indices"], "ishape"), "one", "two"], "ibytes"), planes],
        "n8",
    )
    cube = b.add("Concat", [b.const("m1", np.array([-1], np.int64)), planes, n8, "one"], "cube", axis=0)
    grid = b.add("Reshape", [rows, cube], "grid")  # (N, b, D8, 1)
    high = b.add("BitShift", [grid, b.const("lefts", np.arange(8, dtype=np.uint8))], "high", direction="LEFT")
    bit = b.add("BitShift", [high, b.const("seven", np.array([7], np.uint8))], "bit", direction="RIGHT")
    keep = b.const("keep", np.array([0, 0, -1], np.int64))
    flat = b.add("Cast", [b.add("Reshape", [bit, keep], "flat8")], "flat", to=TensorProto.INT32)
    weights = b.const("weights", (1 << np.arange(bits - 1, -1, -1)).astype(np.int32)[None, :])
    summed = b.add("MatMul", [weights, flat], "summed")  # (N, 1, 8 * D8)
    codes = b.add(
        "Slice",
        [
            b.add("Reshape", [summed, b.const("rowsof", np.array([0, -1], np.int64))], "all"),
            b.const("zero", np.array([0], np.int64)),
            width,
            "one",
        ],
        "codes",
    )  # (N, D)
    params = b.add(
        "Reshape",
        [b.add("Gather", ["params", "ids"], "prows", axis=0), b.const("m1b", np.array([-1], np.int64))],
        "pflat",
    )  # (N * r,)
    per_group = b.add("Concat", [b.add("Shape", [params], "groups"), "m1"], "per_group", axis=0)
    codes2 = b.add("Reshape", [codes, per_group], "codes2")  # (N * r, D / r)
    tables = [b.const(name, getattr(q, name)) for name in ("sign", "slope")]
    if q.tensor_offset:
        b.nodes.append(_ref("offset"))
        attributes.append("offset")
        tables.append("offset")
    else:
        tables.append(b.const("offset", q.offset))
    table = b.add(LEVELS[q.ranges.shape[0]], [params, "ranges", *tables], "table", domain=DOMAIN)
    gathered = b.add("GatherElements", [table, codes2], "gathered", axis=1)
    out_shape = b.add("Concat", [b.add("Shape", ["ids"], "idshape"), width], "oshape", axis=0)
    b.add("Reshape", [gathered, out_shape], "output")
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)]
    call = helper.make_function(
        DOMAIN,
        rows_function_name(q.codebook, q.bits),
        ["indices", "params", "ids"],
        ["output"],
        b.nodes,
        imports,
        attributes=attributes,
    )
    return call


def replace_consumer(
    q: QuantizedTensor, weight, node: onnx.NodeProto, block: int | None, opset: int, packed_rows: bool = True
):
    """A Gather of a large 2-D float table: the call that gathers packed rows, or None.

    Returns (initializers, node, functions it calls) for a Gather(table, ids) on axis 0 of a
    float32 table of at least ROWS_MIN_ELEMENTS with per-row levels (and packed_rows),
    else None: the table is then stored whole and folded at session creation, as
    every other weight.
    Measured on a 50k x 512 table at 5 bits (tools/bench.py): see the README.
    """
    if (
        not packed_rows
        or node.op_type != "Gather"
        or node.domain not in ("", "ai.onnx")
        or list(node.input).index(weight.name) != 0
        or any(a.name == "axis" and a.i != 0 for a in node.attribute)
        or weight.array.ndim != 2
        or weight.array.dtype != np.float32
        or weight.array.size < ROWS_MIN_ELEMENTS
        or q.groups % weight.array.shape[0] != 0
    ):
        return None
    v, d = weight.array.shape
    codes = q.codes.reshape(v, d)
    name = weight.name
    inits = [
        numpy_helper.from_array(pack_rows(codes, q.bits), f"{name}.onnxq.indices"),
        numpy_helper.from_array(q.params.reshape(v, -1), f"{name}.onnxq.codebook"),
    ]
    attrs = {
        "shape": numpy_helper.from_array(np.array([v, d], np.int64)),
        "ranges": numpy_helper.from_array(q.ranges.astype(np.float32)),
    }
    if q.tensor_offset:
        attrs["offset"] = numpy_helper.from_array(q.offset.astype(np.float32))
    call = helper.make_node(
        rows_function_name(q.codebook, q.bits),
        [inits[0].name, inits[1].name, node.input[1]],
        list(node.output),
        name=node.name or None,
        domain=DOMAIN,
        **attrs,
    )
    return inits, call, [rows_function(q, opset), levels_function(q.ranges.shape[0], opset)]
