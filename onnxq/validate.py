"""Run the float and the compressed model on the same inputs and compare outputs.

For each output y (float) and y_q: max |y - y_q|, ||y - y_q|| / ||y||, cosine,
SQNR = 10 log10(sum y^2 / sum (y - y_q)^2), and top-1 agreement for class scores.
This is the only module that imports onnxruntime.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from onnxq.errors import OnnxqError

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


# onnxruntime's own exceptions derive from Exception directly; its Python layer
# raises ValueError and RuntimeError for bad feeds.
ORT_ERRORS = (
    _ort_state.Fail,
    _ort_state.InvalidArgument,
    _ort_state.InvalidGraph,
    _ort_state.InvalidProtobuf,
    _ort_state.NoSuchFile,
    _ort_state.NotImplemented,
    _ort_state.RuntimeException,
    RuntimeError,
    ValueError,
)


@dataclass
class OutputComparison:
    name: str
    max_abs_error: float
    relative_l2_error: float
    cosine: float
    sqnr_db: float
    top1_agreement: float | None  # None unless the output looks like class scores


@dataclass
class Validation:
    """The comparison; truthy when every threshold the user set was met."""

    inputs: str  # "random" or the npz path
    samples: int
    outputs: list[OutputComparison] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": bool(self)}


def session(model: bytes | str | Path, spin: bool = True) -> ort.InferenceSession:
    """A CPU session; spin=False when numpy work runs between the runs, so that
    onnxruntime's idle threads do not busy-wait on the cores numpy needs."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise OnnxqError(f"onnxruntime cannot load the model: {first}") from None


