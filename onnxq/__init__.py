"""onnxq: shrink the weights of trained ONNX models to a few bits each, without retraining."""

from onnxq.api import Config, compress, compress_model
from onnxq.check.report import Report
from onnxq.check.validate import Validation, compare_models
from onnxq.errors import OnnxqError
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.storage import FORMATS

__version__ = "0.1.0"

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
]
