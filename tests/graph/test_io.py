"""Loading (external data confined to the model's folder) and atomic saving."""

from __future__ import annotations

import errno
import os
import shutil

import numpy as np
import onnx
import pytest
from conftest import relocate, run, save_external, sha256
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

import onnxq
from onnxq.errors import ModelLoadError
from onnxq.graph import io


def test_load_round_trip(tiny, tiny_path):
    loaded = io.read_model(tiny_path)[0]
    assert loaded.SerializeToString() == tiny[0].SerializeToString()


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        io.read_model(tmp_path / "nope.onnx")


def test_a_folder_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a file"):
        io.read_model(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"this is plain text, not a protobuf\n", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)), b""],
    ids=["text", "jpeg", "empty"],
)
def test_not_onnx(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="ONNX"):
        io.read_model(path)


def test_truncated_file(tiny_path, tmp_path):
    data = tiny_path.read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="ONNX"):
        io.read_model(path)


def test_invalid_graph_is_reported_by_the_checker(tmp_path, tiny):
    model = onnx.ModelProto()
    model.CopyFrom(tiny[0])
    model.graph.node[0].input[0] = "undefined_tensor"
    path = tmp_path / "invalid.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        io.read_model(path)


def test_external_data_loads(tmp_path, tiny):
    path = save_external(tiny[0], tmp_path / "m")
    assert (tmp_path / "m" / "model.bin").stat().st_size > 1000
    loaded = io.read_model(path)[0]
    for a, b in zip(run(loaded, tiny[1]), run(tiny[0], tiny[1])):
        np.testing.assert_array_equal(a, b)


def test_external_data_missing(tmp_path, tiny):
    path = save_external(tiny[0], tmp_path / "m")
    (tmp_path / "m" / "model.bin").unlink()
    with pytest.raises(ModelLoadError, match="model.bin .*is missing"):
        io.read_model(path)


def test_external_data_outside_the_model_folder_is_refused(tmp_path, tiny):
    path = save_external(tiny[0], tmp_path / "m")
    # The data really exists one level up: only its place is wrong.
    shutil.move(tmp_path / "m" / "model.bin", tmp_path / "x.bin")
    relocate(path, "../x.bin")
    with pytest.raises(ModelLoadError, match=r"outside the model's folder \(\.\./x\.bin\)"):
        io.read_model(path)


def test_external_data_absolute_path_outside_is_refused(tmp_path, tiny):
    path = save_external(tiny[0], tmp_path / "m")
    shutil.move(tmp_path / "m" / "model.bin", tmp_path / "x.bin")
    relocate(path, str(tmp_path / "x.bin"))
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        io.read_model(path)


def test_compress_reads_external_data_and_writes_one_file(tmp_path, tiny):
    path = save_external(tiny[0], tmp_path / "m")
    before = sha256(path), sha256(tmp_path / "m" / "model.bin")
    report = onnxq.compress(path, tmp_path / "out.onnx", validate=False)
    assert (sha256(path), sha256(tmp_path / "m" / "model.bin")) == before
    assert len(report.weights) == 6
    out = onnx.load(tmp_path / "out.onnx")
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in out.graph.initializer)
    assert run(out, tiny[1])[0].shape == (1, 11)


