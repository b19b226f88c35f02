"""Quantize many (weight, choice) jobs at once: in threads, or in worker processes.

The continuous x0 searches (--search exact or fast) run many small numpy calls that hold the
GIL, so threads share about one core between them, and worker processes use every core. The
stored grid (--search grid, and auto's) works in large numpy calls that release the GIL, so
threads use every core too, without copying the weights to other processes or starting them:
134M-weight decoder at --search auto, 10.6 s and 0.54 GB in threads against 14.0 s and 0.94 GB
in two processes; EfficientNet-Lite0 3.9-4.3 s against 4.5 s (docs/RESULTS.md, section search).
Spawned workers import the caller's main module, so only a caller that guards it (the CLI) asks
for them. Jobs run largest first, so that no large tensor starts last while the others idle.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from threadpoolctl import threadpool_limits

from onnxq.errors import OnnxqError, WeightError
from onnxq.graph import external
from onnxq.graph.select import Weight
from onnxq.quant import kernels, layout
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.quantize import CONTINUOUS, QuantizedTensor, quantize
from onnxq.refine import steps as refine
from onnxq.refine.widths import Choice
from onnxq.storage import DEFAULT_FORMAT, group_size

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Settings:
    """What quantize needs besides the weight: picklable, so that it reaches worker processes."""

    codebook: str
    granularity: str
    scale: str
    search: str
    group_size: int | None
    jobs: int
    format: str = DEFAULT_FORMAT  # its default_group_size applies where group_size is None
    kernels: str = "auto"  # the engine of quantize's loops (kernels.configure), the run's
    exact_for: frozenset[str] = frozenset()  # weights whose x0 comes from the exact search

    def searched(self, name: str) -> Settings:
        """The settings of one weight: the exact search where exact_for names it."""
        return replace(self, search="exact", exact_for=frozenset()) if name in self.exact_for else self


def weight_rows(weight: Weight, settings: Settings, choice: Choice) -> np.ndarray:
    """The weight's rows as the quantizer groups them; NaN or Inf is an error naming it."""
    if not np.all(np.isfinite(weight.array)):
        raise WeightError(
            f"weight {weight.name!r} contains NaN or Inf; fix the model, or leave the tensor "
            f"in float with --exclude '^{re.escape(weight.name)}$'"
        )
    granularity = "tensor" if choice.per_tensor else settings.granularity
    group = group_size(
        weight, settings.format, settings.codebook, choice.bits, granularity, settings.group_size
    )
    return layout.group_rows(weight, granularity, group)


def quantize_rows(rows: np.ndarray, settings: Settings, bits: int, error=None) -> QuantizedTensor:
    """quantize as the settings say; without error (weight-space error) everything is picklable,
    and it runs in a worker process."""
    kernels.configure(settings.kernels)  # a worker process learns the run's engine here
    return quantize(rows, CODEBOOKS[settings.codebook], bits, settings.scale, error, settings.search)


def quantize_weight(weight: Weight, choice: Choice, settings: Settings, layers=None) -> QuantizedTensor:
    """One weight as a choice says. layers: per weight name, its layers' input statistics (a choosing codebook then
    ranks its candidate codebooks by output error)."""
    error = refine.output_error(weight, (layers or {}).get(weight.name, []))  # None: |dW|^2
    return quantize_rows(weight_rows(weight, settings, choice), settings, choice.bits, error)


def run(
    jobs: list[tuple[Weight, Choice]],
    settings: Settings,
    layers: dict,
    progress: Progress | None,
    stage: str,
    release: bool = False,
    before_release: Callable[[Weight, QuantizedTensor], None] | None = None,
) -> list[QuantizedTensor]:
    """Every job quantized, in the jobs' order. release: each weight's values are dropped once it
    is quantized (external.released), so that a model's float weights are never all in memory;
    before_release sees each weight and its codes while both are there."""
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][0].array.size)
    out: list[QuantizedTensor | None] = [None] * len(jobs)
    if progress:
        progress(0, len(jobs), stage)
    # Ranking a choosing codebook's candidates by output error needs the layers' statistics: that stays here.
    ranked = bool(layers) and bool(CODEBOOKS[settings.codebook].candidates())
    continuous = settings.search in CONTINUOUS or bool(settings.exact_for)  # small calls that hold the GIL
    processes = settings.jobs > 1 and len(jobs) > 1 and not ranked and continuous
    workers = min(settings.jobs, len(jobs)) if processes else min(4, os.cpu_count() or 1)
    # The grid's matrix products call BLAS, whose own threads only fight the pool's for the cores:
    # on a 134M-weight decoder they cost a third more CPU time and wall time.
    with _started(processes, workers) as pool, threadpool_limits(limits=1, user_api="blas"):

        def submit(i: int) -> Future:
            weight, choice = jobs[i]
            mine = settings.searched(weight.name)
            if processes:  # the worker gets the rows alone, built as it is submitted
                rows = weight_rows(weight, mine, choice)
                with _signals_held():  # a submit may start a worker, which inherits the mask
                    return pool.submit(quantize_rows, rows, mine, choice.bits)
            return pool.submit(quantize_weight, weight, choice, mine, layers)

        try:
            # At most IN_FLIGHT jobs per worker are submitted at once: the rows a process pool
            # holds are bounded by that, not by the model's size.
            for done, i, q in _in_order(order, submit, IN_FLIGHT * workers):
                out[i] = q
                if release and before_release is not None:
                    before_release(jobs[i][0], q)
                if release:
                    jobs[i][0].array = external.released(jobs[i][0].array)
                else:
                    external.evict(jobs[i][0].array)  # read again later: from the page cache
                if progress:
                    progress(done + 1, len(jobs), f"{stage}: {jobs[i][0].name}")
        except BrokenProcessPool:
            raise OnnxqError(
                "a quantizing worker process died (out of memory, or it could not import the "
                "caller's main module); retry with --jobs 1"
            ) from None
    return out  # type: ignore[return-value]


