"""External data read lazily: a weight is mapped from its file, quantized and dropped, and the
output is the same as with every tensor loaded first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import WEIGHT_NAMES, run, save_external, sha256
from onnx import numpy_helper

import onnxq
from onnxq.check.decompress import decompress
from onnxq.errors import ModelLoadError
from onnxq.graph import constfold, external, io


@pytest.fixture
def lazy_everything(monkeypatch):
    monkeypatch.setattr(external, "LAZY_BYTES", 1)  # the tiny model's tensors are all "large"


def test_a_lazy_read_leaves_large_tensors_in_their_file(tmp_path, tiny, lazy_everything):
    path = save_external(tiny[0], tmp_path / "m")
    model, _ = io.read_model(path, lazy=True)
    lazy = [t.name for t in external.all_tensors(model) if onnx.external_data_helper.uses_external_data(t)]
    assert set(WEIGHT_NAMES) <= set(lazy)
    eager = {t.name: numpy_helper.to_array(t) for t in io.read_model(path)[0].graph.initializer}
    read = external.reader(path.parent)
    for tensor in model.graph.initializer:
        np.testing.assert_array_equal(read(tensor), eager[tensor.name])
    external.load_remaining(model, path.parent)
    for a, b in zip(run(model, tiny[1]), run(tiny[0], tiny[1])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"exclude": ["^mm"]},
        {"format": "matmulnbits", "bits": 4},
        {"target_bits": 4},  # data-driven steps: the weights stay mapped, their sessions read them
        {"target_bits": 4, "exclude": ["^mm"]},  # a large tensor no session reads in place is loaded
        {"rounding": "gptq", "bias_correction": True},
    ],
)
def test_compress_reads_lazily_and_writes_the_same_bytes(tmp_path, tiny, monkeypatch, options):
    """And the output keeps its tensors in a data file beside it, as the input did."""
    path = save_external(tiny[0], tmp_path / "m")
    before = sha256(path), sha256(tmp_path / "m" / "model.bin")
    eager, lazy = tmp_path / "eager" / "out.onnx", tmp_path / "lazy" / "out.onnx"
    eager.parent.mkdir(), lazy.parent.mkdir()
    onnxq.compress(path, eager, validate=False, jobs=1, **options)
    monkeypatch.setattr(external, "LAZY_BYTES", 1)
    report = onnxq.compress(path, lazy, validate=False, jobs=1, **options)
    for name in ("out.onnx", "out.onnx.data"):
        assert sha256(lazy.parent / name) == sha256(eager.parent / name)
    assert (sha256(path), sha256(tmp_path / "m" / "model.bin")) == before
    out = onnx.load(lazy, load_external_data=False)
    assert {e.value for t in out.graph.initializer for e in t.external_data if e.key == "location"} == {
        "out.onnx.data"
    }
    assert report.output.total == lazy.stat().st_size + (lazy.parent / "out.onnx.data").stat().st_size
    assert any("out.onnx.data beside it (as the input's were)" in n for n in report.notes)
    for a, b in zip(run(str(lazy), tiny[1]), run(str(eager), tiny[1])):
        np.testing.assert_array_equal(a, b)


def test_an_inline_input_gives_an_inline_output_and_decompress_follows_its_input(tmp_path, tiny):
    inline = tmp_path / "inline.onnx"
    onnx.save(tiny[0], inline)
    onnxq.compress(inline, tmp_path / "a.onnx", validate=False, jobs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "inline.onnx"]
    decompress(tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx.data").exists()
    outside = save_external(tiny[0], tmp_path / "m")
    onnxq.compress(outside, tmp_path / "m" / "c.onnx", validate=False, jobs=1)
    decompress(tmp_path / "m" / "c.onnx", tmp_path / "m" / "d.onnx")
    assert (tmp_path / "m" / "d.onnx.data").stat().st_size > 0
    for a, b in zip(run(str(tmp_path / "m" / "d.onnx"), tiny[1]), run(str(tmp_path / "b.onnx"), tiny[1])):
        np.testing.assert_array_equal(a, b)


def test_released_keeps_shape_and_type_but_no_memory():
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    r = external.released(a)
    assert (r.shape, r.dtype, r.size, r.ndim) == (a.shape, a.dtype, a.size, a.ndim)
    assert r.strides == (0, 0) and not r.flags.writeable


def test_a_mapped_tensor_whose_length_does_not_match_its_shape_is_one_line(tmp_path, tiny):
    path = save_external(tiny[0], tmp_path / "m")
    model = onnx.load(path, load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.name == "mm.b")
    for entry in tensor.external_data:
        if entry.key == "length":
            entry.value = str(int(entry.value) - 4)
    with pytest.raises(ModelLoadError, match="'mm.b' holds .* needs 38400; re-export"):
        external.mapped_array(tensor, path.parent)


def test_constant_folding_leaves_a_tensor_still_in_its_file_alone(tmp_path, lazy_everything):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [2])
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Shape", ["w"], ["s"]), onnx.helper.make_node("Add", ["s", "s"], ["y"])],
        "g",
        [x],
        [y],
        [w],
    )
    path = save_external(
        onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), tmp_path / "m"
    )
    model, _ = io.read_model(path, lazy=True)
    assert constfold.fold_constants(model).nodes == 0  # the model with its data loaded folds it
    assert constfold.fold_constants(io.read_model(path)[0]).nodes == 1


def test_data_driven_steps_read_the_weights_from_their_maps(tmp_path, tiny, monkeypatch, lazy_everything):
    """Not from a copy: --target-bits held the 134M decoder's weights twice more before it ran."""
    from onnxq.refine import steps

    path = save_external(tiny[0], tmp_path / "m")
    seen = []
    real = steps.layer_statistics
    monkeypatch.setattr(
        steps, "layer_statistics", lambda m, ws, s, *a: seen.extend(w.array for w in ws) or real(m, ws, s, *a)
    )
    onnxq.compress(path, tmp_path / "out.onnx", validate=False, jobs=1, target_bits=4)
    assert seen and all(isinstance(a, np.memmap) for a in seen)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident size from /proc")
def test_evict_gives_back_a_maps_pages_and_keeps_its_values(tmp_path):
    def resident() -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS"))
        return int(line.split()[1]) << 10

    path = tmp_path / "w.bin"
    np.arange(16 << 20, dtype=np.float32).tofile(path)  # 64 MB
    mapped = np.memmap(path, dtype=np.float32, mode="r")
    total = float(mapped.sum(dtype=np.float64))
    before = resident()
    external.evict(mapped[::2], np.ones(3))  # a view of the map reaches its pages; other arrays are left
    assert before - resident() > 48 << 20
    assert float(mapped.sum(dtype=np.float64)) == total
