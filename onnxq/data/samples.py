"""Model inputs as samples: read from npz files, checked against the model, batched for runs.

A sample is one run of the model, {input name: array}, each array in the shape the model
takes. Files give samples in either of two layouts (read_samples):

- rectangular: one array per input name, the samples along axis 0. An input whose first
  dimension is fixed to d takes d rows per sample; a 0-d array goes whole into every run.
- one array per run: keys "NAME/0", "NAME/1", ..., each in the model's own shape, so that
  samples may differ in length (a plain "NAME" key then serves every run).

A folder holds npz files of either layout, read in name order. Pickled object arrays are
never read.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxq.errors import OnnxqError, first_line

Sample = dict[str, np.ndarray]
Dim = int | str | None  # a fixed size, a symbolic dimension's name, or None: free and unnamed
_RUN_KEY = re.compile(r"(.+)/(\d+)")


@dataclass(frozen=True)
class InputSpec:
    """One fed input of the model: its numpy dtype and its dims (None when the model gives no shape)."""

    name: str
    dtype: np.dtype
    dims: tuple[Dim, ...] | None

    def fixed(self, axis: int) -> int | None:
        """The axis's fixed size, or None when it is free."""
        d = self.dims[axis] if self.dims is not None and axis < len(self.dims) else None
        return d if isinstance(d, int) else None

    def key(self, axis: int) -> str:
        """The name --dim gives this axis: its symbolic name, or INPUT[AXIS] when it has none."""
        d = self.dims[axis] if self.dims is not None else None
        return d if isinstance(d, str) else f"{self.name}[{axis}]"

    def shown(self) -> str:
        if self.dims is None:
            return f"{self.name} (any shape)"
        return f"{self.name} ({', '.join('?' if d is None else str(d) for d in self.dims)})"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a run feeds, in the graph's order (initializers listed as inputs are not fed)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tensor = inp.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)) if tensor.elem_type else None
        if dtype is None:
            raise OnnxqError(f"input {inp.name!r} is not a tensor; onnxq feeds tensor inputs only")
        dims = None
        if tensor.HasField("shape"):
            dims = tuple(
                int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                for d in tensor.shape.dim
            )
        specs.append(InputSpec(inp.name, dtype, dims))
    return specs


MAX_INPUT_BYTES = 1 << 30  # the default of --max-input-bytes: arrays of an input file, once loaded


def read_samples(
    path: str | Path, specs: Sequence[InputSpec], what: str, limit: int | None = None
) -> list[Sample]:
    """Every sample of an npz file, or of a folder of them, checked against the model's inputs.

    what names the file in errors ("inputs file", "calibration file"). limit: the most bytes the
    files' arrays may take once loaded (None: MAX_INPUT_BYTES), read from their headers before
    anything is inflated.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.glob("*.npz") if f.is_file())
        if not files:
            raise OnnxqError(
                f"{what} folder {path} holds no .npz files; put one npz per sample or batch there"
            )
    elif path.is_file():
        files = [path]
    else:
        raise OnnxqError(f"{what} {path} does not exist; pass an .npz from numpy.savez, or a folder of them")
    _check_size(path, sum(declared_bytes(f, what) for f in files), what, limit)
    samples: list[Sample] = []
    for file in files:
        samples.extend(_file_samples(file, specs, what, limit))
    if not samples:
        raise OnnxqError(f"{what} {path} holds no samples; give at least one along axis 0")
    return samples


def _file_samples(path: Path, specs: Sequence[InputSpec], what: str, limit: int | None) -> list[Sample]:
    return samples_from(read_npz(path, what, limit), specs, str(path))


def samples_from(
    arrays: dict[str, np.ndarray], specs: Sequence[InputSpec], source: str = "the data"
) -> list[Sample]:
    """The samples of one file's arrays (either layout, see the module docstring), checked against
    the model's inputs; source names them in errors."""
    names = [s.name for s in specs]
    if any(_RUN_KEY.fullmatch(k) and k not in names for k in arrays):
        samples = _runs(arrays, specs, source)
    else:
        samples = _rectangular(_by_input(arrays, names, source), specs, source)
    return [{s.name: conform(sample[s.name], s, source) for s in specs} for sample in samples]


