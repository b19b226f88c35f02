"""The command line's entry point: `onnxq ...` and `python -m onnxq ...`.

Ctrl-C while the libraries load (a second or two) ends quietly with exit 130; from then on
the CLI handles it (cli.py: temporary files removed, one line saying what was not written).
"""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130


def _quit_while_loading(signum: int, frame: object) -> None:
    sys.stderr.write("interrupted\n")
    raise SystemExit(EXIT_INTERRUPTED)


def main() -> None:
    signal.signal(signal.SIGINT, _quit_while_loading)
    from onnxq.cli import app

    signal.signal(signal.SIGINT, signal.default_int_handler)
    app()


if __name__ == "__main__":
    main()