IN_FLIGHT = 2  # jobs submitted per worker ahead of the one being collected


def _in_order(order: list[int], submit: Callable[[int], Future], window: int):
    """(k, i, result) for the k-th job i of order, in order, with at most window submitted."""
    pending: deque[tuple[int, Future]] = deque()
    upcoming = iter(order)
    for k in range(len(order)):
        while len(pending) < window and (i := next(upcoming, None)) is not None:
            pending.append((i, submit(i)))
        i, future = pending.popleft()
        yield k, i, future.result()


def _pool(processes: bool, workers: int) -> Executor:
    if processes:
        return ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start,
            initargs=(os.getpid(),),
        )
    return ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))


PARENT_POLL_SECONDS = 1.0


HELD = (signal.SIGINT, signal.SIGTERM)  # what the CLI turns into KeyboardInterrupt (__main__)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back for a moment (delivered after): a worker started meanwhile
    begins with them blocked, so that a signal during its start-up cannot kill its interpreter;
    and the parent, whose other threads still take the signals (a mask is per thread), raises
    KeyboardInterrupt only after the block, not halfway through writing a new worker its start-up
    data (the worker then read a closed pipe and printed an EOFError traceback: seen with SIGTERM
    in the default suite once SIGINT alone was held)."""
    held: list[int] = []
    main = threading.current_thread() is threading.main_thread()  # only it sets handlers
    # None: not set from Python, left alone
    previous = {s: signal.getsignal(s) for s in HELD} if main else {}
    for signum, handler in previous.items():
        if handler is not None:
            signal.signal(signum, lambda number, frame: held.append(number))
    masked = hasattr(signal, "pthread_sigmask")
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set(HELD)) if masked else None
    try:
        yield
    finally:
        if before is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        for number in dict.fromkeys(held):
            signal.raise_signal(number)


def _worker_start(parent: int) -> None:
    """In each worker: Ctrl-C is the parent's to handle (it stops the workers), and a worker whose
    parent is gone (killed with SIGKILL, which nothing can catch) exits within a second."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked since its start (_signals_held): SIGINT now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(HELD))  # ignored, SIGTERM ends the worker

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _stop(pool: Executor) -> threading.Thread | None:
    """Stop a pool at once; the thread that feeds its queue, if it has one. Worker processes are
    terminated, and the pool then fails its pending jobs as broken (cancelling them first made its
    manager thread raise InvalidStateError on the cancelled futures, in Python 3.11); the queue
    that feeds them is not waited for at exit, since nobody reads it any more. Threads cannot be
    stopped: their queued jobs are cancelled."""
    processes = getattr(pool, "_processes", None)  # ProcessPoolExecutor's own
    if not processes:
        pool.shutdown(wait=False, cancel_futures=True)
        return None
    queue = getattr(pool, "_call_queue", None)
    if queue is not None:
        queue.cancel_join_thread()
    for p in list(processes.values()):
        p.terminate()
    return getattr(queue, "_thread", None)


# The feeder thread of a stopped pool's queue ends within moments once the pool closes the queue
# (its pipe's reader closed, a blocked write fails); this bounds the wait should it not.
FEEDER_SECONDS = 5.0


@contextmanager
def _started(processes: bool, workers: int) -> Iterator[Executor]:
    """A pool whose workers start safely (no code from the current folder, Ctrl-C the parent's,
    gone with the parent), stopped at once when the caller fails. A stopped process pool is left
    only once its queue's feeder thread has ended: that daemon thread holds the last references to
    two of the queue's semaphores and frees them as it ends, and when that raced the interpreter's
    exit, a semaphore was unlinked but never unregistered, so that multiprocessing's resource
    tracker printed "leaked semaphore" warnings after the run's last line (seen in CI, and made
    certain by delaying the thread's end)."""
    feeder = None
    with _safe_path():
        with _signals_held():  # a Ctrl-C amid the queues' creation would leak their semaphores
            pool = _pool(processes, workers)
        try:
            with pool:
                try:
                    yield pool
                except BaseException:  # Ctrl-C, SIGTERM: leave at once, not after the queued jobs
                    feeder = _stop(pool)
                    raise
        finally:
            if feeder is not None:
                feeder.join(FEEDER_SECONDS)


@contextmanager
def _safe_path() -> Iterator[None]:
    """PYTHONSAFEPATH=1 while the pool and its workers start: a spawned worker (and multiprocessing's
    resource tracker) runs `python -c ...`, which would put the current folder first on sys.path,
    so that a multiprocessing/, pickle.py or socket.py in the folder where onnxq runs would be
    imported, and run, in place of the standard library's."""
    before = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = before


@contextmanager
def worker_processes(workers: int) -> Iterator[Executor]:
    """A pool of worker processes started, and stopped, as run's own are (_started)."""
    with _started(True, workers) as pool:
        yield pool
