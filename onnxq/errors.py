"""Errors that onnxq raises on bad input; each message says how to fix it."""


class OnnxqError(Exception):
    """A problem with the user's input or options. The CLI prints it and exits 1."""


class ModelLoadError(OnnxqError):
    """The input model cannot be read."""


class WeightError(OnnxqError):
    """A weight cannot be quantized (NaN or Inf values)."""


class FormatError(OnnxqError):
    """A storage format cannot represent what was asked of it."""
