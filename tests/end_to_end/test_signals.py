"""Signals during a run with worker processes: Ctrl-C and SIGTERM end it at once, in one line,
with nothing left behind; a parent killed outright takes its workers with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import without_progress

MODEL = Path(__file__).resolve().parents[2] / "models" / "efficientnet_lite0.onnx"
SCRIPT = Path(sys.executable).parent / "onnxq"

pytestmark = pytest.mark.skipif(
    not (MODEL.is_file() and SCRIPT.is_file() and Path("/proc").is_dir()),
    reason="needs models/efficientnet_lite0.onnx, the onnxq console script and /proc (Linux)",
)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def start(tmp_path: Path, pipes: bool = True) -> tuple[subprocess.Popen, list[int]]:
    """onnxq compress with two workers, once both workers run (mid-quantization)."""
    proc = subprocess.Popen(
        # The exact search runs in worker processes (the grid, in threads).
        [str(SCRIPT), "compress", str(MODEL), str(tmp_path / "out.onnx"), "--jobs", "2", "--search", "exact"],
        cwd=tmp_path,
        stdout=subprocess.PIPE if pipes else subprocess.DEVNULL,
        stderr=subprocess.PIPE if pipes else subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [p for p in children(proc.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        if len(workers) >= 2:
            return proc, workers
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the workers never started")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def still_alive(workers: list[int], seconds: float) -> list[int]:
    """The workers still running after waiting up to seconds for them to exit; those are killed."""
    deadline = time.monotonic() + seconds
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    return left


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_ends_at_once_in_one_line_and_leaves_nothing(sig, tmp_path):
    proc, workers = start(tmp_path)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # a terminal's Ctrl-C reaches the whole process group
    else:
        os.kill(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("onnxq hung after the signal")
    assert proc.returncode == 128 + sig  # 130 for Ctrl-C, 143 for SIGTERM
    assert without_progress(err).strip().splitlines() == [
        f"interrupted: {tmp_path / 'out.onnx'} was not written"
    ], err  # the whole stderr, to see what else was printed
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert not still_alive(workers, seconds=5)


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    proc, workers = start(tmp_path, pipes=False)  # workers left alive would hold the pipes open
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not still_alive(workers, seconds=10)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_taken_by_another_thread_waits_for_the_end_of_the_block(sig):
    """A signal mask is per thread: a Ctrl-C or SIGTERM (the CLI turns both into
    KeyboardInterrupt) that another thread of the parent takes must still not interrupt the main
    thread inside the block (halfway through starting a worker, which then read a closed pipe and
    printed an EOFError traceback), only after it."""
    import threading

    from onnxq import jobs

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    reached = []
    previous = signal.signal(sig, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), jobs._signals_held():
            other = threading.Thread(target=os.kill, args=(os.getpid(), sig))
            other.start()
            other.join()
            time.sleep(0.2)  # a KeyboardInterrupt delivered now would skip the next line
            reached.append(True)
    finally:
        signal.signal(sig, previous)
    assert reached == [True]


def test_a_stopped_pool_is_left_only_once_its_queue_feeder_thread_has_ended(monkeypatch):
    """The feeder thread of a stopped pool's queue frees two of its semaphores as it ends; ended
    after the interpreter's exit, it left them unlinked but registered, and the resource tracker
    printed "leaked semaphore" warnings after the run's last line. Its end is delayed here, so
    that the pool must wait for it."""
    from multiprocessing import queues

    from onnxq import jobs

    feed = queues.Queue._feed

    def slow_feed(*args):
        try:
            return feed(*args)
        finally:
            time.sleep(0.5)

    monkeypatch.setattr(queues.Queue, "_feed", staticmethod(slow_feed))
    with pytest.raises(KeyboardInterrupt), jobs.worker_processes(1) as pool:
        assert pool.submit(abs, -1).result() == 1  # the worker and the feeder thread run
        feeder = pool._call_queue._thread  # type: ignore[attr-defined]
        raise KeyboardInterrupt
    assert not feeder.is_alive()
