"""The `lesion` command: one sub-command per capability (ARCHITECTURE.md: cli.py).

A thin shell over the Python API: it parses, calls, prints and writes; no analysis lives here.
Conventions (issue "Foundation", item 6): `--json PATH` writes machine-readable results, `--seed` seeds
everything random, progress bars go to stderr, and a user error prints one line to stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import lesion
from lesion import progress
from lesion.cli import basic, breakdown, campaign_config, crash, geometry, protect, recover, report, reproduce
from lesion.cli.options import positive_int
from lesion.errors import LesionError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `lesion CMD: error: ...` on stderr, exit status 2, no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command (each documents every option in --help)."""
    parser = Parser(
        prog="lesion", description="Measure, attack and repair the resilience of neural networks to damage.")
    parser.add_argument("--version", action="version", version=f"lesion {lesion.__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help="what to do")
    basic.register(sub)
    crash.register(sub)
    geometry.register(sub)
    recover.register(sub)
    protect.register(sub)
    breakdown.register(sub)
    report.register(sub)
    reproduce.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lesion` program; returns the exit status."""
    parser = build_parser()
    try:
        argv = campaign_config.expand(sys.argv[1:] if argv is None else argv)
    except LesionError as err:
        print(f"lesion: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a one-line usage error (exit 2)
        return done.code if isinstance(done.code, int) else EXIT_USER_ERROR
    if args.quiet:
        progress.set_enabled(False)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run: Callable[[argparse.Namespace], dict[str, Any]] = args.run
    stdout = _ReaderGoneTolerant(sys.stdout)
    sys.stdout = stdout
    try:
        result = run(args)
        if getattr(args, "json", None):
            from lesion.report import provenance, write_json

            write_json(Path(args.json), {"provenance": provenance(command=args.command,
                                                                  argv=list(argv or sys.argv[1:])), **result})
        sys.stdout.flush()
    except LesionError as err:
        print(f"lesion: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("lesion: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout.wrapped
    return 141 if stdout.reader_gone else 0


class _ReaderGoneTolerant:
    """stdout that survives its reader going away (`lesion … | head`): the first write that meets a closed pipe
    points the file descriptor at /dev/null and the command runs on to the end, so `--json` and `--out` files are
    still written; the exit status is then 141, as for a shell pipeline cut by SIGPIPE. No traceback, now or at
    interpreter exit."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.reader_gone = False

    def _gone(self) -> None:
        self.reader_gone = True
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.wrapped.fileno())
        except (OSError, ValueError):  # not a real file (pytest's capture): nothing to redirect
            pass

    def write(self, text: str) -> int:
        if self.reader_gone:
            return len(text)
        try:
            return self.wrapped.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        if self.reader_gone:
            return
        try:
            self.wrapped.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


if __name__ == "__main__":
    sys.exit(main())