def random_feeds(
    sess: ort.InferenceSession, dims: dict[str, int], samples: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Inputs drawn from each input's dtype and shape; symbolic dims from dims, else 1."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(samples):
        feed: dict[str, np.ndarray] = {}
        for inp in sess.get_inputs():
            dtype = _ORT_TO_NUMPY.get(inp.type)
            if dtype is None:
                raise OnnxqError(f"input {inp.name!r} has type {inp.type}; pass --inputs FILE.npz")
            shape = []
            for d in inp.shape:
                if isinstance(d, int) and d >= 0:
                    shape.append(d)
                elif isinstance(d, str) and d in dims:
                    shape.append(dims[d])
                else:
                    shape.append(1)
            if np.issubdtype(dtype, np.floating):
                feed[inp.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_:
                feed[inp.name] = rng.random(shape) < 0.5
            else:
                feed[inp.name] = rng.integers(0, 2, shape).astype(dtype)
        feeds.append(feed)
    return feeds


def sample_count(
    data: dict[str, np.ndarray], source: str = "the calibration data", units: dict[str, int] | None = None
) -> int:
    """The common number of samples (rows of axis 0 over units), or OnnxqError saying what disagrees."""
    scalars = [n for n, a in data.items() if not a.ndim]
    if scalars:
        raise OnnxqError(f"{source}: {scalars} have no sample axis; stack samples along axis 0")
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
    if not counts or 0 in counts.values():
        raise OnnxqError(f"{source} holds no samples; give at least one along axis 0")
    return next(iter(counts.values()))


def iter_batches(
    data: dict[str, np.ndarray],
    batch: int,
    units: dict[str, int] | None = None,
    source: str = "the calibration data",
) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive slices of at most batch samples along axis 0 (views, not copies).

    A sample is units[n] rows of input n (default 1); source names the data in errors.
    """
    if batch < 1:
        raise OnnxqError(f"the batch size must be at least 1, not {batch}")
    units = units or {}
    for start in range(0, sample_count(data, source, units), batch):
        yield {n: a[start * units.get(n, 1) : (start + batch) * units.get(n, 1)] for n, a in data.items()}


# An input's numpy dtype, and its dims (None where free) when the model gives a shape.
InputSpec = tuple[np.dtype | None, list[int | None] | None]


def conform_inputs(
    data: dict[str, np.ndarray], expected: dict[str, InputSpec], source: str
) -> dict[str, np.ndarray]:
    """data cast to each input's dtype, or OnnxqError saying what does not fit the model and how to fix it.

    Samples go along axis 0, so every axis after it must match the model's fixed
    dimensions (a fixed first dimension d takes d rows per sample). Numbers cast
    to the input's type (float64 arrays to a float32 input, the usual case) as
    long as no value changes class: fractional values do not become integers, and
    NaN or infinity (also from overflow) is refused.
    """
    out = {}
    for name, array in data.items():
        a = np.asarray(array)
        dtype, dims = expected.get(name, (None, None))
        want = np.dtype(dtype).name if dtype is not None else "numbers"
        if a.dtype.kind not in "biuf":
            raise OnnxqError(
                f"{source}: {name} holds {a.dtype} values, the model's input takes {want}; store numbers"
            )
        to_integers = dtype is not None and np.dtype(dtype).kind in "biu" and a.dtype.kind == "f"
        if to_integers and not np.all(np.isfinite(a) & (a == np.round(a))):
            raise OnnxqError(
                f"{source}: {name} holds fractional values, the model's input takes {want}; store integers"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            a = a.astype(dtype, copy=False) if dtype is not None else a
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise OnnxqError(
                f"{source}: {name} holds NaN or infinite values (as {a.dtype}); give finite inputs"
            )
        if dims is not None and (
            a.ndim != len(dims) or any(d is not None and n != d for n, d in zip(a.shape[1:], dims[1:]))
        ):
            shown = ", ".join("N" if i == 0 or d is None else str(d) for i, d in enumerate(dims))
            raise OnnxqError(
                f"{source}: {name} has shape {a.shape}, the model's input is ({shown}) with samples along "
                "axis 0; reshape or resize them"
            )
        out[name] = a
    return out


def session_inputs(sess: ort.InferenceSession) -> dict[str, InputSpec]:
    """Each input's numpy dtype and dims (None where symbolic), as onnxruntime reports them."""
    return {
        i.name: (
            np.dtype(_ORT_TO_NUMPY[i.type]) if i.type in _ORT_TO_NUMPY else None,
            None if i.shape is None else [d if isinstance(d, int) and d >= 0 else None for d in i.shape],
        )
        for i in sess.get_inputs()
    }


def read_inputs(path: str | Path, names: list[str], what: str) -> dict[str, np.ndarray]:
    """The arrays of an npz keyed by input name, in names' order (one unnamed array is fine for
    one input), or OnnxqError saying how to fix the file. what names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise OnnxqError(f"{what} {path} does not exist; pass an .npz from numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = dict(npz)
    except (OSError, ValueError, AttributeError, TypeError, zipfile.BadZipFile) as exc:
        # A .npy file loads as one array, which is no context manager: AttributeError/TypeError.
        raise OnnxqError(f"{what} {path} is not an npz file ({exc}); write one with numpy.savez") from None
    if len(names) == 1 and len(data) == 1 and names[0] not in data:
        data = {names[0]: next(iter(data.values()))}
    missing = [n for n in names if n not in data]
    if missing:
        raise OnnxqError(
            f"{path} lacks inputs {missing}; the model expects {names}, the file has {sorted(data)}"
        )
    return {n: data[n] for n in names}


def npz_feeds(path: str | Path, sess: ort.InferenceSession) -> list[dict[str, np.ndarray]]:
    """Feeds from an npz keyed by input name (one unnamed array is fine for one input).

    With every input's first dimension free, all the samples go in one run; an input
    whose first dimension is fixed to d takes d rows per run, so the file's samples
    make several runs.
    """
    names = [i.name for i in sess.get_inputs()]
    data = read_inputs(path, names, "inputs file")
    specs = session_inputs(sess)
    data = conform_inputs(data, specs, str(path))
    units = {n: dims[0] for n, (_, dims) in specs.items() if dims and dims[0]}
    if not units:
        return [data]
    scalars = {n: a for n, a in data.items() if not a.ndim}  # a scalar input goes whole into every run
    samples = {n: a for n, a in data.items() if a.ndim}
    return [{**run, **scalars} for run in iter_batches(samples, 1, units, str(path))]


def _compare(name: str, ref: np.ndarray, got: np.ndarray) -> OutputComparison:
    a = ref.astype(np.float64).ravel()
    b = got.astype(np.float64).ravel()
    diff = a - b
    energy, noise = float(a @ a), float(diff @ diff)
    denom = np.sqrt(energy * float(b @ b))
    top1 = None
    if ref.ndim == 2 and ref.shape[1] >= 10 and np.issubdtype(ref.dtype, np.floating):
        top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
    return OutputComparison(
        name=name,
        max_abs_error=float(np.abs(diff).max()) if diff.size else 0.0,
        relative_l2_error=float(np.sqrt(noise / energy)) if energy > 0 else float(noise > 0),
        cosine=float(a @ b / denom) if denom > 0 else float(noise == 0),
        sqnr_db=float(10 * np.log10(energy / noise)) if noise > 0 else float("inf"),
        top1_agreement=top1,
    )


def compare_models(
    reference: bytes | str | Path,
    candidate: bytes | str | Path,
    inputs: str | Path | None = None,
    dims: dict[str, int] | None = None,
    samples: int = 4,
    seed: int = 0,
    min_sqnr: float | None = None,
    min_agreement: float | None = None,
) -> Validation:
    """Run both models on the same inputs and compare every output."""
    ref = session(reference)
    cand = session(candidate)
    ref_in = [(i.name, i.type) for i in ref.get_inputs()]
    cand_in = [(i.name, i.type) for i in cand.get_inputs()]
    if sorted(ref_in) != sorted(cand_in):
        raise OnnxqError(f"the models take different inputs: {ref_in} vs {cand_in}")
    feeds = npz_feeds(inputs, ref) if inputs else random_feeds(ref, dims or {}, samples, seed)
    names = [o.name for o in ref.get_outputs()]
    collected: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in names}
    for feed in feeds:
        try:
            ys = ref.run(names, feed)
            yq = cand.run(names, feed)
        except ORT_ERRORS as exc:
            first = str(exc).strip().splitlines()[0][:300]
            raise OnnxqError(f"onnxruntime failed on the validation inputs: {first}") from None
        for n, a, b in zip(names, ys, yq):
            collected[n].append((np.asarray(a), np.asarray(b)))
    result = Validation(inputs=str(inputs) if inputs else "random", samples=len(feeds))
    for n in names:
        pairs = collected[n]
        try:
            ref_all = np.concatenate([p[0].reshape(-1, *p[0].shape[1:]) for p in pairs])
            got_all = np.concatenate([p[1].reshape(-1, *p[1].shape[1:]) for p in pairs])
        except ValueError:  # outputs of varying shape: compare them flattened
            ref_all = np.concatenate([p[0].ravel() for p in pairs])
            got_all = np.concatenate([p[1].ravel() for p in pairs])
        if ref_all.ndim == 0 or not np.issubdtype(ref_all.dtype, np.number):
            continue
        cmp = _compare(n, ref_all, got_all)
        result.outputs.append(cmp)
        if min_sqnr is not None and cmp.sqnr_db < min_sqnr:
            result.failures.append(f"{n}: SQNR {cmp.sqnr_db:.1f} dB < --min-sqnr {min_sqnr}")
        if (
            min_agreement is not None
            and cmp.top1_agreement is not None
            and cmp.top1_agreement < min_agreement
        ):
            result.failures.append(
                f"{n}: top-1 agreement {cmp.top1_agreement:.3f} < --min-agreement {min_agreement}"
            )
    return result
