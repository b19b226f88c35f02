"""onnxruntime sessions for onnxq: the only module that imports onnxruntime.

Its errors become OnnxqError with the first line of onnxruntime's message, so every caller
reports a failed load or run in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def session(model: bytes | str | Path, spin: bool = True, literal: bool = False) -> ort.InferenceSession:
    """A CPU session; spin=False when numpy work runs between the runs, so that
    onnxruntime's idle threads do not busy-wait on the cores numpy needs. literal: no graph
    optimizations, so that the arithmetic is the one the graph states. The extended ones fuse
    DequantizeLinear into integer kernels that round differently (a qdq model then differs
    from its decoded float model by 2e-3, relative L2, on ocr_cls at 8 bits), and even the
    basic ones (Conv fusions) moved the outputs of a 4-bit detector whose outputs are near
    their thresholds by 0.11; with none, the two agree exactly."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # onnxq reports failures itself, in one line
    if literal:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as exc:
        raise OnnxqError(f"onnxruntime cannot load the model: {first_line(exc)}") from None


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
