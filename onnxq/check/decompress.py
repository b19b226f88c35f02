"""decompress: model with onnxq decoders -> plain float model whose weights are the decoded values.

Every weight onnxq stored is rebuilt by onnxruntime itself, running just the
nodes onnxq added (the decoder call and the Transpose / Cast after it) in a
model of their own; the result replaces them as a float initializer, and the
onnxq functions, initializers and domain go. Everything else, such as the
corrected biases, is kept as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.errors import OnnxqError
from onnxq.graph import io
from onnxq.graph.select import iter_graphs
from onnxq.runtime import ORT_ERRORS, session
from onnxq.storage.fold import DOMAIN, ROWS_PREFIX
from onnxq.storage.matmulnbits import MS_DOMAIN

MARK = ".onnxq."  # every tensor onnxq adds has this in its name


def _added_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes that rebuild stored weights: every input is an onnxq initializer, or made by such a node."""
    stored = {t.name for t in graph.initializer if MARK in t.name}
    made: set[str] = set()
    added: dict[int, onnx.NodeProto] = {}
    changed = True
    while changed:
        changed = False
        for n in graph.node:
            inputs = [i for i in n.input if i]
            if id(n) in added or not inputs or not all(i in stored or i in made for i in inputs):
                continue
            added[id(n)] = n
            made.update(n.output)
            changed = True
    return list(added.values())


def decompress(src, dst) -> int:
    """decompress_model from file to file, written atomically; how many weights were decoded."""
    dst_path = io.check_output_path(src, dst)
    model, _ = io.read_model(src)
    out, count = decompress_model(model)
    tmp = io.write_temp(out, dst_path)
    try:
        io.commit(tmp, dst_path)
    finally:
        io.discard(tmp, dst_path)
    return count


def decompress_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The float model, and how many weights were decoded."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    decoded = 0
    for graph in iter_graphs(out.graph):
        decoded += _unfuse_matmulnbits(graph)
        decoded += _unfuse_row_gathers(out, graph)
        added = _added_nodes(graph)
        if not added:
            _drop_unread(graph)
            continue
        produced = {o for n in added for o in n.output}
        weights = [o for o in produced if MARK not in o]
        values = _evaluate(out, graph, added, weights)
        for n in added:
            graph.node.remove(n)
        _drop_unread(graph)
        graph.initializer.extend(numpy_helper.from_array(values[name], name) for name in weights)
        decoded += len(weights)
    if decoded == 0 and any(f.domain == DOMAIN for f in out.functions):
        raise OnnxqError("the onnxq decoders in this model are not called; nothing to decompress")
    if decoded == 0:
        raise OnnxqError(
            "this model has no onnxq decoder calls to decompress (models below IR version 8 "
            "get their decoders inlined and cannot be decompressed)"
        )
    kept_functions = [f for f in out.functions if f.domain != DOMAIN]
    del out.functions[:]
    out.functions.extend(kept_functions)
    used = {n.domain for g in iter_graphs(out.graph) for n in g.node}
    imports = [
        i for i in out.opset_import if i.domain != DOMAIN and (i.domain != MS_DOMAIN or MS_DOMAIN in used)
    ]
    del out.opset_import[:]
    out.opset_import.extend(imports)
    io.check_built(out)
    return out, decoded


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Remove onnxq's initializers (and IR < 4 inputs) that no node reads any more."""
    read = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if MARK not in t.name or t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if MARK not in i.name or i.name in read]
    del graph.input[:]
    graph.input.extend(inputs)


def _low_first(packed: np.ndarray, bits: int, rows: int) -> np.ndarray:
    """(rows, bytes) packed least significant bits first -> (rows, values) uint8."""
    packed = packed.reshape(rows, -1)
    per_byte = 8 // bits
    return np.stack([(packed >> (bits * j)) & ((1 << bits) - 1) for j in range(per_byte)], axis=2).reshape(
        rows, -1
    )


def _unfuse_matmulnbits(graph: onnx.GraphProto) -> int:
    """MatMulNBits / GatherBlockQuantized nodes onnxq wrote -> MatMul / Gather of the float weight."""
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


def _unfuse_row_gathers(model: onnx.ModelProto, graph: onnx.GraphProto) -> int:
    """fold's GatherRows calls -> Gather of the decoded table (the call run on every row)."""
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
        table = _evaluate(model, graph, [every], [name], [ids])[name]
        graph.initializer.append(numpy_helper.from_array(table, name))
        graph.node.insert(i, helper.make_node("Gather", [name, node.input[2]], list(node.output), axis=0))
        graph.node.remove(node)
        count += 1
    return count


def _evaluate(model: onnx.ModelProto, graph: onnx.GraphProto, nodes, outputs: list[str], extra=()) -> dict:
    """Run just these nodes (with the graph's initializers they read, and extra) and return the outputs."""
    needed = {i for n in nodes for i in n.input if i}
    inits = [t for t in graph.initializer if t.name in needed] + list(extra)
    sub = helper.make_graph(
        list(nodes),
        "decode",
        [],
        [onnx.ValueInfoProto(name=name) for name in outputs],
        inits,
    )
    tiny = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    tiny.functions.extend(f for f in model.functions if f.domain == DOMAIN)
    try:
        result = session(tiny.SerializeToString()).run(outputs, {})
    except ORT_ERRORS as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise OnnxqError(f"onnxruntime could not decode the weights: {first}") from None
    return dict(zip(outputs, result))
