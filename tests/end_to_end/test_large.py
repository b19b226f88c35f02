"""Models of 2 GB and more: loaded with their external data, written with it, compressed and run.

Slow (it writes 2.15 GB twice) and memory-hungry (8.6 GB peak): a heavy test, which CI runs
with `python -m pytest -m heavy`. The bytes live in a temporary folder removed afterwards.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from conftest import run
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.graph.io import PROTOBUF_LIMIT

pytestmark = pytest.mark.heavy

SIDE = 16_400  # two float32 SIDE x SIDE tensors: 2.15 GB, just over protobuf's limit


def big_model(folder) -> tuple:
    """x -> MatMul(small) -> MatMul(big0 = I) -> MatMul(big1 = 2 I), saved with external data."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, SIDE)).astype(np.float32) * 0.1, "small")]
    nodes = [helper.make_node("MatMul", ["x", "small"], ["h0"])]
    for i in range(2):
        w = np.zeros((SIDE, SIDE), np.float32)
        np.fill_diagonal(w, 1.0 + i)
        inits.append(numpy_helper.from_array(w, f"big{i}"))
        del w
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"big{i}"], [f"h{i + 1}"]))
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("h2", TensorProto.FLOAT, [2, SIDE])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = folder / "big.onnx"
    onnx.save_model(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="big.data"
    )
    x = rng.standard_normal((2, 64)).astype(np.float32)
    return path, {"x": x}, 2.0 * (x @ numpy_helper.to_array(inits[0]))


def test_a_model_over_2gb_compresses_writes_external_data_and_loads(tmp_path):
    src, feeds, expected = big_model(tmp_path)
    assert (tmp_path / "big.data").stat().st_size > PROTOBUF_LIMIT
    dst = tmp_path / "out" / "small.onnx"
    dst.parent.mkdir()
    # The big tensors stay float (excluded), so the output is over 2 GB too.
    report = onnxq.compress(src, dst, bits=5, exclude=("^big",), validate=False)
    assert [w.name for w in report.weights] == ["small"]
    assert any("small.onnx.data beside it (as the input's were)" in n for n in report.notes)
    data = dst.parent / "small.onnx.data"
    assert data.stat().st_size > PROTOBUF_LIMIT
    assert dst.stat().st_size < 1 << 20  # the graph itself stays small; tiny tensors stay inline
    assert report.output.total == dst.stat().st_size + data.stat().st_size
    assert sorted(p.name for p in dst.parent.iterdir()) == ["small.onnx", "small.onnx.data"]
    got = run(str(dst), feeds)[0]  # onnxruntime loads it, external data and all
    np.testing.assert_allclose(got, expected, rtol=0.1, atol=0.05 * np.abs(expected).max())


def sha256(path) -> str:
    with open(path, "rb") as f:  # a part at a time: the data file is over 2 GB
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_a_rerun_over_a_2gb_output_keeps_it_whole_when_it_fails_and_replaces_it_when_not(
    tmp_path, monkeypatch
):
    """The output's DST.data is renamed with the output, together: a re-run that fails as it
    moves its files into place leaves the earlier output and its 2 GB of data byte for byte."""
    from onnxq.graph import io

    src, feeds, expected = big_model(tmp_path)
    dst = tmp_path / "out" / "small.onnx"
    dst.parent.mkdir()
    onnxq.compress(src, dst, bits=5, exclude=("^big",), validate=False)
    before = {p.name: sha256(p) for p in dst.parent.iterdir()}
    assert sorted(before) == ["small.onnx", "small.onnx.data"]

    real, calls = io.os.replace, []

    def replace(source, final):
        calls.append(final)
        if str(final).endswith("small.onnx") and sum(str(c).endswith("small.onnx") for c in calls) == 1:
            raise OSError(28, "No space left on device")  # the model's own rename, after its data's
        real(source, final)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(onnxq.OnnxqError, match="No space left on device"):
        onnxq.compress(src, dst, bits=4, exclude=("^big",), validate=False)
    assert any(str(c).endswith("small.onnx.data") for c in calls)  # the data had been moved in
    assert {p.name: sha256(p) for p in dst.parent.iterdir()} == before
    monkeypatch.undo()

    onnxq.compress(src, dst, bits=4, exclude=("^big",), validate=False)
    after = {p.name: sha256(p) for p in dst.parent.iterdir()}
    assert sorted(after) == sorted(before) and after["small.onnx"] != before["small.onnx"]
    got = run(str(dst), feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=0.2, atol=0.1 * np.abs(expected).max())
