"""decompress: model with onnxq decoders -> plain float model whose weights are the decoded values.

Every weight onnxq stored is rebuilt by onnxruntime itself, running just the
nodes onnxq added (the decoder call and the Transpose / Cast after it) in a
model of their own; the result replaces them as a float initializer, and the
onnxq functions, initializers and domain go. Everything else, such as the
corrected biases, is kept as it is.
"""

from __future__ import annotations

from functools import partial

import onnx
from onnx import helper, numpy_helper

from onnxq.errors import OnnxqError, first_line
from onnxq.graph import io
from onnxq.graph.select import iter_graphs
from onnxq.runtime import ORT_ERRORS, session
from onnxq.storage import FORMATS
from onnxq.storage.base import CONFIG_KEY, DOMAIN, MARK, VERSION_KEY


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
    model, input_bytes = io.read_model(src)
    out, count = decompress_model(model)
    del model
    tmp = io.write_temp(out, dst_path, external=io.has_data_files(src, input_bytes))
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
        for fmt in FORMATS.values():
            decoded += fmt.unfuse(out, graph, partial(_evaluate, out, graph))
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
    ours = {domain for fmt in FORMATS.values() for domain in fmt.DOMAINS}
    imports = [i for i in out.opset_import if i.domain not in ours or i.domain in used]
    del out.opset_import[:]
    out.opset_import.extend(imports)
    kept_props = [p for p in out.metadata_props if p.key not in (VERSION_KEY, CONFIG_KEY)]
    del out.metadata_props[:]
    out.metadata_props.extend(kept_props)  # a plain float model now: onnxq did not write it
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
        first = first_line(exc, 200)
        raise OnnxqError(f"onnxruntime could not decode the weights: {first}") from None
    return dict(zip(outputs, result))
