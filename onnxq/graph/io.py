"""Load a model safely (external data confined to its folder) and save atomically."""

from __future__ import annotations

import errno
import math
import os
import re
import secrets
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from onnxq.errors import ModelLoadError, OnnxqError, first_line
from onnxq.graph import external
from onnxq.graph.select import iter_graphs


def parse(path: Path) -> onnx.ModelProto:
    """The model's graph: binary protobuf, or the text or JSON form its suffix names (as onnx
    reads it), falling back to binary for a binary file under another suffix."""
    tries = [None] if path.suffix in ("", ".onnx") else [None, "protobuf"]
    error: Exception | None = None
    for form in tries:
        try:
            with warnings.catch_warnings():  # onnx warns that its text form is experimental
                warnings.simplefilter("ignore")
                return onnx.load(str(path), format=form, load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - every parser's error means the same: unreadable
            error = error or exc
    raise ModelLoadError(
        f"{path} is not a readable ONNX model ({type(error).__name__}); "
        "check that the file is complete and really ONNX"
    )


def read_model(path: str | os.PathLike, lazy: bool = False) -> tuple[onnx.ModelProto, int]:
    """Read an ONNX model and its external data, refusing data outside its folder; and the
    model's size on disk: the .onnx file and its external data files. lazy: external tensors of
    external.LAZY_BYTES or more stay in their files (see external.py)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist; check the path")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file; pass the .onnx file itself")
    model = parse(path)
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path} holds no ONNX graph; check that the file is really ONNX")
    _check_text(model, path)
    _check_inline_sizes(model, path)
    folder = path.resolve().parent
    data_files: set[Path] = set()
    for tensor in external.all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        try:
            target = (folder / location).resolve()
            present = target.is_file()
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a name too long, a link loop
            raise ModelLoadError(
                f"external data of tensor {tensor.name!r} names {location[:80]!r}, which is not a usable "
                f"file ({first_line(exc)}); export the model with its data next to it"
            ) from None
        if not target.is_relative_to(folder):
            raise ModelLoadError(
                f"external data of tensor {tensor.name!r} points outside the model's folder "
                f"({location}); move the data file next to the model"
            )
        if not present:
            raise ModelLoadError(
                f"external data file {location} of tensor {tensor.name!r} is missing; put it in {folder}"
            )
        data_files.add(target)
    try:
        for tensor in external.all_tensors(model):
            if uses_external_data(tensor) and not (
                lazy and external.stored_bytes(tensor) >= external.LAZY_BYTES
            ):
                load_external_data_for_tensor(tensor, str(folder))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the external data of {path}: {exc}") from None
    try:
        # By path: the checker cannot take a model of 2 GB or more in memory.
        onnx.checker.check_model(str(path) if data_files else model)
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"{path} is not a valid ONNX model: {first_line(exc)}") from None
    return model, path.stat().st_size + sum(f.stat().st_size for f in data_files)


def _check_text(model: onnx.ModelProto, path: Path) -> None:
    """Every name in the graphs is UTF-8 text, as ONNX requires. protobuf hands back the raw
    bytes of a string field that is not (or fails where it decodes it), and onnxq would fail
    wherever it first used such a name."""

    def names():
        for graph in iter_graphs(model.graph):
            for node in graph.node:
                yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
                yield from (a.name for a in node.attribute)
            for items in (graph.initializer, graph.input, graph.output, graph.value_info):
                yield from (x.name for x in items)
        for p in model.metadata_props:
            yield from (p.key, p.value)
        yield from (o.domain for o in model.opset_import)

    try:
        bad = next((n for n in names() if not isinstance(n, str)), None)
    except UnicodeDecodeError:
        bad = b"?"
    if bad is not None:
        raise ModelLoadError(
            f"{path} has a name that is not UTF-8 text ({bad!r}), which ONNX requires; re-export the model"
        )


def _check_inline_sizes(model: onnx.ModelProto, path: Path) -> None:
    """Every inline raw_data holds exactly its shape's bytes (onnx's checker finds too few, not
    too many, and a reshape would fail later)."""
    for tensor in external.all_tensors(model):
        if uses_external_data(tensor) or not tensor.raw_data:
            continue
        expected = _raw_bytes(tensor)
        if expected is not None and len(tensor.raw_data) != expected:
            raise ModelLoadError(
                f"{path}: tensor {tensor.name!r} holds {len(tensor.raw_data)} bytes, but its shape "
                f"{list(tensor.dims)} needs {expected}; the file is damaged: export it again"
            )


# Element types packed below a byte (qdq stores 1-2 bit weights as INT2, 3-4 bit ones as INT4).
_SUB_BYTE_TYPES = {
    getattr(onnx.TensorProto, n): bits
    for n, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, n)
}


def input_files(src: str | os.PathLike) -> set[Path]:
    """The files a model consists of: the .onnx file and the external data files it names (read
    without the data; a model that cannot be parsed is its file alone, and read_model says why)."""
    path = Path(src)
    files = {path.resolve()}
    if not path.is_file():  # a FIFO would block the parse, /dev/zero never end it: read_model says why
        return files
    try:
        model = parse(path)
    except ModelLoadError:  # read_model reports it
        return files
    folder = path.resolve().parent
    for tensor in external.all_tensors(model):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            try:
                files.add((folder / location).resolve())
            except (OSError, ValueError, RuntimeError):
                continue  # read_model reports it
    return files


def is_one_of(path: str | os.PathLike, files: set[Path]) -> bool:
    """Whether path names one of files: the same path, or the same file through a link."""
    path = Path(path)
    try:
        if path.resolve() in files:
            return True
        return path.exists() and any(f.exists() and os.path.samefile(path, f) for f in files)
    except OSError:  # a name too long for the file system names no existing file
        return False


# The longest name onnxq writes beside the output: temp_data of _create_hidden's name,
# "." + name + "." + 12 hex digits + ".tmp" + ".data".
TEMP_EXTRA = len(".") + 1 + 12 + len(".tmp") + len(".data")


def check_name_length(dst: Path, what: str = "output") -> None:
    """The temporary file names of an output (or of the report: what) must fit the file
    system's limit on a name."""
    try:
        limit = os.pathconf(dst.parent.resolve(), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    size = len(os.fsencode(dst.name))
    if size + TEMP_EXTRA > limit:
        raise OnnxqError(
            f"the {what} name is {size} bytes long and its temporary files' up to {size + TEMP_EXTRA}; the file "
            f"system allows {limit} bytes per name, so choose a name of at most {limit - TEMP_EXTRA} bytes"
        )


def check_special(path: Path, what: str = "the output path") -> None:
    """An existing path that is a device, FIFO or socket is no file to replace: writing the
    output there would replace /dev/null itself, or wait on a FIFO."""
    try:
        special = path.exists() and not path.is_file() and not path.is_dir()
    except OSError:  # a name too long, a link loop: the other checks say so
        return
    if special:
        raise OnnxqError(f"{what} {path} is a device, FIFO or socket, not a file; choose another path")


def check_output_path(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """The output path, after checking that it can be written and overwrites no file of the input."""
    dst_path = Path(dst)
    if not dst_path.parent.resolve().is_dir():
        raise OnnxqError(f"output folder {dst_path.parent} does not exist; create it or choose another path")
    if dst_path.is_dir():
        raise OnnxqError(f"{dst_path} is a folder; give a file name such as {dst_path}/out.onnx")
    check_special(dst_path)
    if not os.access(dst_path.parent.resolve(), os.W_OK | os.X_OK):
        raise OnnxqError(
            f"cannot write to the folder {dst_path.parent}: no permission; choose another output path"
        )
    check_name_length(dst_path)
    inputs = input_files(src)
    if is_one_of(dst_path, inputs):
        raise OnnxqError(
            f"the output path {dst_path} is a file of the input model; choose a different output path"
        )
    if is_one_of(data_file(dst_path), inputs):
        raise OnnxqError(
            f"the output's external data would go to {data_file(dst_path)}, a file of the input model; "
            "choose a different output name"
        )
    return dst_path


PROTOBUF_LIMIT = 2**31 - 2**26  # 2 GiB, less a margin for the graph itself
INLINE_BYTES = 1024  # smaller tensors stay inline: onnxruntime failed on externalized shape tensors


def model_bytes(model: onnx.ModelProto) -> int:
    """The serialized size, or an estimate from the tensors when protobuf cannot serialize it.
    It serializes the model (protobuf's ByteSize), at a peak of twice its size: where an estimate
    will do, payload_bytes does not (fits_one_message)."""
    try:
        return model.ByteSize()
    except EncodeError:
        return payload_bytes(model)


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a tensor's values held in the message (0 when they are in an external file),
    from its shape and type, without copying them out (reading raw_data makes a copy)."""
    if uses_external_data(tensor):
        return 0
    packed = _raw_bytes(tensor)
    return tensor.ByteSize() if packed is None else packed


def _raw_bytes(tensor: onnx.TensorProto) -> int | None:
    """How many bytes raw_data holds for the tensor's shape and type; None for strings and types
    numpy cannot name."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    bits = _SUB_BYTE_TYPES.get(tensor.data_type, 8 * itemsize)
    return -(-math.prod(tensor.dims) * bits // 8)


def payload_bytes(model: onnx.ModelProto) -> int:
    """The bytes of every tensor the message holds: its serialized size, less the graph itself."""
    return sum(tensor_bytes(t) for t in external.all_tensors(model))


def fits_one_message(model: onnx.ModelProto) -> bool:
    """Whether the model can be serialized whole, judged from its tensors (PROTOBUF_LIMIT keeps a
    margin for the graph): the one rule for checking in memory and for writing inline."""
    return payload_bytes(model) < PROTOBUF_LIMIT


def serialize(model: onnx.ModelProto) -> bytes:
    """The model's bytes, for onnxruntime; OnnxqError when protobuf cannot hold it in one message."""
    try:
        return model.SerializeToString()
    except (EncodeError, ValueError):
        raise OnnxqError(
            "the model is over protobuf's 2 GB limit in memory; give its file with external data"
        ) from None


def has_data_files(src: str | os.PathLike, size: int) -> bool:
    """Whether the model at src keeps tensors in data files beside it: its size on disk, as
    read_model gives it, is more than its .onnx file's."""
    return size > Path(src).stat().st_size


def data_file(dst: str | os.PathLike) -> Path:
    """Where an output's external data goes: beside it (write_temp says when it has some)."""
    dst = Path(dst)
    return dst.parent / f"{dst.name}.data"


# A temporary file's name: ".{output name}.{pid: 6 hex digits}{6 random hex digits}.tmp", and
# ".data" after it for its external data. The pid tells a later run whether its writer is gone.
_TEMP_NAME = re.compile(r"\..+\.(?P<pid>[0-9a-f]{6})[0-9a-f]{6}\.tmp(\.data)?")


def _create_hidden(dst: Path) -> str:
    """A new empty file beside dst with a hidden, unused name, its mode as open() gives; the
    temporary files that killed runs left in the folder are removed first.

    (tempfile.mkstemp would make it 0600, and the output would keep that.)
    """
    remove_stale(dst.parent)
    while True:
        tmp = dst.parent / f".{dst.name}.{os.getpid() & 0xFFFFFF:06x}{secrets.token_hex(3)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
        except FileExistsError:
            continue
        except OSError as exc:
            raise _write_error(dst, exc) from None
        return str(tmp)


def remove_stale(folder: Path) -> list[Path]:
    """Remove the temporary files in folder whose writer no longer runs (a run killed with
    SIGKILL cannot remove its own); the files removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.fullmatch(entry.name)
        if m is None or _running(int(m.group("pid"), 16)) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue  # another run removed it first, or the folder is read-only: harmless
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process: alive
    return True


def write_temp(model: onnx.ModelProto, dst: str | os.PathLike, external: bool = False) -> Path:
    """Write the model to a hidden temporary file beside dst, and return its path.

    With external (the input kept its tensors in a data file), and for any model over
    protobuf's 2 GB limit, the tensors of INLINE_BYTES or more go to a hidden data file beside
    the temporary one (temp_data), which commit renames to data_file(dst): a previous output at
    dst, and its data, stay whole until then. Each tensor's bytes leave the message as they are
    written, so no serialized copy of the whole model is ever held. Such a model is checked
    here, by path, since check_built could not take one over the limit in memory.
    """
    dst = Path(dst)
    tmp = Path(_create_hidden(dst))
    try:
        if not external and fits_one_message(model):
            tmp.write_bytes(model.SerializeToString())
        else:
            onnx.save_model(
                model,
                str(tmp),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=temp_data(tmp).name,
                size_threshold=INLINE_BYTES,
            )
            os.chmod(temp_data(tmp), tmp.stat().st_mode & 0o777)  # onnx makes it 0600; as the model's
            check_written(tmp)
    except OSError as exc:  # a full disk, a file system gone read-only
        discard(tmp, dst)
        raise _write_error(dst, exc) from None
    except BaseException:
        discard(tmp, dst)
        raise
    return tmp


def _write_error(dst: Path, exc: OSError) -> OnnxqError:
    return OnnxqError(
        f"cannot write {dst}: {exc.strerror or exc}; check the free space and permissions of {dst.parent}"
    )


def temp_data(tmp: Path) -> Path:
    """The external data file of a temporary output, when it has one."""
    return tmp.parent / f"{tmp.name}.data"


def has_external_data(tmp: Path) -> bool:
    """Whether a temporary output keeps tensors in an external data file."""
    return temp_data(tmp).exists()


def written_size(tmp: Path, dst: str | os.PathLike) -> int:
    """Bytes of a temporary output, with its external data if it has any."""
    return tmp.stat().st_size + (temp_data(tmp).stat().st_size if has_external_data(tmp) else 0)


def check_built(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> None:
    """onnx's full check of a model onnxq built; one over the protobuf limit is checked by
    write_temp once written instead. When it fails and the original fails it too, the input is
    at fault (wrong dims or types, conflicting value_info, sparse initializers), not onnxq."""
    if fits_one_message(model):
        _full_check(model, original)


def check_written(tmp: Path, original: Path | None = None) -> None:
    """onnx's full check of a written output, by path (which works beyond 2 GB, and holds no
    second copy of the model in this process); the original's file as in check_built."""
    _full_check(tmp, original)


def _full_check(model: onnx.ModelProto | Path, original: onnx.ModelProto | Path | None) -> None:
    try:
        _checker(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        why = _full_check_failure(original) if original is not None else None
        if why:
            raise OnnxqError(
                f"the input model fails onnx's full check (strict shape inference): {why}; "
                "fix or re-export it, then compress it again"
            ) from None
        raise RuntimeError(f"onnxq produced an invalid model: {exc}") from exc  # a bug in onnxq


def _checker(model: onnx.ModelProto | Path) -> None:
    """onnx's full check, of a model in memory or of a file (by path, with its external data)."""
    onnx.checker.check_model(str(model) if isinstance(model, Path) else model, full_check=True)


def _full_check_failure(model: onnx.ModelProto | Path) -> str | None:
    """The first line of why a model (or the model file) fails onnx's full check, or None if it
    passes."""
    if isinstance(model, onnx.ModelProto) and not fits_one_message(model):
        return None
    try:
        _checker(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return first_line(exc)
    return None


def discard(tmp: Path, dst: str | os.PathLike) -> None:
    """Remove a temporary output and its external data, if they are still there (nothing is
    parsed: a partial file from a full disk is removed like any other)."""
    temp_data(tmp).unlink(missing_ok=True)
    tmp.unlink(missing_ok=True)


def finalize(tmp: Path, dst: str | os.PathLike) -> None:
    """Point a temporary output's external data at the name commit gives it, data_file(dst), so
    that the output's size is final before the rename (nothing to do without external data)."""
    if not has_external_data(tmp):
        return
    final = data_file(dst).name
    model = onnx.load(str(tmp), load_external_data=False)
    entries = [e for t in external.all_tensors(model) for e in t.external_data if e.key == "location"]
    if any(e.value != final for e in entries):
        for entry in entries:
            entry.value = final
        tmp.write_bytes(model.SerializeToString())  # the graph alone: the tensors are external


def commit(tmp: Path, dst: str | os.PathLike, also: Sequence[tuple[Path, Path]] = ()) -> None:
    """Move a temporary output into place with the files staged beside it (also: (temporary,
    final) pairs, such as the report): its data file first, pointed at its final name, then the
    others, the model last. If a rename fails, every final name gets back what it held before
    (replace_together) and the temporary files are removed."""
    try:
        finalize(tmp, dst)
        data = [(temp_data(tmp), data_file(dst))] if has_external_data(tmp) else []
        replace_together([*data, *also, (tmp, Path(dst))])
    except _ReplaceError as exc:
        discard(tmp, dst)
        raise _write_error(exc.final, exc.cause) from None
    except OSError as exc:
        discard(tmp, dst)
        raise _write_error(Path(dst), exc) from None
    except BaseException:
        discard(tmp, dst)
        raise
    finally:
        for staged, _ in also:
            staged.unlink(missing_ok=True)


class _ReplaceError(Exception):
    def __init__(self, final: Path, cause: OSError):
        self.final, self.cause = final, cause


def replace_together(moves: Sequence[tuple[Path, Path]]) -> None:
    """os.replace(source, final) for each pair, in order, as one step: each final file that
    exists is first kept under a hidden second name (a hard link, or a rename where the file
    system has none), and if any rename fails or is interrupted, every final name gets its kept
    file back, or is removed where there was none. The kept files go once all are in place.
    (Only a kill between two renames, a few microseconds, can leave a mix: the next run removes
    the kept files, as it removes any temporary file whose writer is gone.)"""
    kept: list[tuple[Path, Path | None]] = []
    try:
        for source, final in moves:
            kept.append((final, _keep(final)))
            try:
                os.replace(source, final)
            except OSError as exc:
                raise _ReplaceError(final, exc) from None
    except BaseException:
        for final, backup in reversed(kept):
            _put_back(final, backup)
        raise
    for _, backup in kept:
        if backup is not None:
            backup.unlink(missing_ok=True)


def _put_back(final: Path, backup: Path | None) -> None:
    """final as _keep found it: its kept file back, or nothing where there was nothing. Best
    effort: the error being raised says what went wrong first."""
    try:
        if backup is None:
            final.unlink(missing_ok=True)
        elif not final.is_symlink() and final.exists() and os.path.samefile(final, backup):
            backup.unlink()  # never replaced: both names are the one file (rename() would keep both)
        else:
            os.replace(backup, final)
    except OSError:
        pass


def _keep(final: Path) -> Path | None:
    """A second, hidden name for what is at final (None if nothing is), on which it stays when
    final is replaced: a hard link to a file; a symlink itself, or a file on a file system
    without hard links, is moved there meanwhile."""
    if not final.is_symlink() and not final.is_file():
        return None
    while True:
        backup = final.parent / f".{final.name}.{os.getpid() & 0xFFFFFF:06x}{secrets.token_hex(3)}.tmp"
        if os.path.lexists(backup):
            continue
        try:
            if final.is_symlink():
                os.replace(final, backup)
            else:
                _link_or_move(final, backup)
        except OSError as exc:
            raise _ReplaceError(final, exc) from None
        return backup


def _link_or_move(final: Path, backup: Path) -> None:
    try:
        os.link(final, backup)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        os.replace(final, backup)


def stage_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file's content to a hidden temporary file beside it (renamed into place by
    os.replace, or removed, by the caller); OnnxqError when it cannot be written."""
    path = Path(path)
    tmp = Path(_create_hidden(path))
    try:
        tmp.write_text(text)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a hidden temporary file and a rename: all of it or nothing."""
    tmp = stage_text(path, text)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_model(model: onnx.ModelProto, dst: str | os.PathLike) -> int:
    """Write the model to dst through a temporary file and a rename; return its size."""
    commit(write_temp(model, dst), dst)
    return Path(dst).stat().st_size
