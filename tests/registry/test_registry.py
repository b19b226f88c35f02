"""A new storage format and a new codebook are one file each plus one registry line.

toy_format.py and toy_codebook.py live beside this test; the registry lines are the
monkeypatch.setitem calls. The compressed model must run in onnxruntime, hold exactly
the quantized values, and decompress to a plain float model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import toy_codebook
import toy_format
from conftest import WEIGHT_NAMES, run, tiny_model
from onnx import numpy_helper

import onnxq
from onnxq.check.decompress import decompress_model
from onnxq.check.inspect import describe_output
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.storage import FORMATS


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(FORMATS, "toy", toy_format)
    monkeypatch.setitem(CODEBOOKS, "square", toy_codebook.CODEBOOK)


@pytest.mark.parametrize(("fmt", "codebook"), [("toy", "square"), ("toy", "exponential"), ("fold", "square")])
@pytest.mark.parametrize("bits", [3, 5])
def test_a_new_format_and_codebook_compress_and_decompress(registered, fmt, codebook, bits):
    model, feeds = tiny_model()
    compressed, report = onnxq.compress_model(model, onnxq.Config(bits=bits, codebook=codebook, format=fmt))
    assert sorted(w.name for w in report.weights) == sorted(WEIGHT_NAMES)
    assert {w.codebook for w in report.weights} == {codebook}
    if fmt == "toy":
        assert f"toy stores [{bits}] bits as a byte per weight" in report.notes
        assert report.output.indices == sum(w.elements for w in report.weights)  # a byte per code
    stored = describe_output(compressed, Path("m.onnx"), 0, numpy_helper.to_array).stored
    assert sorted((s.name, s.bits, s.format) for s in stored) == sorted((n, bits, fmt) for n in WEIGHT_NAMES)
    floats, count = decompress_model(compressed)
    assert count == len(WEIGHT_NAMES)
    expected = run(compressed, feeds)
    for got, want in zip(run(floats, feeds), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the decoded weights are the codebook's levels: at most 2^bits values per channel
    decoded = {t.name: t for t in floats.graph.initializer}
    conv = numpy_helper.to_array(decoded["conv.w"])
    assert max(len(np.unique(channel)) for channel in conv) <= 1 << bits


def test_auto_chooses_among_every_registered_codebook(registered):
    assert toy_codebook.CODEBOOK in CODEBOOKS["auto"].candidates()
    model, _ = tiny_model()
    _, report = onnxq.compress_model(model, onnxq.Config(bits=4, codebook="auto"))
    assert {w.codebook for w in report.weights} <= {"linear", "exponential", "kmeans", "square"}
