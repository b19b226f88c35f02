"""Run hostile cases as a user would, and list the rules of issue 18 that each one breaks.

A case fills a fresh folder with its files and gives onnxq's arguments; onnxq then runs in
that folder, in its own process group, through a copy of the console script kept elsewhere
(so that, as for an installed `onnxq`, the folder is not on the parent's import path). The
rules, checked after every run:

- exit: 0/1/2/3, or 130/143 after SIGINT/SIGTERM, and what the case expects (a refusal is 1 or 2);
- traceback: none, and no "Exception ignored" either;
- error line: a failure ends stderr with one line starting "error: ", and has only that one;
- input changed: every file that was there before is byte-identical afterwards (an output the
  case may write excepted, after a success);
- left behind: after a failure no new file at all; after a success only the case's outputs,
  and never a hidden temporary file;
- folder code: no module planted in the folder ran (each writes a CANARY-* file if imported);
- processes: nothing of the run's process group outlives it;
- read outside: no output holds the bytes of the secret file kept outside the folder;
- time and memory: under 120 s and 4 GB (peak RSS of the run and its reaped workers).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import onnxq

REPO = Path(onnxq.__file__).resolve().parents[1]  # the checkout under test, not an installed copy
TIME_LIMIT = 120.0
MEMORY_LIMIT = 4 * 2**30
SECRET = (b"ONNXQ-HOSTILE-SECRET-" * 200)[:4096]  # outside every case's folder; the size of W0
CANARY = "CANARY-"
OUTPUTS = ("out.onnx", "out.onnx.data", "report.json", "report.md", "float.onnx", "float.onnx.data")
SIGNAL_EXITS = {signal.SIGINT: 130, signal.SIGTERM: 143}
LAUNCHER = """import sys
from onnxq.__main__ import main
if __name__ == "__main__":
    sys.exit(main())
