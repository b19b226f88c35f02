"""Cause 5: malformed models: broken files, invalid graphs and tensors, hostile names, and
external data that points where it must not. onnxq refuses each in one line before any work,
or compresses it; it never fails later with a traceback.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hostile import models
from hostile.runner import Case

CAUSE = "malformed models"
FAST = ["--samples", "2"]
Edit = Callable[[onnx.ModelProto], None]


def _bytes_case(name: str, make: Callable[[bytes], bytes], src: str = "m.onnx", expect: str = "any") -> Case:
    def setup(folder: Path) -> list[str]:
        (folder / src).write_bytes(make(models.mlp().SerializeToString()))
        return ["compress", src, "out.onnx", *FAST]

    return Case(CAUSE, name, setup, expect)


def _flip(seed: int) -> Callable[[bytes], bytes]:
    def make(data: bytes) -> bytes:
        rng = np.random.default_rng(seed)
        out = bytearray(data)
        for _ in range(1 + seed % 8):
            i = int(rng.integers(len(out)))
            out[i] ^= 1 << int(rng.integers(8))
        return bytes(out)

    return make


def _files() -> list[Case]:
    out = [_bytes_case(f"truncated-{k}of12", lambda d, k=k: d[: len(d) * k // 12]) for k in range(1, 12, 2)]
    out += [_bytes_case(f"bit-flips-{seed}", _flip(seed)) for seed in range(12)]
    rng = np.random.default_rng(5)
    garbage = {
        "random-16": rng.bytes(16),
        "random-4k": rng.bytes(4096),
        "zeros-1k": bytes(1024),
        "ff-1k": b"\xff" * 1024,
        "one-byte": b"\x08",
        "text": b"this is not a model\n" * 20,
        "json": b'{"graph": {"node": []}}',
        "zip": b"PK\x05\x06" + bytes(18),
        "deep-nesting": b"\x3a\x02" * 4000,  # nested length-delimited fields, deeper than protobuf allows
        "huge-length": b"\x3a\xff\xff\xff\xff\x0f" + bytes(32),
    }
    out += [_bytes_case(f"garbage-{k}", lambda d, v=v: v, expect="refused") for k, v in garbage.items()]
    out.append(_bytes_case("empty", lambda d: b"", expect="refused"))
    for suffix in ("json", "onnxtxt", "textproto", "txt", "ONNX", "pb"):  # binary, whatever the name
        out.append(_bytes_case(f"binary-as-{suffix}", lambda d: d, f"m.{suffix}", "ok"))
    out += [
        _bytes_case(
            "text-format-onnxtxt", lambda d: onnx.printer.to_text(models.mlp()).encode(), "m.onnxtxt"
        ),
        _bytes_case("json-format", lambda d: _json(models.mlp()), "m.json"),
    ]
    return out


def _json(model: onnx.ModelProto) -> bytes:
    from google.protobuf import json_format

    return json_format.MessageToJson(model).encode()


def _not_a_file(kind: str, command: str = "compress") -> Case:
    def setup(folder: Path) -> list[str]:
        target = folder / "m.onnx"
        if kind == "folder":
            target.mkdir()
        elif kind == "fifo":
            os.mkfifo(target)
        elif kind == "loop":
            os.symlink("m.onnx", target)
        elif kind == "dev-zero":
            os.symlink("/dev/zero", target)
        elif kind == "link-to-model":
            models.save(models.mlp(), folder / "real.onnx")
            os.symlink("real.onnx", target)
        if command == "validate":
            models.save(models.mlp(), folder / "good.onnx")
            return ["validate", "good.onnx", "m.onnx", *FAST]
        return [command, "m.onnx", "out.onnx" if command == "compress" else "float.onnx", *FAST]

    name = f"src-{kind}" + ("" if command == "compress" else f"-{command}")
    return Case(CAUSE, name, setup, "ok" if kind == "link-to-model" else "refused")


def _edited(
    name: str,
    edit: Edit,
    base: Callable[[], onnx.ModelProto] = models.mlp,
    expect: str = "any",
    extra: tuple[str, ...] = (),
) -> Case:
    def setup(folder: Path) -> list[str]:
        model = base()
        edit(model)
        models.save(model, folder / "m.onnx")
        return ["compress", "m.onnx", "out.onnx", *FAST, *extra]

    return Case(CAUSE, name, setup, expect)


def _w(model: onnx.ModelProto) -> onnx.TensorProto:
    return model.graph.initializer[0]


def _set_array(values: np.ndarray) -> Edit:
    def edit(model: onnx.ModelProto) -> None:
        _w(model).CopyFrom(numpy_helper.from_array(values.astype(np.float32), "W0"))

    return edit


def _retype(data_type: int, dtype) -> Edit:
    def edit(model: onnx.ModelProto) -> None:
        array = numpy_helper.to_array(_w(model)).astype(dtype)
        t = _w(model)
        t.data_type, t.raw_data = data_type, array.tobytes()

    return edit


def _bf16(model: onnx.ModelProto) -> None:
    t = _w(model)
    array = numpy_helper.to_array(t)
    t.data_type = TensorProto.BFLOAT16
    t.raw_data = (array.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def _tensors() -> list[Case]:
    def set_field(**fields) -> Edit:
        return lambda m: [setattr(_w(m), k, v) for k, v in fields.items()]

    def dims(*d: int) -> Edit:
        def edit(m):
            del _w(m).dims[:]
            _w(m).dims.extend(d)

        return edit

    def raw(cut: int) -> Edit:
        return lambda m: setattr(
            _w(m), "raw_data", _w(m).raw_data[:cut] if cut > 0 else _w(m).raw_data + bytes(-cut)
        )

    def float_data(count: int) -> Edit:
        def edit(m):
            t = _w(m)
            t.raw_data = b""
            t.float_data.extend([0.5] * count)

        return edit

    big = np.random.default_rng(3).standard_normal((32, 32))
    edits = {
        "dims-too-big": dims(64, 32),
        "dims-too-small": dims(16, 32),
        "dims-negative": dims(-32, -32),
        "dims-huge": dims(2**40, 2**20),
        "dims-rank-3": dims(32, 32, 1),
        "dims-zero": dims(0, 32),
        "raw-short": raw(100),
        "raw-odd": raw(4095),
        "raw-long": raw(-4),
        "raw-empty": raw(0),
        "float-data-short": float_data(10),
        "float-data-long": float_data(2000),
        "type-undefined": set_field(data_type=0),
        "type-999": set_field(data_type=999),
        "type-string": set_field(data_type=TensorProto.STRING),
        "bfloat16-weight": _bf16,
        "float16-weight": _retype(TensorProto.FLOAT16, np.float16),
        "float64-weight": _retype(TensorProto.DOUBLE, np.float64),
        "int8-weight": _retype(TensorProto.INT8, np.int8),
        "nan-weight": _set_array(np.full((32, 32), np.nan)),
        "inf-weight": _set_array(np.where(big > 1, np.inf, big)),
        "huge-values": _set_array(big / np.abs(big).max() * 3e38),
        "tiny-values": _set_array(big * 1e-44),
        "zero-weight": _set_array(np.zeros((32, 32))),
        "constant-weight": _set_array(np.full((32, 32), 0.25)),
        "no-name-weight": set_field(name=""),
        "data-location-external-no-entries": set_field(data_location=TensorProto.EXTERNAL),
    }
    return [_edited(f"tensor-{k}", e) for k, e in edits.items()]


def _add_node(op: str, inputs, outputs, domain: str = "", **attrs) -> Edit:
    return lambda m: m.graph.node.append(helper.make_node(op, inputs, outputs, domain=domain, **attrs))


def _graphs() -> list[Case]:
    def dup_init(m):
        m.graph.initializer.append(copy.deepcopy(m.graph.initializer[0]))

    def cycle(m):
        m.graph.node[0].input[0] = "y"

    def value_info(shape, elem=TensorProto.FLOAT) -> Edit:
        return lambda m: m.graph.value_info.append(helper.make_tensor_value_info("h0", elem, shape))

    def sparse(m):
        w = numpy_helper.to_array(m.graph.initializer[1])
        idx = numpy_helper.from_array(np.arange(4, dtype=np.int64), "W1")
        vals = numpy_helper.from_array(w.reshape(-1)[:4], "W1")
        m.graph.sparse_initializer.append(helper.make_sparse_tensor(vals, idx, w.shape))
        del m.graph.initializer[1]

    def opset(version: int, ir: int | None = None) -> Edit:
        def edit(m):
            m.opset_import[0].version = version
            if ir is not None:
                m.ir_version = ir

        return edit

    def set_ir(ir: int) -> Edit:
        return lambda m: setattr(m, "ir_version", ir)

    def input_type(kind: str) -> Edit:
        def edit(m):
            t = m.graph.input[0].type
            if kind == "none":
                t.Clear()
            elif kind == "sequence":
                t.CopyFrom(helper.make_sequence_type_proto(helper.make_tensor_type_proto(1, [1, 32])))
            elif kind == "string":
                t.tensor_type.elem_type = TensorProto.STRING
            elif kind == "no-shape":
                t.tensor_type.ClearField("shape")
            elif kind == "symbolic":
                t.tensor_type.shape.dim[0].dim_param = "batch"
            elif kind == "zero-dim":
                t.tensor_type.shape.dim[0].dim_value = 0

        return edit

    edits: dict[str, Edit] = {
        "duplicate-initializer": dup_init,
        "cycle": cycle,
        "missing-input": lambda m: m.graph.node[0].input.__setitem__(1, "nowhere"),
        "duplicate-output": _add_node("Relu", ["x"], ["y"]),
        "dangling-output": lambda m: m.graph.output.append(helper.make_tensor_value_info("z", 1, [1])),
        "no-outputs": lambda m: m.graph.ClearField("output"),
        "no-nodes": lambda m: m.graph.ClearField("node"),
        "no-inputs": lambda m: m.graph.ClearField("input"),
        "value-info-wrong-shape": value_info([7, 7]),
        "value-info-wrong-type": value_info([1, 32], 7),
        "output-wrong-type": lambda m: setattr(m.graph.output[0].type.tensor_type, "elem_type", 7),
        "output-wrong-shape": lambda m: (
            m.graph.output[0].type.tensor_type.shape.dim[1].__setattr__("dim_value", 99)
        ),
        "sparse-initializer": sparse,
        "unknown-op": _add_node("NoSuchOp", ["y"], ["z"]),
        "unknown-attribute": lambda m: m.graph.node[1].attribute.append(helper.make_attribute("nope", 1)),
        "missing-attribute": lambda m: m.graph.node.append(
            helper.make_node("Transpose", ["y"], ["t"], perm=[5, 9])
        ),
        "opset-1": opset(1, 3),
        "opset-7": opset(7, 3),
        "opset-99": opset(99),
        "opset-none": lambda m: m.ClearField("opset_import"),
        "ir-0": set_ir(0),
        "ir-99": set_ir(99),
        "ir-3": set_ir(3),
        "input-untyped": input_type("none"),
        "input-sequence": input_type("sequence"),
        "input-string": input_type("string"),
        "input-no-shape": input_type("no-shape"),
        "input-symbolic": input_type("symbolic"),
        "input-zero-dim": input_type("zero-dim"),
        "initializer-as-input-wrong-type": lambda m: m.graph.input.append(
            helper.make_tensor_value_info("W0", 7, [32, 32])
        ),
        "huge-doc-string": lambda m: setattr(m, "doc_string", "d" * 5_000_000),
        "many-metadata": lambda m: [m.metadata_props.add(key=f"k{i}", value="v") for i in range(5000)],
    }
    return [_edited(f"graph-{k}", e) for k, e in edits.items()]


def _names() -> list[Case]:
    def rename(new: str) -> Edit:
        def edit(m):
            old = m.graph.initializer[0].name
            m.graph.initializer[0].name = new
            for k, node in enumerate(m.graph.node):
                node.input[:] = [new if i == old else i for i in node.input]
                node.name = f"{new}/node{k}"

        return edit

    def raw_name(blob: bytes, where: str) -> Callable[[bytes], bytes]:
        """Replace a UTF-8 name in the serialized model by invalid bytes of the same length."""

        def make(data: bytes) -> bytes:
            key = {"weight": b"W0", "input": b"x\x12", "node": b"matmul0"}[where]
            return data.replace(key, blob[: len(key)].ljust(len(key), b"\xff"))

        return make

    names = {
        "rich-close": "[/]",
        "rich-markup": "[bold red]W[/bold red]",
        "newline": "W\n0",
        "ansi": "\x1b[31mW\x1b[0m",
        "long-100k": "w" * 100_000,
        "emoji": "權重🙂",
        "path-like": "../../etc/passwd",
        "percent": "%s%n%d{}",
        "spaces": "  W 0  ",
        "dot": ".",
        "nul": "W\x00zero",
        "brackets-regex": "(a+)+$[",
    }
    out = [_edited(f"name-{k}", rename(v)) for k, v in names.items()]
    out += [
        _bytes_case(f"non-utf8-{where}", raw_name(b"\xc3\x28\xa0\xa1\xfe\xff\x80", where))
        for where in ("weight", "input", "node")
    ]
    return out


def _subgraphs() -> list[Case]:
    def nested(depth: int) -> Edit:
        def edit(m):
            leaf = helper.make_graph(
                [helper.make_node("Identity", ["y"], ["o"])],
                "b",
                [],
                [helper.make_tensor_value_info("o", 1, [1, 8])],
            )
            body = leaf
            for _ in range(depth):  # nested in then_branch only: the model grows linearly
                node = helper.make_node("If", ["c"], ["o"], then_branch=body, else_branch=leaf)
                body = helper.make_graph([node], "b", [], [helper.make_tensor_value_info("o", 1, [1, 8])])
            m.graph.initializer.append(numpy_helper.from_array(np.array(True), "c"))
            m.graph.node.extend(body.node)
            m.graph.output[0].name = "o"

        return edit

    def function(m):
        f = helper.make_function(
            "local",
            "Twice",
            ["a"],
            ["b"],
            [helper.make_node("Add", ["a", "a"], ["b"])],
            [helper.make_opsetid("", 13)],
        )
        m.functions.append(f)
        m.opset_import.append(helper.make_opsetid("local", 1))
        m.graph.node.append(helper.make_node("Twice", ["y"], ["z"], domain="local"))
        m.graph.output[0].name = "z"

    return [_edited(f"subgraph-if-depth-{d}", nested(d)) for d in (1, 12, 24)] + [
        _edited("local-function", function),
        _edited("long-chain", _chain(3000)),
    ]


def _chain(count: int) -> Edit:
    def edit(m):
        prev = "y"
        for i in range(count):
            m.graph.node.append(helper.make_node("Relu", [prev], [f"c{i}"]))
            prev = f"c{i}"
        m.graph.output[0].name = prev

    return edit


def cases() -> list[Case]:
    kinds = ("folder", "fifo", "loop", "dev-zero", "link-to-model")
    out = _files() + [_not_a_file(k) for k in kinds] + _tensors()
    out += (
        [_not_a_file(k, c) for k in ("fifo", "dev-zero") for c in ("decompress", "validate")]
        + _graphs()
        + _names()
        + _subgraphs()
    )
    out.append(Case(CAUSE, "src-missing", lambda f: ["compress", "none.onnx", "out.onnx"], "refused"))
    out.append(
        Case(CAUSE, "src-missing-newline", lambda f: ["compress", "no\nne.onnx", "out.onnx"], "refused")
    )
    out += [_edited("conv-model", lambda m: None, models.conv, "ok")]
    return out + _other_commands()


def _other_commands() -> list[Case]:
    """validate and decompress take the same hostile files."""
    blobs = {
        "truncated": lambda d: d[: len(d) // 2],
        "garbage": lambda d: b"\x12\x34" * 100,
        "empty": lambda d: b"",
    }

    def setup(command: str, make: Callable[[bytes], bytes], first: bool):
        def run(folder: Path) -> list[str]:
            models.save(models.mlp(), folder / "good.onnx")
            (folder / "bad.onnx").write_bytes(make(models.mlp().SerializeToString()))
            pair = ["bad.onnx", "good.onnx"] if first else ["good.onnx", "bad.onnx"]
            if command == "decompress":
                return ["decompress", "bad.onnx", "float.onnx", "--samples", "2"]
            return ["validate", *pair, "--samples", "2"]

        return run

    return [
        Case(CAUSE, f"{command}-{kind}{'-first' if first else ''}", setup(command, make, first), "refused")
        for command, first in (("validate", True), ("validate", False), ("decompress", True))
        for kind, make in blobs.items()
    ]