def test_check_output_path(tmp_path, tiny_path):
    assert io.check_output_path(tiny_path, tmp_path / "out.onnx") == tmp_path / "out.onnx"
    with pytest.raises(onnxq.OnnxqError, match="output folder .* does not exist"):
        io.check_output_path(tiny_path, tmp_path / "nowhere" / "out.onnx")
    with pytest.raises(onnxq.OnnxqError, match="is a file of the input model"):
        io.check_output_path(tiny_path, tiny_path)
    # The same file through another spelling of its path.
    with pytest.raises(onnxq.OnnxqError, match="is a file of the input model"):
        io.check_output_path(tiny_path, tmp_path / "." / tiny_path.name)
    with pytest.raises(onnxq.OnnxqError, match="is a folder"):
        io.check_output_path(tiny_path, tmp_path)


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path, tiny):
    dst = tmp_path / "out.onnx"
    dst.write_bytes(b"old content")
    size = io.save_model(tiny[0], dst)
    assert size == dst.stat().st_size == len(tiny[0].SerializeToString())
    assert onnx.load(dst).SerializeToString() == tiny[0].SerializeToString()
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_the_output_gets_the_mode_open_would_give(tmp_path, tiny):
    umask = os.umask(0o022)
    try:
        io.save_model(tiny[0], tmp_path / "out.onnx")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.onnx").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, tiny, monkeypatch):
    dst = tmp_path / "out.onnx"
    dst.write_bytes(b"old content")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", broken)
    with pytest.raises(onnxq.OnnxqError, match="cannot write .*: disk full"):
        io.save_model(tiny[0], dst)
    assert dst.read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_model_without_graph_is_refused(tmp_path):
    path = tmp_path / "empty_graph.onnx"
    path.write_bytes(helper.make_model(helper.make_graph([], "g", [], [])).SerializeToString())
    with pytest.raises(ModelLoadError, match="holds no ONNX graph"):
        io.read_model(path)


def test_ratio_counts_external_data(tmp_path, tiny):
    path = save_external(tiny[0], tmp_path / "m")
    report = onnxq.compress(path, tmp_path / "out.onnx", validate=False)
    on_disk = path.stat().st_size + (tmp_path / "m" / "model.bin").stat().st_size
    assert report.input_bytes == on_disk
    written = (tmp_path / "out.onnx").stat().st_size + (tmp_path / "out.onnx.data").stat().st_size
    assert report.ratio == pytest.approx(on_disk / written)  # its output's data file counts too