"""


@dataclass(frozen=True)
class Case:
    """One hostile run. setup fills the folder (onnxq's working folder) and returns the arguments."""

    cause: str
    name: str
    setup: Callable[[Path], Sequence[str]]
    expect: str = "any"  # "ok": exit 0; "refused": exit 1 or 2; "any": any allowed exit
    outputs: tuple[str, ...] = OUTPUTS  # what a successful run may create or replace
    signal: int | None = None  # sent to the process group (SIGKILL: to onnxq alone) after delay
    delay: float = 0.0
    fsize: int | None = None  # RLIMIT_FSIZE in bytes: writes beyond it fail, as on a full disk
    then: tuple[str, ...] | None = None  # a second run in the same folder, judged as well

    @property
    def id(self) -> str:
        return f"{self.cause}/{self.name}"


@dataclass
class Outcome:
    """What a case did: its exit code, the rules it broke (empty: passed), time and peak memory."""

    case: Case
    code: int | None
    broken: list[str]
    seconds: float
    peak_bytes: int
    stderr: str = ""
    stdout: str = ""

    def __bool__(self) -> bool:
        return not self.broken

    def __str__(self) -> str:
        tail = self.stderr.strip().splitlines()[-3:]
        return f"{self.case.id}: exit {self.code}, broke {self.broken}; stderr ends {tail}"


@dataclass
class _Run:
    code: int | None
    seconds: float
    peak_bytes: int
    stdout: str
    stderr: str
    signalled: bool = False  # the signal reached a running onnxq
    timed_out: bool = False
    orphans: list[int] = field(default_factory=list)


def prepare(root: Path) -> Path:
    """The corpus's shared files under root: the launcher, and the secret file outside every case."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "bin").mkdir(exist_ok=True)
    (root / "bin" / "onnxq").write_text(LAUNCHER)
    (root / "cases").mkdir(exist_ok=True)
    (root / "cases" / "secret.bin").write_bytes(SECRET)  # beside the case folders: outside each
    return root


def environment() -> dict[str, str]:
    """The user's environment, with the checkout under test first and no Python flags of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "COLUMNS"}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the case folders
    return env


def run_case(case: Case, root: Path) -> Outcome:
    """Run a case in a new folder under root (see prepare) and judge it."""
    folder = root / "cases" / _slug(case.cause) / _slug(case.name)
    folder.mkdir(parents=True)
    try:
        args = list(case.setup(folder))
    except Exception as exc:  # noqa: BLE001 - a broken case is reported, not the end of the run
        return Outcome(case, None, [f"setup: {type(exc).__name__}: {exc}"[:200]], 0.0, 0)
    before = snapshot(folder)
    run = _launch(case, root, folder, args)
    if case.then is not None:  # judged as the second run, with the first one's orphans and time
        first = run
        run = _launch(Case(case.cause, case.name + ".then", case.setup), root, folder, list(case.then))
        run.orphans += first.orphans
        run.seconds += first.seconds
        run.timed_out |= first.timed_out
        run.peak_bytes = max(run.peak_bytes, first.peak_bytes)
    logs = root / "logs" / _slug(case.cause)
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{_slug(case.name)}.txt").write_text(f"$ onnxq {args}\n{run.stdout}\n--- stderr\n{run.stderr}")
    broken = judge(
        case if case.then is None else Case(case.cause, case.name, case.setup, case.expect, case.outputs),
        run,
        folder,
        before,
        snapshot(folder),
    )
    return Outcome(case, run.code, broken, run.seconds, run.peak_bytes, run.stderr, run.stdout)


def _launch(case: Case, root: Path, folder: Path, args: list[str]) -> _Run:
    start = time.monotonic()
    proc = _spawn([sys.executable, str(root / "bin" / "onnxq"), *args], folder, case.fsize)
    texts = {"out": b"", "err": b""}
    readers = [
        threading.Thread(target=_drain, args=(stream, texts, key), daemon=True)
        for stream, key in ((proc.stdout, "out"), (proc.stderr, "err"))
    ]
    for reader in readers:
        reader.start()
    signalled = case.signal is not None and _send_later(proc.pid, case.signal, case.delay)
    code, peak, timed_out = _wait(proc.pid, start + TIME_LIMIT)
    seconds = time.monotonic() - start
    orphans = _orphans(proc.pid, grace=5.0 if case.signal == signal.SIGKILL else 3.0)
    for reader in readers:
        reader.join(10)
    proc.stdout.close()
    proc.stderr.close()
    out, err = (texts[k].decode(errors="replace") for k in ("out", "err"))
    return _Run(code, seconds, peak, out, err, signalled, timed_out, orphans)


def _drain(stream, texts: dict[str, bytes], key: str) -> None:
    texts[key] = stream.read()


# Sets the file size limit, then becomes onnxq: no preexec_fn, which is unsafe among threads.
_LIMIT = "import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"


def _spawn(argv: list[str], cwd: Path, fsize: int | None) -> subprocess.Popen:
    """Start argv in its own session (a process group, like a terminal's job), output piped (a
    file size limit would apply to files)."""
    if fsize is not None:
        argv = [sys.executable, "-I", "-c", _LIMIT, str(fsize), *argv]
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    proc.returncode = 0  # reaped with os.wait4 (for its peak memory), which Popen must not try again
    return proc


def _send_later(pid: int, sig: int, delay: float) -> bool:
    """Send sig after delay if onnxq still runs: to the group, as a terminal does (SIGKILL: to
    onnxq alone, as an OOM killer does). Whether it was sent to a running onnxq."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return False
        time.sleep(0.01)
    try:
        if sig == signal.SIGKILL:
            os.kill(pid, sig)
        else:
            os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait(pid: int, deadline: float) -> tuple[int | None, int, bool]:
    """(exit code, negative for a signal; peak RSS in bytes of onnxq and its reaped children;
    whether it ran out of time and was killed)."""
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, timed_out
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            _kill_group(pid)
        time.sleep(0.02)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _orphans(pgid: int, grace: float) -> list[int]:
    """Processes of the run's group still alive grace seconds after onnxq ended; killed."""
    deadline = time.monotonic() + grace
    while (left := _group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _kill_group(pgid)
    return left


def _group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under folder (links not followed): a file's sha256, a link's target, a folder."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                seen[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                seen[rel] = "dir"
            elif path.is_file():
                seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[rel] = "special"  # a FIFO or socket: never opened here
    return seen


def judge(case: Case, run: _Run, folder: Path, before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The rules (module docstring) this run broke."""
    broken = []
    code = run.code
    success = code in (0, 3)
    if run.timed_out:
        broken.append("time")
    if run.peak_bytes > MEMORY_LIMIT:
        broken.append("memory")
    if not _exit_ok(case, run):
        broken.append("exit")
    text = run.stdout + run.stderr
    if "Traceback (most recent call last)" in text or "Exception ignored" in text:
        broken.append("traceback")
    if code not in (0, None, -signal.SIGKILL) and not run.timed_out and not _one_error_line(code, run.stderr):
        broken.append("error line")
    canaries = sorted(p for p in after if Path(p).name.startswith(CANARY))
    if canaries:
        broken.append("folder code")
    changed = [p for p, h in before.items() if after.get(p) != h and not (success and p in case.outputs)]
    if changed:
        broken.append("input changed")
    new = [p for p in after if p not in before and p not in canaries and not p.endswith("__pycache__")]
    if any(Path(p).name.endswith(".tmp") or not success or p not in case.outputs for p in new):
        broken.append("left behind")
    if run.orphans:
        broken.append("processes")
    if any(_holds_secret(folder / p) for p in new):
        broken.append("read outside")
    return broken


def _exit_ok(case: Case, run: _Run) -> bool:
    code = run.code
    if run.signalled and case.signal == signal.SIGKILL:
        return code == -signal.SIGKILL
    if run.signalled:
        return code in (SIGNAL_EXITS[case.signal], 0, 3)  # 0/3: the work was done when it came
    if code not in (0, 1, 2, 3):
        return False
    return {"ok": code == 0, "refused": code in (1, 2)}.get(case.expect, True)


_ERROR = re.compile(r"^error: \S")


def _one_error_line(code: int, stderr: str) -> bool:
    """A failure's stderr: one line starting "error: " and nothing after it (an interruption's,
    one line starting "interrupted"), and no other error line (not click's "Error:" either)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error:") or line.startswith("Aborted")]
    if code in SIGNAL_EXITS.values():
        return bool(lines) and lines[-1].startswith("interrupted") and not errors
    return len(errors) == 1 and bool(_ERROR.match(lines[-1]))


def _holds_secret(path: Path) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and SECRET[:21] in path.read_bytes()
    except OSError:
        return False


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


def run_all(
    cases: Iterable[Case], root: Path, workers: int = 2, done: Callable[[Outcome], None] | None = None
) -> list[Outcome]:
    """Every case under root (prepared here), workers at a time, in the cases' order; done is
    called with each outcome as it comes."""
    prepare(root)

    def one(case: Case) -> Outcome:
        outcome = run_case(case, root)
        if done is not None:
            done(outcome)
        return outcome

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, cases))


def table(outcomes: Sequence[Outcome], causes: Sequence[str]) -> str:
    """Cause x passed/failed, as a Markdown table, with a total row."""
    rows = ["| cause | cases | passed | failed |", "|---|---:|---:|---:|"]
    for cause in causes:
        mine = [o for o in outcomes if o.case.cause == cause]
        passed = sum(1 for o in mine if o)
        rows.append(f"| {cause} | {len(mine)} | {passed} | {len(mine) - passed} |")
    passed = sum(1 for o in outcomes if o)
    rows.append(f"| **total** | {len(outcomes)} | {passed} | {len(outcomes) - passed} |")
    return "\n".join(rows)
