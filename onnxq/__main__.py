"""The command line's entry point: `onnxq ...` and `python -m onnxq ...`.

Ctrl-C or SIGTERM while the libraries load (a second or two) ends quietly with exit 130 or 143;
from then on the CLI handles them (cli.py: temporary files removed, one line saying what was not
written). Whatever escapes the CLI ends here as one `error:` line and a non-zero exit, never a
traceback: a usage error exits 2, anything else 1 (the traceback goes to the debug log).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM's is 143
EXIT_ERROR = 1
EXIT_USAGE = 2
_received: list[int] = []  # the signal that interrupted the run, if one did
_said: list[str] = []  # the interruption's line, once the CLI has printed it

log = logging.getLogger("onnxq")


def _quit_while_loading(signum: int, frame: object) -> None:
    """Leave at once: nothing is written yet, and unwinding out of a C extension's init (numpy,
    onnxruntime) then finalizing the interpreter crashed it once in about 500 runs (SIGSEGV)."""
    _received.append(signum)
    interrupted("interrupted")
    sys.stderr.flush()
    os._exit(128 + signum)


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM alike: a KeyboardInterrupt, so that every cleanup on the way out runs."""
    _received.append(signum)
    raise KeyboardInterrupt


def interrupted(line: str) -> int:
    """Print the line that says what an interruption left undone; the exit code to end with."""
    _said.append(line)
    sys.stderr.write(one_line(line) + "\n")
    return 128 + (_received[0] if _received else signal.SIGINT)


def one_line(text: str) -> str:
    """text on one line: a newline in a file or tensor name would split an error in two."""
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _quit_while_loading)
    try:
        from onnxq.cli import app
    except Exception as exc:  # noqa: BLE001 - an extension's init turns our SystemExit into ImportError
        return 128 + _received[0] if _received else _fail(exc)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:  # before or after the command ran
        code = EXIT_INTERRUPTED
    except SystemExit:
        # click ends a write to a closed stdout (its --help, say) with a silent exit 1, once it
        # has wrapped sys.stdout so that the final flush cannot fail: one line says why.
        if type(sys.stdout).__name__.endswith("PacifyFlushWrapper"):
            from onnxq.cli import STDOUT_CLOSED

            sys.stderr.write(f"error: {STDOUT_CLOSED}\n")
            return EXIT_ERROR
        raise
    except Exception as exc:  # noqa: BLE001 - the one place every other error ends
        if _received:  # raised on the way out of an interruption (an import it cut short)
            code = EXIT_INTERRUPTED
        else:
            return _fail(exc)
    if code == EXIT_INTERRUPTED:  # the line once, whoever caught the KeyboardInterrupt
        return interrupted("interrupted") if not _said else 128 + (_received or [signal.SIGINT])[0]
    return code if isinstance(code, int) else 0


def _fail(exc: Exception) -> int:
    """One error line for an exception the CLI did not turn into one; the exit code. Click's
    exceptions (typer's copy of click) are recognised by their members, as typer itself does."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `onnxq` alone: the help
        exc.show()  # type: ignore[attr-defined]
        return EXIT_USAGE
    if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
        message, code = exc.format_message(), exc.exit_code  # type: ignore[attr-defined]
        ctx = getattr(exc, "ctx", None)
        if code == EXIT_USAGE:  # a usage error: the message, and where the usage is
            message = (
                message.rstrip(".") + f"; see `{ctx.command_path if ctx is not None else 'onnxq'} --help`"
            )
    else:
        from onnxq.errors import OnnxqError

        log.debug("onnxq failed", exc_info=exc)
        message, code = str(exc) if isinstance(exc, OnnxqError) else _explain(exc), EXIT_ERROR
    sys.stderr.write(f"error: {one_line(message)}\n")
    return code


def _explain(exc: BaseException) -> str:
    """What an unexpected exception means for the user, and what to do about it."""
    from google.protobuf.message import DecodeError

    from onnxq.errors import first_line

    what = first_line(exc)
    if type(exc).__name__ == "Abort":  # click's, for an EOFError in the command
        return "a file ended before its data did; check that every input file is complete"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or what}; check the path, its permissions and the free space"
    if isinstance(exc, MemoryError):
        return "out of memory; give a smaller model or fewer samples, or free memory"
    if isinstance(exc, RecursionError):
        return "the model is nested too deeply to read; re-export it with fewer nested subgraphs"
    if isinstance(exc, (DecodeError, UnicodeError)):
        return f"a file could not be decoded ({type(exc).__name__}: {what}); check that it is complete"
    if type(exc).__module__.split(".")[0] == "onnx":
        return f"onnx refused the model ({what}); check it with onnx.checker and re-export it"
    return (
        f"onnxq failed unexpectedly ({type(exc).__name__}: {what}); this is a bug in onnxq: please report it"
    )


if __name__ == "__main__":
    sys.exit(main())