def test_an_output_over_the_protobuf_limit_goes_to_external_data_and_discard_removes_both(
    tmp_path, monkeypatch, tiny
):
    from onnxq.graph import io

    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 1000)  # the tiny model counts as huge
    dst = tmp_path / "out.onnx"
    tmp = io.write_temp(tiny[0], dst)
    assert io.has_external_data(tmp) and io.written_size(tmp, dst) > tmp.stat().st_size
    assert not io.data_file(dst).exists()  # written beside the temporary file until commit
    io.check_written(tmp)
    io.discard(tmp, dst)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_leaves_the_previous_output_and_its_data_whole(tmp_path, monkeypatch, tiny):
    """Over 2 GB the data file used to be written under its final name at once: a re-run that
    failed before the rename left the previous DST.onnx pointing at data that was gone."""
    from onnxq.graph import io

    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 1000)
    dst = tmp_path / "out.onnx"
    fresh = lambda: onnx.ModelProto.FromString(tiny[0].SerializeToString())  # saving externalizes in place
    io.commit(io.write_temp(fresh(), dst), dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    io.check_written(dst)  # the committed model reads its data under the final name

    tmp = io.write_temp(fresh(), dst)  # a second run, which then fails (validation, a signal)
    io.discard(tmp, dst)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    io.check_written(dst)


def test_discard_removes_a_partial_file_without_reading_it(tmp_path):
    """A full disk leaves a truncated temporary file: discard used to parse it (DecodeError)."""
    from onnxq.graph import io

    tmp = tmp_path / ".out.onnx.0123456789ab.tmp"
    tmp.write_bytes(b"\x08\x07\x12\xff")  # a protobuf cut short
    io.temp_data(tmp).write_bytes(b"\0" * 10)
    io.discard(tmp, tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra", [-100, 8], ids=["short", "long"])
def test_raw_data_of_the_wrong_size_is_a_damaged_file_not_a_reshape_error(tmp_path, extra):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((64, 32), np.float32), "w")
    w.raw_data = w.raw_data[:extra] if extra < 0 else w.raw_data + b"\0" * extra
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [w],
    )
    path = tmp_path / "damaged.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    with pytest.raises(
        onnxq.OnnxqError, match=r"tensor 'w' holds \d+ bytes, but its shape \[64, 32\] needs 8192"
    ):
        onnxq.compress(path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def matmul_graph(weight_name: str, initializer=None, sparse=None):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", weight_name], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [initializer] if initializer is not None else [],
        sparse_initializer=[sparse] if sparse is not None else [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_name_that_is_not_utf8_is_refused_when_read(tmp_path):
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.ones((64, 32), np.float32), "wZ")
    path = tmp_path / "bytes.onnx"
    path.write_bytes(matmul_graph("wZ", w).SerializeToString().replace(b"wZ", b"w\xff"))
    with pytest.raises(onnxq.OnnxqError, match="not UTF-8 text"):
        onnxq.compress(path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_an_input_that_fails_the_full_check_is_named_as_the_fault_not_onnxq(tmp_path):
    """A sparse initializer read by MatMul passes onnx's plain check and fails strict shape
    inference; the built model fails it too, and the user is told the input is at fault."""
    from onnx import helper, numpy_helper

    values = numpy_helper.from_array(np.ones(100, np.float32), "w")
    sparse = helper.make_sparse_tensor(
        values, numpy_helper.from_array(np.arange(100, dtype=np.int64), ""), [64, 32]
    )
    path = tmp_path / "sparse.onnx"
    path.write_bytes(matmul_graph("w", sparse=sparse).SerializeToString())
    with pytest.raises(onnxq.OnnxqError, match="the input model fails onnx's full check"):
        onnxq.compress(path, tmp_path / "out.onnx", min_elements=1)
    assert not (tmp_path / "out.onnx").exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, tiny):
    from onnxq.graph import io

    def full(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])  # half of it fits
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.Path, "write_bytes", full)
    with pytest.raises(
        onnxq.OnnxqError, match="cannot write .*out.onnx: No space left on device; check the free space"
    ):
        io.save_model(tiny[0], tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_without_write_permission_is_refused_before_the_work(tmp_path, tiny):
    from onnxq.graph import io

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes here")
        with pytest.raises(onnxq.OnnxqError, match="no permission"):
            io.check_output_path(tmp_path / "in.onnx", locked / "out.onnx")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("kind", ["nul", "too-long", "link-loop"])
def test_an_external_data_name_that_is_no_usable_file_is_one_line(kind, tmp_path, tiny):
    path = save_external(tiny[0], tmp_path / "m")
    location = {"nul": "a\x00b", "too-long": "x" * 300, "link-loop": "loop.bin"}[kind]
    relocate(path, location)
    if kind == "link-loop":
        os.symlink("loop2.bin", tmp_path / "m" / "loop.bin")
        os.symlink("loop.bin", tmp_path / "m" / "loop2.bin")
    with pytest.raises(onnxq.OnnxqError, match="which is not a usable file"):
        onnxq.compress(path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_an_output_with_external_data_reports_the_bytes_on_disk_after_its_rename(tmp_path, monkeypatch, tiny):
    """The graph names its data file's final name only at commit: the report counts that file."""
    from onnxq.graph import io

    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 1000)
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny[0], src)
    report = onnxq.compress(src, tmp_path / "out.onnx", validate=False, min_elements=1)
    on_disk = (tmp_path / "out.onnx").stat().st_size + (tmp_path / "out.onnx.data").stat().st_size
    assert report.output.total == on_disk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data", "tiny.onnx"]


