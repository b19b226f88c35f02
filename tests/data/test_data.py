"""Samples: read from npz files of either layout, checked against the model, batched for runs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, randn, value
from onnx import TensorProto, helper, numpy_helper

from onnxq.data import samples as data
from onnxq.data.samples import InputSpec
from onnxq.errors import OnnxqError


def token_model():
    """ids (N, S) int64 and an attention mask: a Gather from a (50, 4) table."""
    table = np.arange(200, dtype=np.float32).reshape(50, 4)
    return make_model(
        [
            helper.make_node("Gather", ["T", "ids"], ["e"]),
            helper.make_node("Identity", ["attention_mask"], ["m"]),
        ],
        [value("ids", ["N", "S"], TensorProto.INT64), value("attention_mask", ["N", "S"], TensorProto.INT64)],
        [value("e", ["N", "S", 4]), value("m", ["N", "S"], TensorProto.INT64)],
        [numpy_helper.from_array(table, "T")],
    )


def test_input_specs_name_every_fed_input_with_its_free_dims():
    specs = data.input_specs(token_model())
    assert specs == [
        InputSpec("ids", np.dtype(np.int64), ("N", "S")),
        InputSpec("attention_mask", np.dtype(np.int64), ("N", "S")),
    ]
    assert specs[0].key(1) == "S" and specs[0].fixed(1) is None
    unnamed = InputSpec("x", np.dtype(np.float32), (None, 3))
    assert unnamed.key(0) == "x[0]" and unnamed.fixed(1) == 3 and unnamed.shown() == "x (?, 3)"


def test_rectangular_files_give_one_sample_per_row(tmp_path, rng):
    np.savez(tmp_path / "a.npz", ids=rng.integers(0, 50, (5, 7)), attention_mask=np.ones((5, 7), np.int64))
    samples = data.read_samples(tmp_path / "a.npz", data.input_specs(token_model()), "inputs file")
    assert len(samples) == 5 and samples[2]["ids"].shape == (1, 7)


def test_one_array_per_run_lets_samples_differ_in_length(tmp_path, rng):
    arrays = {}
    for i, n in enumerate((3, 9, 5)):
        arrays[f"ids/{i}"] = rng.integers(0, 50, (1, n))
        arrays[f"attention_mask/{i}"] = np.ones((1, n), np.int64)
    np.savez(tmp_path / "runs.npz", **arrays)
    samples = data.read_samples(tmp_path / "runs.npz", data.input_specs(token_model()), "calibration file")
    assert [s["ids"].shape for s in samples] == [(1, 3), (1, 9), (1, 5)]
    assert data.shapes(samples) == {
        "ids": [[1, 3], [1, 9], [1, 5]],
        "attention_mask": [[1, 3], [1, 9], [1, 5]],
    }


def test_a_folder_reads_every_npz_in_name_order(tmp_path, rng):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, n in enumerate((4, 2)):
        np.savez(
            folder / f"{i:03d}.npz", ids=rng.integers(0, 50, (2, n)), attention_mask=np.ones((2, n), np.int64)
        )
    (folder / "notes.txt").write_text("ignored")
    samples = data.read_samples(folder, data.input_specs(token_model()), "calibration file")
    assert [s["ids"].shape for s in samples] == [(1, 4), (1, 4), (1, 2), (1, 2)]


def test_a_plain_key_serves_every_run(tmp_path, rng):
    model = make_model(
        [helper.make_node("Mul", ["x", "scale"], ["y"])],
        [value("x", [1, "T"]), value("scale", [])],
        [value("y", [1, "T"])],
    )
    np.savez(tmp_path / "r.npz", **{"x/0": randn(rng, 1, 3), "x/1": randn(rng, 1, 8), "scale": np.float32(2)})
    samples = data.read_samples(tmp_path / "r.npz", data.input_specs(model), "inputs file")
    assert [s["x"].shape for s in samples] == [(1, 3), (1, 8)] and all(s["scale"] == 2 for s in samples)


@pytest.mark.parametrize(
    "arrays, message",
    [
        (
            {"ids/0": np.zeros((1, 3)), "ids/2": np.zeros((1, 3)), "attention_mask": np.ones((1, 3))},
            "has no run 1",
        ),
        ({"ids/0": np.zeros((1, 3))}, r"lacks inputs \['attention_mask'\]"),
        (
            {"ids/0": np.zeros((1, 3)), "attention_mask": np.ones((1, 3)), "extra/0": np.ones(1)},
            r"\['extra'\]",
        ),
        ({"ids": np.zeros((2, 3)), "attention_mask": np.ones((3, 3))}, "different sample counts"),
        ({"ids": np.zeros((0, 3)), "attention_mask": np.ones((0, 3))}, "holds no samples"),
        (
            {"ids": np.zeros((2, 3, 1)), "attention_mask": np.ones((2, 3))},
            r"ids has shape \(1, 3, 1\) in a run",
        ),
        ({"ids": np.full((2, 3), 0.5), "attention_mask": np.ones((2, 3))}, "fractional values"),
        ({"ids": np.full((2, 3), 2.0**70), "attention_mask": np.ones((2, 3))}, "outside int64's range"),
    ],
)
def test_bad_files_are_one_line_errors_that_say_how_to_fix_them(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(OnnxqError, match=message) as info:
        data.read_samples(tmp_path / "bad.npz", data.input_specs(token_model()), "calibration file")
    assert "\n" not in str(info.value)


def test_missing_paths_and_empty_folders_are_errors(tmp_path):
    specs = data.input_specs(token_model())
    with pytest.raises(OnnxqError, match="does not exist"):
        data.read_samples(tmp_path / "nope.npz", specs, "inputs file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OnnxqError, match="holds no .npz files"):
        data.read_samples(tmp_path / "empty", specs, "inputs file")


def test_pickled_object_arrays_are_never_loaded(tmp_path):
    np.savez(tmp_path / "obj.npz", ids=np.array([{"a": 1}], dtype=object))
    with pytest.raises(OnnxqError, match="not an npz file"):
        data.read_samples(tmp_path / "obj.npz", data.input_specs(token_model()), "inputs file")


def test_batches_stack_samples_of_equal_shape_only(rng):
    specs = data.input_specs(token_model())
    samples = [
        {"ids": rng.integers(0, 50, (1, n)), "attention_mask": np.ones((1, n), np.int64)}
        for n in (3, 3, 3, 5, 5, 3)
    ]
    runs = list(data.batches(samples, specs, 2))
    assert [(feed["ids"].shape, count) for feed, count in runs] == [
        ((2, 3), 2),
        ((1, 3), 1),
        ((2, 5), 2),
        ((1, 3), 1),
    ]
    np.testing.assert_array_equal(runs[0][0]["ids"], np.concatenate([samples[0]["ids"], samples[1]["ids"]]))
    with pytest.raises(OnnxqError, match="at least 1"):
        list(data.batches(samples, specs, 0))


def test_a_model_whose_first_axis_is_no_batch_runs_one_sample_at_a_time():
    fixed = [InputSpec("x", np.dtype(np.float32), (1, 3))]
    time_major = [InputSpec("x", np.dtype(np.float32), ("seq_len", 3))]
    vector = [InputSpec("x", np.dtype(np.float32), ("N",))]
    batched = [InputSpec("x", np.dtype(np.float32), ("N", 3)), InputSpec("sr", np.dtype(np.int64), ())]
    assert [data.can_batch(s) for s in (fixed, time_major, vector, batched)] == [False, False, False, True]


def test_the_mask_input_and_the_rows_it_keeps():
    specs = data.input_specs(token_model())
    assert data.mask_input(specs) == "attention_mask"
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    assert data.kept_rows(np.zeros((2, 3, 8)), mask).tolist() == [True, True, False, True, False, False]
    assert data.kept_rows(np.zeros((6, 8)), mask).tolist() == [True, True, False, True, False, False]
    assert data.kept_rows(np.zeros((2, 8)), mask) is None  # pooled over the sequence: nothing to leave out


def test_only_an_array_numpy_left_unnamed_stands_for_the_only_input(tmp_path, rng):
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])], [value("x", ["N", 3])], [value("y", ["N", 3])]
    )
    specs = data.input_specs(model)
    np.savez(tmp_path / "unnamed.npz", randn(rng, 4, 3))  # stored as arr_0
    assert len(data.read_samples(tmp_path / "unnamed.npz", specs, "inputs file")) == 4
    np.savez(tmp_path / "named.npz", image=randn(rng, 4, 3))
    with pytest.raises(
        OnnxqError, match=r"lacks inputs \['x'\]; the model takes \['x'\], the file has \['image'\]"
    ):
        data.read_samples(tmp_path / "named.npz", specs, "inputs file")


def test_an_npz_too_big_for_memory_is_refused_from_its_headers_before_inflating(tmp_path, monkeypatch):
    """A deflate bomb: 30 MB of zeros in a 30 KB file. Its size comes from the .npy headers."""
    from onnxq.data import samples

    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((50, 3, 224, 224), np.float32))
    assert path.stat().st_size < 100_000
    assert 0 <= samples.declared_bytes(path) - 50 * 3 * 224 * 224 * 4 <= 256  # and the .npy header
    monkeypatch.setattr(samples, "_memory_bytes", lambda: 40_000_000)  # a machine of 40 MB
    loads = []
    monkeypatch.setattr(samples.np, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(
        OnnxqError, match=r"holds 29 MiB of arrays once loaded, more than 50% of this machine's 38 MiB"
    ):
        samples.read_npz(path, "inputs file")
    assert loads == []  # refused before numpy inflated anything


def _no_load(monkeypatch) -> list:
    from onnxq.data import samples

    loads: list = []
    monkeypatch.setattr(samples.np, "load", lambda *a, **k: loads.append(a))
    return loads


def test_an_npz_over_max_input_bytes_is_refused_from_its_headers_before_inflating(tmp_path, monkeypatch):
    path = tmp_path / "big.npz"
    np.savez_compressed(path, ids=np.zeros((64, 1024), np.int64), attention_mask=np.zeros((64, 1024)))
    specs = data.input_specs(token_model())
    loads = _no_load(monkeypatch)
    with pytest.raises(
        OnnxqError,
        match=r"holds 1 MiB of arrays once loaded, more than --max-input-bytes "
        r"\(1,000,000 bytes\); pass fewer samples, or raise --max-input-bytes",
    ):
        data.read_samples(path, specs, "inputs file", limit=1_000_000)
    assert loads == []


def test_a_folder_of_npz_files_counts_every_file_against_max_input_bytes(tmp_path, monkeypatch):
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", ids=np.zeros((1, 4000), np.int64), attention_mask=np.zeros((1, 4000)))
    loads = _no_load(monkeypatch)
    with pytest.raises(OnnxqError, match="more than --max-input-bytes"):
        data.read_samples(tmp_path, data.input_specs(token_model()), "inputs file", limit=150_000)
    assert loads == []


def test_members_that_are_no_npy_count_their_declared_size_and_bad_headers_are_refused(tmp_path, monkeypatch):
    import zipfile

    from onnxq.data import samples

    path = tmp_path / "raw.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ids", bytes(3_000_000))  # numpy would read it whole, as bytes
    assert samples.declared_bytes(path) == 3_000_000
    newer = tmp_path / "v9.npz"
    with zipfile.ZipFile(newer, "w") as z:
        z.writestr("ids.npy", b"\x93NUMPY\x09\x00" + bytes(100))
    loads = _no_load(monkeypatch)
    with pytest.raises(
        OnnxqError, match=r"is not an npz file \(ids.npy is in .npy format version \[9, 0\]\)"
    ):
        samples.read_npz(newer, "inputs file")
    assert loads == []
