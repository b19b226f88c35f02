"""onnxruntime sessions for onnxq: the only module that imports onnxruntime.

Its errors become OnnxqError with the first line of onnxruntime's message, so every caller
reports a failed load or run in one line.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from onnxq.errors import OnnxqError, first_line

# onnxruntime's own exceptions derive from Exception directly; its Python layer
# raises ValueError and RuntimeError for bad feeds.
ORT_ERRORS = (
    _ort_state.Fail,
    _ort_state.InvalidArgument,
    _ort_state.InvalidGraph,
    _ort_state.InvalidProtobuf,
    _ort_state.NoSuchFile,
    _ort_state.NotImplemented,
    _ort_state.RuntimeException,
    RuntimeError,
    ValueError,
)

NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}

Session = ort.InferenceSession


def session(
    model: bytes | str | Path | onnx.ModelProto,
    spin: bool = True,
    literal: bool = False,
    initializers: Mapping[str, np.ndarray] | None = None,
    prepack: bool = True,
) -> ort.InferenceSession:
    """A CPU session; spin=False when numpy work runs between the runs, so that
    onnxruntime's idle threads do not busy-wait on the cores numpy needs. literal: no graph
    optimizations, so that the arithmetic is the one the graph states. The extended ones fuse
    DequantizeLinear into integer kernels that round differently (a qdq model then differs
    from its decoded float model by 2e-3, relative L2, on ocr_cls at 8 bits), and even the
    basic ones (Conv fusions) moved the outputs of a 4-bit detector whose outputs are near
    their thresholds by 0.11; with none, the two agree exactly. initializers: the values of the
    initializers that model holds as stubs (stubbed). prepack=False: the weights stay as they
    are, not also copied into the layout a kernel prefers (quicker to open, slower to run)."""
    options = _options(spin, literal, prepack)
    if initializers:
        return _with_initializers(model, initializers, options)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return _open(str(source) if isinstance(source, Path) else source, options)


def _options(spin: bool, literal: bool, prepack: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # onnxq reports failures itself, in one line
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if literal:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # Validation's sessions: each run of an unfolded decoder allocates every weight it
        # rebuilds, and an arena would keep that high-water mark (the 134M decoder's compressed
        # session peaked at 0.82 GB with one, 0.73 without).
        options.enable_cpu_mem_arena = False
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _open(source: bytes | str, options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as exc:
        raise OnnxqError(f"onnxruntime cannot load the model: {first_line(exc)}") from None


STUB = "onnxq-stub"  # where a stubbed initializer says its data is; onnxruntime never looks


def stubbed(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of model whose main-graph initializers named in arrays hold no data, only a reference
    to STUB: a session over it takes their values from session(..., initializers=arrays), where
    serializing the whole model for each session would copy every weight twice more (a
    134M-parameter decoder: 0.63 s and 0.8 GB of peak per session, against 1.68 s and 1.6 GB)."""
    out = onnx.ModelProto()
    copy_fields(model, out, skip="graph")
    copy_fields(model.graph, out.graph, skip="initializer")  # the weights' data is never copied
    for tensor in model.graph.initializer:
        if tensor.name not in arrays:
            out.graph.initializer.add().CopyFrom(tensor)
            continue
        stub = out.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        length = str(arrays[tensor.name].nbytes)
        for key, value in (("location", STUB), ("offset", "0"), ("length", length)):
            stub.external_data.add(key=key, value=value)
    return out


class Fed:
    """A session over a model whose initializers named in arrays are graph inputs instead, fed the
    arrays (in place, uncopied) on every run; a run's own feed may give any of them another value.
    Opening it copies no weight: onnxruntime copies every initializer that session(...,
    initializers=...) hands it (0.3 CPU-s and 537 MB of memory for 537 MB of weights), so a model
    run a segment at a time, or a segment run with one weight swapped at a time, paid that copy
    per session. Without graph optimizations (literal) the two compute the same; with them, the
    optimizations that need constant weights (prepacking, folding, layout changes) are lost."""

    def __init__(self, model: onnx.ModelProto, arrays: Mapping[str, np.ndarray], **options):
        self.arrays = {n: np.ascontiguousarray(a) for n, a in arrays.items()}
        self.inner = session(as_inputs(model, self.arrays), **options)

    def run(self, names: list[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.inner.run(names, {**self.arrays, **feed})


def as_inputs(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of model (its initializers named in arrays may be stubs) with those initializers as
    typed graph inputs."""
    out = onnx.ModelProto()
    copy_fields(model, out, skip="graph")
    copy_fields(model.graph, out.graph, skip="initializer")
    listed = {i.name for i in out.graph.input}  # below IR 4, every initializer is an input too
    for tensor in model.graph.initializer:
        if tensor.name not in arrays:
            out.graph.initializer.add().CopyFrom(tensor)
        elif tensor.name not in listed:
            out.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
    return out


def copy_fields(source, target, skip: str) -> None:
    """target gets every field that source sets, but skip."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _with_initializers(model, initializers: Mapping[str, np.ndarray], options: ort.SessionOptions):
    """session() over a stubbed model, each stub replaced by its array before any graph
    optimization (onnxruntime's AddExternalInitializers), so the session is the one the whole
    model would give."""
    names = list(initializers)
    # options holds bare pointers to these: they must live until the session is created
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(initializers[n])) for n in names]
    options.add_external_initializers(names, values)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    sess = _open(data, options)
    del values  # copied into the session
    return sess


def run(
    sess: ort.InferenceSession,
    feed: dict[str, np.ndarray],
    names: list[str] | None = None,
    what: str = "inputs",
) -> list[np.ndarray]:
    """sess.run, with onnxruntime's failure as one OnnxqError line naming what was fed."""
    try:
        return sess.run(names, feed)
    except ORT_ERRORS as exc:
        raise OnnxqError(f"onnxruntime failed on the {what}: {first_line(exc)}") from None


def give_back_memory() -> None:
    """Return the C heap's freed pages to the system (glibc's malloc_trim), so that a session
    opened next does not add its peak to memory onnx, protobuf or onnxruntime freed but the
    allocator kept. Elsewhere than glibc it does nothing."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)
