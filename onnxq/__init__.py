"""onnxq: shrink the weights of trained ONNX models to a few bits each, without retraining.

The names below load on first use (PEP 562), so that `import onnxq` (and the command line's
start, which Ctrl-C may interrupt) does not wait for onnxruntime and numpy until they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {
    "CODEBOOKS": "onnxq.quant.codebooks",
    "FORMATS": "onnxq.storage",
    "Config": "onnxq.api",
    "OnnxqError": "onnxq.errors",
    "Report": "onnxq.check.report",
    "Validation": "onnxq.check.validate",
    "compare_models": "onnxq.check.validate",
    "compress": "onnxq.api",
    "compress_model": "onnxq.api",
    "inspect": "onnxq.api",
}

__all__ = [
    "CODEBOOKS",
    "FORMATS",
    "Config",
    "OnnxqError",
    "Report",
    "Validation",
    "__version__",
    "compare_models",
    "compress",
    "compress_model",
    "inspect",
]

if TYPE_CHECKING:
    from onnxq.api import Config, compress, compress_model, inspect
    from onnxq.check.report import Report
    from onnxq.check.validate import Validation, compare_models
    from onnxq.errors import OnnxqError
    from onnxq.quant.codebooks import CODEBOOKS
    from onnxq.storage import FORMATS


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module 'onnxq' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