@pytest.mark.parametrize(
    ("name", "content", "readable"),
    [
        ("model.json", None, True),  # a binary model under another suffix
        ("model.onnxtxt", None, True),
        ("bad.json", b'{"a": 1}', False),
        ("bad.textproto", b"ir_version: {", False),
    ],
)
def test_a_model_is_read_whatever_its_suffix_and_a_bad_text_form_is_one_line(
    tmp_path, tiny, name, content, readable
):
    path = tmp_path / name
    path.write_bytes(content if content is not None else tiny[0].SerializeToString())
    if readable:
        assert onnxq.compress(path, tmp_path / "out.onnx", validate=False).weights
    else:
        with pytest.raises(onnxq.OnnxqError, match="is not a readable ONNX model"):
            onnxq.compress(path, tmp_path / "out.onnx")


def test_a_later_save_removes_the_temporary_files_of_a_killed_run_and_no_live_ones(tmp_path, tiny):
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead, alive = int(gone.stdout), os.getpid()
    stale = [
        tmp_path / f".out.onnx.{dead:06x}a1b2c3.tmp",
        tmp_path / f".out.onnx.{dead:06x}a1b2c3.tmp.data",
        tmp_path / f".other.onnx.{dead:06x}d4e5f6.tmp",
    ]
    live = tmp_path / f".out.onnx.{alive:06x}a1b2c3.tmp"
    mine = [tmp_path / ".notes.tmp", tmp_path / f"out.onnx.{dead:06x}a1b2c3.tmp"]  # not onnxq's names
    for path in [*stale, live, *mine]:
        path.write_bytes(b"partial")
    io.save_model(tiny[0], tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.onnx", live.name, *(p.name for p in mine)]
    )


@pytest.mark.parametrize("failing", ["out.onnx.data", "report.json", "out.onnx"])
@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_commit_puts_back_the_output_its_data_and_the_report(
    tmp_path, monkeypatch, tiny, failing, error
):
    """The model, its data file and the report go into place together: when any rename fails
    (or Ctrl-C lands), each of them holds again exactly what it held, and no file is left over."""
    from onnxq.graph import io

    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 1000)
    dst, report = tmp_path / "out.onnx", tmp_path / "report.json"
    fresh = lambda: onnx.ModelProto.FromString(tiny[0].SerializeToString())  # saving externalizes in place
    io.commit(io.write_temp(fresh(), dst), dst, [(io.stage_text(report, "first\n"), report)])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["out.onnx", "out.onnx.data", "report.json"]

    second = fresh()
    second.producer_name = "second run"  # other bytes in every file
    real, calls = os.replace, []

    def replace(source, final):
        calls.append(os.path.basename(final))
        if calls.count(failing) == 1 and calls[-1] == failing:
            raise error  # the move into place fails; putting back the kept file works
        real(source, final)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(onnxq.OnnxqError if isinstance(error, OSError) else KeyboardInterrupt):
        io.commit(io.write_temp(second, dst), dst, [(io.stage_text(report, "second\n"), report)])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    io.check_written(dst)


def test_a_commit_replaces_the_output_its_data_and_the_report_and_keeps_nothing_else(
    tmp_path, monkeypatch, tiny
):
    from onnxq.graph import io

    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 1000)
    dst, report = tmp_path / "out.onnx", tmp_path / "report.json"
    fresh = lambda: onnx.ModelProto.FromString(tiny[0].SerializeToString())
    for text in ("first\n", "second\n"):
        model = fresh()
        model.producer_name = text.strip()
        io.commit(io.write_temp(model, dst), dst, [(io.stage_text(report, text), report)])
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data", "report.json"]
        assert report.read_text() == text
        assert onnx.load(str(dst)).producer_name == text.strip()


def test_a_failed_first_commit_leaves_no_file(tmp_path, monkeypatch, tiny):
    from onnxq.graph import io

    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 1000)
    dst, report = tmp_path / "out.onnx", tmp_path / "report.json"
    real = os.replace

    def replace(source, final):
        if os.path.basename(final) == "out.onnx":
            raise OSError(28, "No space left on device")
        real(source, final)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(onnxq.OnnxqError, match="cannot write .*out.onnx: No space left on device"):
        io.commit(io.write_temp(tiny[0], dst), dst, [(io.stage_text(report, "r\n"), report)])
    assert list(tmp_path.iterdir()) == []


