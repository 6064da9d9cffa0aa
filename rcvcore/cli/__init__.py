"""``python -m rcvcore <command>``: every dashboard action, headless.

Each command lives in its own module exposing ``add_parser(subparsers)``; the parser's ``func``
receives the parsed arguments and returns the exit status. User errors (:class:`UserError`) print
one clear message and exit with status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ..errors import Notice, UserError, disk_error

_default_showwarning = warnings.showwarning

COMMAND_MODULES = ["models", "data", "scan", "train", "runs", "demo", "slides"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rcvcore",
        description="Scale-covariance scans (RCV), pruning and transfer of CNNs for "
                    "histopathology.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:   # a missing module is an error, never a silently lost command
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def _safe_streams() -> None:
    """Never fail on printing: a file name that is not valid in the terminal's encoding (bytes
    of another encoding, kept by Python as surrogates) is printed with backslash escapes."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass    # not a text stream of io (pytest's capture, a notebook): leave it


def one_line(text) -> str:
    """``text`` on one line: a line break in a file name (or anything quoted) is shown as
    ``\\n``, so it can never forge a ``warning:`` or ``error:`` line of its own (issue 25)."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, Notice):
        print(f"warning: {one_line(message)}", file=file or sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def _output_of(args) -> str:
    """The file a command was told to write (``--json``, ``--csv``), for a one-line error."""
    named = [str(v) for k in ("json", "csv", "out", "output") if (v := getattr(args, k, None))]
    return named[0] if len(named) == 1 else "the output folder"


def main(argv: list[str] | None = None) -> int:
    _safe_streams()
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        err = disk_error(e, _output_of(args))
        if err is not None:     # a full, read-only or forbidden disk: one line naming the folder
            print(f"error: {one_line(err)}", file=sys.stderr)
            return 2
        if not e.filename or not e.strerror:
            raise
        # a file the user named that cannot be written or read (an output path in a missing or
        # read-only folder, a full disk): one line, not a traceback
        print(f"error: {one_line(e.filename)}: {e.strerror}. Check the path and that its folder "
              "exists and is writable.", file=sys.stderr)
        return 2
    except Exception as e:  # SQLite's "disk is full", torch's "file write failed"
        err = disk_error(e, _output_of(args))
        if err is None and isinstance(e, RuntimeError) and "home directory" in str(e):
            err = ("a path starting with ~NAME names a user this machine does not have (or "
                   "whose home folder is unknown); give the full path")
        if err is None:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
