"""Cause 7: models that pass onnx's checker but that onnxruntime cannot load (unknown ops and
domains, types without a kernel, bad attributes of its own ops). onnxq refuses what it cannot
check: exit 1 up front, with --no-validate too, never exit 0 with an output written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from hostile import models
from hostile.runner import Case

CAUSE = "onnxruntime refuses"


def _tail(
    op: str,
    domain: str = "",
    inputs: tuple[str, ...] = ("y",),
    elem: int = TensorProto.FLOAT,
    cast: int | None = None,
    **attrs,
) -> Callable[[], onnx.ModelProto]:
    """The MLP with one more node on its output y (cast first to elem when asked)."""

    def build() -> onnx.ModelProto:
        model = models.mlp()
        g = model.graph
        if domain and domain not in {o.domain for o in model.opset_import}:
            model.opset_import.append(helper.make_opsetid(domain, 1))
        source = list(inputs)
        if cast is not None:
            g.node.append(helper.make_node("Cast", ["y"], ["yc"], to=cast))
            source = ["yc" if i == "y" else i for i in source]
        g.node.append(helper.make_node(op, source, ["z"], domain=domain, **attrs))
        del g.output[:]
        g.output.append(helper.make_tensor_value_info("z", elem, None))
        return model

    return build


MODELS = {
    "custom-domain-op": _tail("Foo", "com.hostile"),
    "custom-domain-op-two-inputs": _tail("Bar", "org.example", ("y", "x")),
    "microsoft-unknown-op": _tail("NotAnOp", "com.microsoft"),
    "microsoft-matmulnbits-bad": _tail(
        "MatMulNBits", "com.microsoft", ("y", "W1"), K=8, N=8, bits=4, block_size=16
    ),
    "training-gradient": _tail("Gradient", "ai.onnx.preview.training", ("x", "y"), xs=["x"], y="y"),
    "sqrt-bfloat16": _tail("Sqrt", elem=TensorProto.BFLOAT16, cast=TensorProto.BFLOAT16),
    "add-uint16": _tail("Add", inputs=("y", "y"), elem=TensorProto.UINT16, cast=TensorProto.UINT16),
    "exp-int32": _tail("Exp", elem=TensorProto.INT32, cast=TensorProto.INT32),
    "resize-bad-mode": _tail("Resize", inputs=("y",), mode="cubicx"),
    "unknown-default-domain-op": _tail("NoSuchOp"),
}


def _case(name: str, build: Callable[[], onnx.ModelProto], extra: list[str]) -> Case:
    def setup(folder: Path) -> list[str]:
        models.save(build(), folder / "m.onnx")
        return ["compress", "m.onnx", "out.onnx", "--samples", "2", *extra]

    suffix = "-" + extra[0].strip("-") if extra else ""
    return Case(CAUSE, name + suffix, setup, "refused")


def cases() -> list[Case]:
    variants = [[], ["--no-validate"], ["--format", "qdq", "--no-validate"]]
    out = [_case(name, build, extra) for name, build in MODELS.items() for extra in variants]
    out += [
        Case(CAUSE, f"validate-{name}", _validate(build), "refused")
        for name, build in list(MODELS.items())[:3]
    ]
    return out


def _validate(build: Callable[[], onnx.ModelProto]):
    def setup(folder: Path) -> list[str]:
        models.save(build(), folder / "m.onnx")
        return ["validate", "m.onnx", "m.onnx", "--samples", "2"]

    return setup