def test_without_hard_links_a_failed_commit_still_puts_everything_back(tmp_path, monkeypatch, tiny):
    """On a file system without hard links (EPERM) the files are moved aside instead."""
    from onnxq.graph import io

    dst, report = tmp_path / "out.onnx", tmp_path / "report.json"
    io.commit(io.write_temp(tiny[0], dst), dst, [(io.stage_text(report, "first\n"), report)])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    real, calls = os.replace, []

    def replace(source, final):
        calls.append(os.path.basename(final))
        if calls.count("out.onnx") == 1 and calls[-1] == "out.onnx":
            raise OSError(28, "No space left on device")  # the output's move into place
        real(source, final)

    monkeypatch.setattr(io.os, "link", no_links)
    monkeypatch.setattr(io.os, "replace", replace)
    second = onnx.ModelProto.FromString(tiny[0].SerializeToString())
    second.producer_name = "second run"
    with pytest.raises(onnxq.OnnxqError, match="No space left on device"):
        io.commit(io.write_temp(second, dst), dst, [(io.stage_text(report, "second\n"), report)])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@given(
    dtype=st.sampled_from(
        ["float32", "float16", "float64", "int64", "int8", "uint8", "bool", "int4", "int2"]
    ),
    shape=st.lists(st.integers(0, 7), min_size=0, max_size=3),
)
@settings(max_examples=60, deadline=None)
def test_tensor_bytes_is_what_raw_data_holds_without_reading_it(dtype, shape):
    """From the shape and type: sub-byte types packed, as onnx stores them."""
    kind = {"int4": onnx.TensorProto.INT4, "int2": onnx.TensorProto.INT2}.get(dtype)
    if kind is None:
        tensor = onnx.numpy_helper.from_array(np.zeros(shape, dtype), "t")
    else:
        tensor = helper.make_tensor("t", kind, shape, np.zeros(shape, np.int8).ravel().tolist())
        if not tensor.raw_data:  # onnx writes sub-byte values as int32_data: pack them as files do
            tensor = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), "t")
    assert io.tensor_bytes(tensor) == len(tensor.raw_data)


def test_an_external_output_s_data_file_has_the_model_file_s_mode(tmp_path, tiny):
    src = save_external(tiny[0], tmp_path / "m")
    onnxq.compress(src, tmp_path / "out.onnx", validate=False, jobs=1)
    data = tmp_path / "out.onnx.data"
    assert data.stat().st_mode & 0o777 == (tmp_path / "out.onnx").stat().st_mode & 0o777
    graph = onnx.load(tmp_path / "out.onnx", load_external_data=False).graph
    outside = [t for t in graph.initializer if t.external_data]
    assert outside and all(io.tensor_bytes(t) == 0 for t in outside)  # nothing of theirs in the message


def test_a_model_not_checked_in_memory_is_written_beside_its_data_and_checked_there(
    tmp_path, monkeypatch, tiny
):
    """check_built and write_temp share one rule (fits_one_message): with the limit between the
    tensors' bytes and the whole message's, the model is checked in memory and written inline;
    below the tensors' bytes, neither, and write_temp checks the written file instead."""
    model = tiny[0]
    payload = io.payload_bytes(model)
    assert payload < model.ByteSize()
    checked = []
    monkeypatch.setattr(io, "_checker", lambda m: checked.append(type(m).__name__))
    for limit, inline in ((payload + 1, True), (payload, False)):
        monkeypatch.setattr(io, "PROTOBUF_LIMIT", limit)
        checked.clear()
        io.check_built(model)
        tmp = io.write_temp(onnx.ModelProto.FromString(model.SerializeToString()), tmp_path / "out.onnx")
        assert io.has_external_data(tmp) is not inline
        assert checked == (["ModelProto"] if inline else ["PosixPath"])
        io.discard(tmp, tmp_path / "out.onnx")
