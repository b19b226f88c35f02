"""fold: packed b-bit codes that standard ops rebuild at session creation.

w = Reshape(GatherElements(levels(params), unpack(indices)), shape), where
levels[g, k] = sign_k * exp(slope_k * ln x0_g + offset_k + ln s_g) * [g is live].
All the weights of one codebook and width in a graph form a batch that one call
rebuilds (encode_batch): their codes share one packed blob, their group
parameters one uint16 array, and their parameter ranges one small table; the
call's function, local to the model, unpacks the blob and builds every level
once, then splits them per weight. Every op in it is constant-foldable, so
onnxruntime turns the call into float initializers when the session is created
and inference runs at float speed; and one call per batch keeps the nodes it
inlines and folds few (measured on EfficientNet-Lite0, 50 weights, one thread:
114 ms of session creation against 420 ms with a call per weight, float 31 ms).

A large embedding table keeps its rows packed instead (replace_consumer): its
Gather becomes a call that gathers the packed rows and unpacks only those.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.quant.packing import pack_bits, pack_rows
from onnxq.quant.quantize import SPLIT, QuantizedTensor
from onnxq.storage.base import DOMAIN, MARK, ROWS_PREFIX, Encoded, Piece, Read, Stored, WholeWeights

NAME = "fold"
CHANNEL_FIRST = True  # the decoder builds the weight channel-first; rewrite transposes it back
REPLACES_READERS = False  # a weight's readers are replaced only for packed rows; storing it whole is the rule
WHOLE: WholeWeights | None = None  # fold stores whole weights itself
DOMAINS: tuple[str, ...] = (DOMAIN,)
MIN_OPSET = 11  # BitShift, the unpacking op, needs opset 11


def supports(codebook: str, bits: int) -> str | None:
    """None: fold stores every codebook at every width."""
    return None


def min_opset(bits: int, granularity: str, group_size: int | None) -> int:
    return MIN_OPSET


def notes(widths: set[int]) -> list[str]:
    return []


# onnxruntime's peak while it creates a session, per folded weight: 3.72 GB for the 134M
# decoder's 109.5M folded weights at --bits 5 (its embedding rows stay packed). onnxruntime keeps
# every intermediate of the folding until the session is ready, so each copy in the decoder
# costs 4 bytes per weight: a call of its own per large weight (no Split, fewer Reshapes) took
# it from 45 (4.93 GB) to 34.
PEAK_BYTES = 34
NOTE_ABOVE = 1 << 25  # folded weights from which the report warns


def load_notes(weights: list[tuple[list[str], int]], packed_rows: bool) -> list[str]:
    """onnxruntime folds every decoder into float weights when it creates a session, except the
    large embedding tables whose rows stay packed (replace_consumer has the exact rule)."""
    folded = sum(
        n
        for uses, n in weights
        if not (packed_rows and uses == ["Gather input 0"] and n >= ROWS_MIN_ELEMENTS)
    )
    if folded <= NOTE_ABOVE:
        return []
    return [
        (
            f"creating an onnxruntime session for this output will need about {PEAK_BYTES * folded / 1e9:.1f} "
            f"GB for a while: it folds the decoders of {folded:,} weights into float weights, at about "
            f"{PEAK_BYTES} bytes per weight; --bits 4 --codebook linear --format matmulnbits keeps MatMul "
            "weights packed in memory"
        )
    ]


def index_bytes(q: QuantizedTensor) -> int:
    return -(-q.codes.size // 8) * q.bits  # b planes of ceil(n / 8) bytes


def codebook_bytes(q: QuantizedTensor) -> int:
    return q.codebook_bytes


def file_bytes(q: QuantizedTensor, shape: tuple[int, ...], uses: list[str]) -> tuple[int, int]:
    """index_bytes and codebook_bytes: the weight is stored whole, whatever reads it."""
    return index_bytes(q), codebook_bytes(q)


def weight_problem(shape: tuple[int, ...], axis: int, group_size: int) -> str | None:
    """None: fold stores any grouping of the rows."""
    return None


def default_group_size(weight, codebook: str, bits: int) -> int | None:
    """Per channel: a scale per block would cost fold bytes without --group-size asking for it."""
    return None


def function_name(codebook: str, bits: int) -> str:
    return f"Decode_{codebook}_{bits}"


# At most this many weights per call, unless one weight alone is larger: onnxruntime
# does not fold a node whose output exceeds 1 GiB (the bit lookup makes 8 bytes per
# weight), and the fold's transient memory grows with the batch. Splitting Lite0's
# 4.6M weights in two cost 48 ms of session creation (141 against 93 ms) and no memory.
BATCH_WEIGHTS = 1 << 24
ALONE = 1 << 20  # a weight this large gets a decoder call of its own (batch_key)
ROWS_MIN_ELEMENTS = 1 << 20  # a Gather table this large keeps its rows packed (see replace_consumer)


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


def _level_table(b: _Body, params: str, ranges: str, offset: str | None, q: QuantizedTensor, col: str) -> str:
    """Nodes for levels[g, k] = sign_k * exp(slope_k * ln x0_g + offset_k + ln s_g) * live_g.

    params: (G,) uint16 parameter codes; ranges: (G or 1, 2P) rows of ranges[p, 0],
    ranges[p, 1] (value = ranges[p, 0] + code * ranges[p, 1]); offset: a (G or 1, 2^b)
    tensor of fitted tables, or None for q's codebook's own; col: a constant [-1, 1] of the
    body. The float32 operations
    follow quantize.level_table's order, so the graph and numpy agree.
    """

    def column(i: int) -> str:
        return b.add(
            "Slice",
            [
                ranges,
                b.const(f"c{i}b", np.array([i], np.int64)),
                b.const(f"c{i}e", np.array([i + 1], np.int64)),
                b.const(f"c{i}a", np.array([1], np.int64)),
            ],
            f"col{i}",
        )  # (G or 1, 1)

    pcol = b.add(
        "Reshape",
        [b.add("Cast", [params], "pf", to=TensorProto.FLOAT), col],
        "pcol",
    )
    one = b.const("onef", np.array(1.0, np.float32))
    if offset is None:
        offset = b.const("offset", q.offset[None, :])
    if q.ranges.shape[0] == 2:
        split = b.const("split", np.array(SPLIT, np.float32))
        hi = b.add("Floor", [b.add("Div", [pcol, split], "pdiv")], "phi")
        lo = b.add("Sub", [pcol, b.add("Mul", [hi, split], "phis")], "plo")
        v0 = b.add("Add", [b.add("Mul", [hi, column(1)], "v0s"), column(0)], "v0")
        v1 = b.add("Add", [b.add("Mul", [lo, column(3)], "v1s"), column(2)], "v1")
        slope = b.const("slope", q.slope[None, :])
        exponent = b.add("Add", [b.add("Add", [b.add("Mul", [slope, v0], "e0"), offset], "e1"), v1], "e")
        live = b.add("Min", [lo, one], "live")
    else:
        v0 = b.add("Add", [b.add("Mul", [pcol, column(1)], "v0s"), column(0)], "v0")
        exponent = b.add("Add", [offset, v0], "e")
        live = b.add("Min", [pcol, one], "live")
    sign = b.const("sign", q.sign[None, :])
    return b.add("Mul", [b.add("Mul", [sign, b.add("Exp", [exponent], "mag")], "sl"), live], "table")


def batch_key(q: QuantizedTensor) -> tuple[str, int, int]:
    """Weights with the same key (codebook and width) are decoded by one call; a weight of ALONE
    elements or more by its own, whose decoder needs no Split and fewer Reshapes: onnxruntime
    keeps each folded intermediate until the session is ready, 4 bytes per weight per copy."""
    return q.codebook, q.bits, (id(q) if q.codes.size >= ALONE else 0)


def call_name(q: QuantizedTensor) -> str:
    return function_name(q.codebook, q.bits)


def encode(pieces: list[Piece], opset: int, name: str) -> Encoded:
    """One call, and the function `name` it calls, that rebuilds every piece (see encode_batch)."""
    inits, call, functions = encode_batch([(p.q, p.output, p.shape) for p in pieces], opset, name)
    return inits, [call], functions


def _split(b: _Body, x: str, sizes: list[int], outputs: list[str], opset: int) -> None:
    """Split x along axis 0 into pieces of these sizes (an attribute before opset 13, an input from 13)."""
    if opset >= 13:
        sizes_name = b.const(f"{outputs[0]}_sizes", np.array(sizes, np.int64))
        b.nodes.append(helper.make_node("Split", [x, sizes_name], outputs, axis=0))
    else:
        b.nodes.append(helper.make_node("Split", [x], outputs, axis=0, split=sizes))


def _unpacked_codes(b: _Body, bits: int) -> str:
    """Nodes that unpack the input "indices" (pack_bits) into int32 codes, (1, 8 * n8): the codes,
    then the padding up to a multiple of 8. The planes' Reshape is a copy that onnxruntime keeps
    while it folds (b bytes per weight); b bytes per eight codes would avoid it, but their
    MatMulInteger is then a batch of n8 tiny products, 35 times slower (0.29 s against 0.008 s
    for 16M codes), which a session pays at creation and an unfolded validation on every run."""
    # Each byte's 8 bits, most significant first: a (256, 8) table built from a Range.
    byte = b.add(
        "Cast",
        [
            b.add(
                "Range",
                [
                    b.const("zero", np.array(0, np.int32)),
                    b.const("n256", np.array(256, np.int32)),
                    b.const("one", np.array(1, np.int32)),
                ],
                "r256",
            )
        ],
        "bytes",
        to=TensorProto.UINT8,
    )
    column = b.add("Reshape", [byte, b.const("col", np.array([-1, 1], np.int64))], "column")
    high = b.add(
        "BitShift", [column, b.const("lefts", np.arange(8, dtype=np.uint8))], "high", direction="LEFT"
    )
    lut = b.add("BitShift", [high, b.const("seven", np.array([7], np.uint8))], "lut", direction="RIGHT")
    index = b.add("Cast", ["indices"], "index", to=TensorProto.INT32)
    planes = b.add(
        "Reshape",
        [b.add("Gather", [lut, index], "bits", axis=0), b.const("planes", np.array([bits, -1], np.int64))],
        "plane",
    )  # (b, 8 * n8): plane j holds bit b-1-j of every code
    weigh = b.const("weigh", (1 << np.arange(bits - 1, -1, -1)).astype(np.uint8)[None, :])
    return b.add("MatMulInteger", [weigh, planes], "summed")  # (1, 8 * n8) int32 codes


def _owners(b: _Body, groups: list[int]) -> str:
    """Nodes that give each group the index of its weight in the batch."""
    total_groups = sum(groups)
    # The weight of each group: a 1 where each weight after the first starts, summed up.
    starts = np.cumsum(groups)[:-1].astype(np.int64)
    marks = b.add(
        "ScatterElements",
        [
            b.add(
                "ConstantOfShape",
                [b.const("ngroups", np.array([total_groups], np.int64))],
                "zeros",
                value=numpy_helper.from_array(np.zeros(1, np.int64)),
            ),
            b.const("starts", starts),
            b.add(
                "ConstantOfShape",
                [b.const("nstarts", np.array([starts.size], np.int64))],
                "ones",
                value=numpy_helper.from_array(np.ones(1, np.int64)),
            ),
        ],
        "marks",
        axis=0,
    )
    owner = b.add("CumSum", [marks, b.const("axis0", np.array(0, np.int64))], "owner")  # (G,)
    return owner


def encode_batch(
    items: list[tuple[QuantizedTensor, str, tuple[int, ...]]], opset: int, name: str
) -> tuple[list[onnx.TensorProto], onnx.NodeProto, list[onnx.FunctionProto]]:
    """One call, and the function `name` it calls, that rebuilds every weight of a batch.

    items are (q, output, channel-first shape), all with the same batch_key. The
    codes of all of them are packed back to back into one blob (pack_bits), their
    group parameters into one uint16 array, and each weight's parameter ranges
    (and fitted table) into a row of a small table. The function unpacks the blob
    once (a lookup of each byte's 8 bits, then a uint8 MatMulInteger that weighs
    the b planes), builds every group's levels at once (each group reads its
    weight's row of ranges), and splits codes and levels per weight for a
    GatherElements and a Reshape each. One call per batch keeps the nodes that
    onnxruntime inlines and folds at session creation few, whatever the number
    of weights.
    """
    q0 = items[0][0]
    bits, fitted = q0.bits, q0.tensor_offset
    codes = np.concatenate([q.codes.ravel() for q, _, _ in items])
    groups = [q.groups for q, _, _ in items]
    counts = [q.codes.size for q, _, _ in items]
    inits = [
        numpy_helper.from_array(pack_bits(codes, bits), f"{name}.onnxq.indices"),
        numpy_helper.from_array(np.concatenate([q.params for q, _, _ in items]), f"{name}.onnxq.codebook"),
        numpy_helper.from_array(
            np.stack([q.ranges.ravel() for q, _, _ in items]).astype(np.float32), f"{name}.onnxq.ranges"
        ),
    ]
    if fitted:
        offsets = np.stack([q.offset for q, _, _ in items]).astype(np.float32)
        inits.append(numpy_helper.from_array(offsets, f"{name}.onnxq.offsets"))

    b = _Body()
    flat = _unpacked_codes(b, bits)

    # Every group's levels: its parameter codes on its weight's ranges.
    if len(items) == 1:
        rows = "ranges"  # (1, 2P) broadcasts over the groups
        offset = "offsets" if fitted else None
    else:
        owner = _owners(b, groups)
        rows = b.add("Gather", ["ranges", owner], "rows", axis=0)  # (G, 2P)
        offset = b.add("Gather", ["offsets", owner], "goffset", axis=0) if fitted else None

    table = _level_table(b, "params", rows, offset, q0, "col")

    outputs = [f"w{i}" for i in range(len(items))]
    padding = 8 * -(-codes.size // 8) - codes.size
    if len(items) == 1 and not padding:  # each copy below stays in memory while onnxruntime folds
        piece_codes, piece_tables = [flat], [table]
    else:
        flat = b.add("Reshape", [flat, b.const("flat", np.array([-1], np.int64))], "codes")
        piece_codes = [f"k{i}" for i in range(len(items))] + (["pad"] if padding else [])
        _split(b, flat, counts + ([padding] if padding else []), piece_codes, opset)
        piece_tables = [f"t{i}" for i in range(len(items))] if len(items) > 1 else [table]
        if len(items) > 1:
            _split(b, table, groups, piece_tables, opset)
    for i, (q, _, shape) in enumerate(items):
        grid = b.add(
            "Reshape", [piece_codes[i], b.const(f"qs{i}", np.array([q.groups, -1], np.int64))], f"q{i}"
        )
        if len(items) == 1 and not padding and tuple(shape) == q.codes.shape:
            b.nodes.append(helper.make_node("GatherElements", [piece_tables[i], grid], [outputs[i]], axis=1))
            continue
        gathered = b.add("GatherElements", [piece_tables[i], grid], f"y{i}", axis=1)
        b.add("Reshape", [gathered, b.const(f"ws{i}", np.array(shape, np.int64))], outputs[i])
    inputs = ["indices", "params", "ranges"] + (["offsets"] if fitted else [])
    function = helper.make_function(DOMAIN, name, inputs, outputs, b.nodes, [helper.make_opsetid("", opset)])
    call = helper.make_node(name, [t.name for t in inits], [out for _, out, _ in items], domain=DOMAIN)
    return inits, call, [function]


def rows_function_name(codebook: str, bits: int) -> str:
    return f"{ROWS_PREFIX}{codebook}_{bits}"


def rows_function(q: QuantizedTensor, opset: int) -> onnx.FunctionProto:
    """Gather(table, ids) from a table whose rows stay packed: only the gathered rows are unpacked.

    indices (V, b * D8) holds pack_rows(codes, b), params (V, r) each row's r
    groups; the call's shape attribute is the table's (V, D). Gather the packed
    rows and their parameters, unpack the rows (each byte's bits by two uint8
    BitShifts, the planes weighed by an int32 MatMul: the rows are few), look
    their codes up in their own levels, and shape the result like Gather's:
    ids.shape + (D,).
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
    if q.tensor_offset:
        b.nodes.append(_ref("offset"))
        attributes.append("offset")
    ranges = b.add("Reshape", ["ranges", b.const("rshape", np.array([1, -1], np.int64))], "range_row")
    col = b.const("col", np.array([-1, 1], np.int64))
    table = _level_table(b, params, ranges, "offset" if q.tensor_offset else None, q, col)
    gathered = b.add("GatherElements", [table, codes2], "gathered", axis=1)
    out_shape = b.add("Concat", [b.add("Shape", ["ids"], "idshape"), width], "oshape", axis=0)
    b.add("Reshape", [gathered, out_shape], "output")
    call = helper.make_function(
        DOMAIN,
        rows_function_name(q.codebook, q.bits),
        ["indices", "params", "ids"],
        ["output"],
        b.nodes,
        [helper.make_opsetid("", opset)],
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
    Measured on a 50k x 512 table at 5 bits (tools/bench.py): see docs/FORMATS.md.
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
    return inits, call, [rows_function(q, opset)]


def unfuse(model: onnx.ModelProto, graph: onnx.GraphProto, evaluate) -> int:
    """For decompress: every GatherRows call -> Gather of the decoded table (the call run on every row)."""
    count = 0
    for i, node in enumerate(list(graph.node)):
        if node.domain != DOMAIN or not node.op_type.startswith(ROWS_PREFIX):
            continue
        name = node.input[0].removesuffix(".onnxq.indices")
        rows = next(t for t in graph.initializer if t.name == node.input[0]).dims[0]
        every = onnx.NodeProto()
        every.CopyFrom(node)
        every.input[2] = f"{name}.onnxq.rows"
        every.output[:] = [name]
        ids = numpy_helper.from_array(np.arange(rows, dtype=np.int64), f"{name}.onnxq.rows")
        table = evaluate([every], [name], [ids])[name]
        graph.initializer.append(numpy_helper.from_array(table, name))
        graph.node.insert(i, helper.make_node("Gather", [name, node.input[2]], list(node.output), axis=0))
        graph.node.remove(node)
        count += 1
    return count


def stored(model: onnx.ModelProto, graph: onnx.GraphProto, read: Read) -> list[Stored]:
    """Every weight a decoder call or a packed-rows call in graph rebuilds: its codebook and width
    from the function's name (function_name), its groups and shape from the call's constants, and
    its bytes as index_bytes and codebook_bytes count them (a batch's blob is shared)."""
    functions = {f.name: f for f in model.functions if f.domain == DOMAIN}
    inits = {t.name: t for t in graph.initializer}
    readers = {i: n for n in graph.node for i in n.input}
    out = []
    for node in graph.node:
        if node.domain != DOMAIN:
            continue
        if node.op_type.startswith(ROWS_PREFIX):
            out.append(_stored_rows(node, inits))
        elif node.op_type.startswith("Decode_") and node.op_type in functions:
            out += _stored_batch(node, functions[node.op_type], inits, readers)
    return out


def _kind(name: str, prefix: str) -> tuple[str, int]:
    """(codebook, bits) from a function name such as Decode_exponential_5 or Decode_linear_4_1."""
    codebook, bits = name.removeprefix(prefix).split("_")[:2]
    return codebook, int(bits)


def _stored_batch(node, function: onnx.FunctionProto, inits, readers) -> list[Stored]:
    codebook, bits = _kind(node.op_type, "Decode_")
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in function.node if n.op_type == "Constant"
    }
    ranges = int(inits[node.input[2]].dims[-1]) if node.input[2] in inits else 0
    table = 4 << bits if len(node.input) > 3 else 0  # a fitted codebook's own levels
    out = []
    for i, output in enumerate(node.output):
        groups = int(consts[f"qs{i}"][0])
        if f"ws{i}" in consts:
            shape = tuple(int(d) for d in consts[f"ws{i}"])
        else:  # a weight alone in its call, built as (groups, n) with no padding to drop
            shape = (groups, int(np.prod(inits[node.input[0]].dims)) // bits * 8 // groups)
        after = readers.get(output)
        if after is not None and after.op_type == "Transpose":  # built channel-first
            perm = next(a.ints for a in after.attribute if a.name == "perm")
            shape = tuple(shape[p] for p in perm)
        n = int(np.prod(shape))
        out.append(
            Stored(
                output.split(MARK)[0],
                shape,
                NAME,
                codebook,
                bits,
                groups,
                -(-n // 8) * bits,
                2 * groups + 4 * ranges + table,
            )
        )
    return out


def _stored_rows(node: onnx.NodeProto, inits) -> Stored:
    codebook, bits = _kind(node.op_type, ROWS_PREFIX)
    attrs = {a.name: numpy_helper.to_array(a.t) for a in node.attribute}
    shape = tuple(int(d) for d in attrs["shape"])
    indices, params = inits[node.input[0]], inits[node.input[1]]
    groups = int(np.prod(params.dims))
    extra = sum(4 * attrs[k].size for k in ("ranges", "offset") if k in attrs)
    return Stored(
        node.input[0].removesuffix(".onnxq.indices"),
        shape,
        NAME,
        codebook,
        bits,
        groups,
        int(np.prod(indices.dims)),
        2 * groups + extra,
    )
