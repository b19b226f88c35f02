"""python -m onnxq: the same as the onnxq command."""

from onnxq.cli import app

app(prog_name="onnxq")