MEMORY_SHARE = 0.5  # an npz may hold arrays of at most this share of the machine's memory
_HEADER_READERS = {
    1: np.lib.format.read_array_header_1_0,
    2: np.lib.format.read_array_header_2_0,
    3: np.lib.format.read_array_header_2_0,  # 2.0's layout, the header in UTF-8 (ASCII here)
}


def declared_bytes(path: Path, what: str = "inputs file") -> int:
    """The bytes an npz's members take once inflated and loaded, from the zip's directory and
    the .npy headers alone: a compressed member (a deflate bomb) is not inflated to find out.
    Each member counts as the larger of its .npy header's array and its declared file size (a
    member that is no .npy would be read whole). OnnxqError for a file that is no zip, or a
    member whose header cannot be read: numpy would load the members before it first."""
    try:
        with zipfile.ZipFile(path) as z:
            return sum(max(info.file_size, _npy_bytes(z, info)) for info in z.infolist())
    except OnnxqError:
        raise
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        RuntimeError,
        SyntaxError,
    ) as exc:
        raise OnnxqError(
            f"{what} {path} is not an npz file ({first_line(exc, 120)}); write one with numpy.savez"
        ) from None


def _npy_bytes(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """The array bytes a member's .npy header declares (0 for a member that is no .npy)."""
    with z.open(info) as member:
        if member.read(6) != b"\x93NUMPY":
            return 0
        version = member.read(2)
        if len(version) < 2 or version[0] not in _HEADER_READERS:
            raise ValueError(f"{info.filename} is in .npy format version {list(version)}")
        shape, _, dtype = _HEADER_READERS[version[0]](member)
    if any(d < 0 for d in shape):
        raise ValueError(f"{info.filename} declares the shape {shape}")
    return math.prod(shape) * np.dtype(dtype).itemsize


def _check_size(path: Path, size: int, what: str, limit: int | None) -> None:
    """OnnxqError when the arrays would take more than limit bytes, or half of the memory."""
    limit = MAX_INPUT_BYTES if limit is None else limit
    if size > limit:
        raise OnnxqError(
            f"{what} {path} holds {_mib(size)} of arrays once loaded, more than --max-input-bytes "
            f"({_mib(limit)}); pass fewer samples, or raise --max-input-bytes if the machine has the memory"
        )
    memory = _memory_bytes()
    if memory and size > MEMORY_SHARE * memory:
        raise OnnxqError(
            f"{what} {path} holds {_mib(size)} of arrays once loaded, more than "
            f"{MEMORY_SHARE:.0%} of this machine's {_mib(memory)}; pass fewer samples, or a "
            "folder of smaller npz files"
        )


def _mib(size: int) -> str:
    return f"{size:,} bytes" if size < 2**20 else f"{size / 2**20:,.0f} MiB"


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def read_npz(path: Path, what: str, limit: int | None = None) -> dict[str, np.ndarray]:
    """An npz file's arrays, without pickles; OnnxqError saying how to fix a file that is not one,
    or one whose arrays would take more than limit bytes (None: MAX_INPUT_BYTES) or MEMORY_SHARE
    of the machine's memory (checked from its headers, before anything is inflated)."""
    _check_size(path, declared_bytes(path, what), what, limit)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (
        OSError,
        ValueError,
        AttributeError,
        TypeError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        # A .npy file loads as one array, which is no context manager: AttributeError/TypeError.
        raise OnnxqError(
            f"{what} {path} is not an npz file ({first_line(exc, 120)}); write one with numpy.savez"
        ) from None


_UNNAMED = re.compile(r"arr_\d+")  # numpy.savez's name for an array given without one


def _by_input(arrays: dict[str, np.ndarray], names: list[str], source: str) -> dict[str, np.ndarray]:
    """The arrays keyed by input name; one unnamed array is fine for a one-input model."""
    if len(names) == 1 and len(arrays) == 1 and _UNNAMED.fullmatch(next(iter(arrays))):
        return {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise OnnxqError(
            f"{source} lacks inputs {missing}; the model takes {names}, the file has {sorted(arrays)}"
        )
    unknown = sorted(set(arrays) - set(names))
    if unknown:
        raise OnnxqError(
            f"{source} has arrays for {unknown}, which the model does not take; it takes {names}"
        )
    return {n: arrays[n] for n in names}


def _rectangular(data: dict[str, np.ndarray], specs: Sequence[InputSpec], source: str) -> list[Sample]:
    """Samples along axis 0: views of d rows each for an input whose first dimension is fixed to d."""
    scalars = {n: a for n, a in data.items() if a.ndim == 0}
    stacked = {n: a for n, a in data.items() if a.ndim > 0}
    units = {s.name: s.fixed(0) or 1 for s in specs if s.dims}
    count = sample_count(stacked, source, units)
    return [
        {
            **scalars,
            **{n: a[i * units.get(n, 1) : (i + 1) * units.get(n, 1)] for n, a in stacked.items()},
        }
        for i in range(count)
    ]


def sample_count(data: dict[str, np.ndarray], source: str, units: dict[str, int] | None = None) -> int:
    """The common number of samples (rows of axis 0 over units), or OnnxqError saying what disagrees."""
    units = units or {}
    ragged = {n: units[n] for n, a in data.items() if a.shape[0] % units.get(n, 1)}
    if ragged:
        name, unit = next(iter(ragged.items()))
        raise OnnxqError(
            f"{source}: the model takes {unit} rows of {name!r} per run; give a multiple of {unit}, "
            f"not {data[name].shape[0]}"
        )
    counts = {n: a.shape[0] // units.get(n, 1) for n, a in data.items()}
    if len(set(counts.values())) > 1:
        raise OnnxqError(f"{source}: inputs have different sample counts {counts}; give each as many")
    if 0 in counts.values():
        raise OnnxqError(f"{source} holds no samples; give at least one along axis 0")
    return next(iter(counts.values()), 1)


def _runs(arrays: dict[str, np.ndarray], specs: Sequence[InputSpec], source: str) -> list[Sample]:
    """Samples from keys NAME/i, one array per run; a plain NAME key serves every run."""
    names = [s.name for s in specs]
    indexed: dict[str, dict[int, np.ndarray]] = {}
    shared: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        m = _RUN_KEY.fullmatch(key)
        if m and key not in names:
            indexed.setdefault(m.group(1), {})[int(m.group(2))] = array
        else:
            shared[key] = array
    if len(names) == 1 and not shared and len(indexed) == 1 and _UNNAMED.fullmatch(next(iter(indexed))):
        indexed = {names[0]: next(iter(indexed.values()))}
    unknown = sorted((set(indexed) | set(shared)) - set(names))
    if unknown:
        raise OnnxqError(
            f"{source} has arrays for {unknown}, which the model does not take; it takes {names}"
        )
    missing = [n for n in names if n not in indexed and n not in shared]
    if missing:
        raise OnnxqError(
            f"{source} lacks inputs {missing}; give {missing[0]}/0, {missing[0]}/1, ... or one array"
        )
    count = max(len(v) for v in indexed.values())
    for name, runs in indexed.items():
        if sorted(runs) != list(range(count)):
            gaps = sorted(set(range(count)) - set(runs))
            raise OnnxqError(
                f"{source}: {name} has no run {gaps[0] if gaps else max(runs)} of {count}; number the runs "
                f"{name}/0 .. {name}/{count - 1} like the other inputs"
            )
    return [{n: indexed[n][i] if n in indexed else shared[n] for n in names} for i in range(count)]


def conform(array: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    """The array cast to the input's dtype, or OnnxqError saying what does not fit the model and how to fix it.

    Numbers cast to the input's type (float64 arrays to a float32 input, the usual case) as
    long as no value changes class: fractional values do not become integers, and NaN or
    infinity (also from overflow) is refused. Every fixed dimension must match, and the rank.
    """
    a = np.asarray(array)
    name, dtype = spec.name, spec.dtype
    if a.dtype.kind not in "biuf":
        raise OnnxqError(
            f"{source}: {name} holds {a.dtype} values, the model's input takes {dtype.name}; store numbers"
        )
    if dtype.kind in "biu" and a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a))):
        raise OnnxqError(
            f"{source}: {name} holds fractional values, the model's input takes {dtype.name}; store integers"
        )
    if dtype.kind in "iu" and a.dtype.kind in "iuf" and a.size:
        info = np.iinfo(dtype)
        if a.min() < info.min or a.max() > info.max:
            raise OnnxqError(
                f"{source}: {name} holds values outside {dtype.name}'s range; store {dtype.name} values"
            )
    with np.errstate(over="ignore", invalid="ignore"):
        a = a.astype(dtype, copy=False)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise OnnxqError(f"{source}: {name} holds NaN or infinite values (as {a.dtype}); give finite inputs")
    dims = spec.dims
    if dims is not None and (
        a.ndim != len(dims) or any(isinstance(d, int) and n != d for n, d in zip(a.shape, dims))
    ):
        raise OnnxqError(
            f"{source}: {name} has shape {a.shape} in a run, the model's input is {spec.shown()}; "
            "reshape or resize it"
        )
    return a


LENGTH_NAME = re.compile(r"seq|len|time|frame|sample|token|step|width|height|^[tls]$", re.IGNORECASE)


def can_batch(specs: Sequence[InputSpec]) -> bool:
    """Whether runs can stack samples along axis 0: every input is a scalar, or has two axes or more
    and a free first one not named like a length (a time-major input's first axis is no batch)."""
    return all(
        s.dims is not None
        and (
            not s.dims
            or (len(s.dims) >= 2 and s.fixed(0) is None and not LENGTH_NAME.search(str(s.dims[0] or "")))
        )
        for s in specs
    )


def batches(samples: Sequence[Sample], specs: Sequence[InputSpec], size: int) -> Iterator[tuple[Sample, int]]:
    """Runs of at most size consecutive samples stacked along axis 0, where the model and their
    shapes allow it; each with how many samples it holds. Scalars must be equal to share a run."""
    if size < 1:
        raise OnnxqError(f"the batch size must be at least 1, not {size}")
    if not can_batch(specs) or size == 1:
        for sample in samples:
            yield sample, 1
        return
    group: list[Sample] = []
    for sample in samples:
        if group and (len(group) == size or not _stackable(group[0], sample)):
            yield _stack(group), len(group)
            group = []
        group.append(sample)
    if group:
        yield _stack(group), len(group)


def _stackable(a: Sample, b: Sample) -> bool:
    return all(a[n].shape[1:] == b[n].shape[1:] if a[n].ndim else bool(np.array_equal(a[n], b[n])) for n in a)


def _stack(group: list[Sample]) -> Sample:
    if len(group) == 1:
        return group[0]
    return {n: np.concatenate([s[n] for s in group]) if a.ndim else a for n, a in group[0].items()}


def mask_input(specs: Sequence[InputSpec]) -> str | None:
    """The attention mask among the inputs: an integer or bool input named like a mask, of rank 2."""
    masks = [
        s.name
        for s in specs
        if "mask" in s.name.lower() and s.dtype.kind in "biu" and (s.dims is None or len(s.dims) == 2)
    ]
    return next((n for n in masks if "attention" in n.lower()), masks[0] if masks else None)


def kept_rows(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """Which rows of x (its leading axes flattened) are not padding, when x's leading axes are the
    mask's (batch, sequence) or their product; None when the mask does not line up with x."""
    if mask is None or mask.ndim != 2:
        return None
    keep = mask.reshape(-1) != 0
    if x.ndim >= 2 and x.shape[:2] == mask.shape:
        return keep
    if x.ndim >= 1 and x.shape[0] == mask.size and mask.shape[1] > 1:
        return keep
    return None


def shapes(samples: Sequence[Sample]) -> dict[str, list[list[int]]]:
    """Each input's distinct shapes over the samples, in order of first appearance."""
    out: dict[str, list[list[int]]] = {}
    for sample in samples:
        for name, a in sample.items():
            seen = out.setdefault(name, [])
            if list(a.shape) not in seen:
                seen.append(list(a.shape))
    return out
