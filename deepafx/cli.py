"""The ``deepafx`` command line: ``deepafx <command> --help`` explains each command.

Each command lives in its own module exposing ``register(subparsers)``, which adds
a sub-parser whose ``func`` default is called with the parsed arguments.

Errors a user can cause (a missing or unreadable file, a bad value, a plugin
that fails; see :func:`user_errors`) are printed by :func:`main` as one line,
``deepafx <command>: error: <message>``, with exit status 1; ``-v/--verbose``
(before or after the command) or ``DEEPAFX_DEBUG=1`` shows the traceback
instead. Ctrl-C exits with status 130 and one line (SIGTERM while training: 143). Commands therefore raise
rather than print their own errors.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: Modules that contribute sub-commands, imported on demand.
COMMAND_MODULES = (
    "deepafx.commands.plugins",
    "deepafx.commands.data",
    "deepafx.commands.train",
    "deepafx.commands.process",
    "deepafx.commands.evaluate",
    "deepafx.commands.match",
    "deepafx.commands.export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepafx",
        description="Train neural networks that drive real audio plugins (SPSA through black-box Fx).",
        epilog="Errors are printed in one line; -v or DEEPAFX_DEBUG=1 shows the traceback.",
    )
    parser.add_argument("-v", "--verbose", dest="debug", action="store_true",
                        help="show the traceback of an error (also DEEPAFX_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue  # command not installed in this build
            raise
        module.register(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception classes a user can cause, printed in one line by :func:`main`.

    ``OSError`` (missing, unreadable or existing files), ``ValueError`` (bad
    values and content, including :class:`~deepafx.params.ParameterError` and
    :class:`~deepafx.hosts.base.AudioError`), ``ImportError`` (an optional
    library not installed) and :class:`~deepafx.hosts.base.PluginError`
    (including :class:`~deepafx.workers.WorkerError`: a plugin that is missing,
    crashes or hangs). Anything else is a bug and keeps its traceback.
    """
    from deepafx.hosts.base import PluginError

    return (OSError, ValueError, ImportError, PluginError)


def error_message(exc: BaseException) -> str:
    """``exc`` as one line: ``path: reason`` for errno-style OSErrors, lines joined, the class name if empty."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None and len(exc.args) >= 2:
        text = f"{exc.filename}: {exc.strerror}"
        if exc.filename2 is not None:
            text += f" (and {exc.filename2})"
    else:
        text = str(exc)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(exc).__name__


def _debug_requested(args: argparse.Namespace) -> bool:
    env = os.environ.get("DEEPAFX_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False) or getattr(args, "verbose", False)) or env not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> int:
    """Run ``deepafx`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Returns:
        The command's status (0 on success); 1 after an error a user can cause
        (:func:`user_errors`, printed as one line on stderr); 2 without a
        command; 130 after Ctrl-C (143 after SIGTERM while training). ``SystemExit`` (argparse usage errors, a
        command's own ``SystemExit(message)``) passes through unchanged.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C, or deepafx.trainer.Interrupted (SIGTERM/SIGINT while training)
        if _debug_requested(args):
            raise
        detail = error_message(exc) if str(exc) else ""
        print(f"deepafx {args.command}: interrupted" + (f": {detail}" if detail else ""), file=sys.stderr)
        return 128 + int(getattr(exc, "signum", 2))
    except user_errors() as exc:
        if _debug_requested(args):
            raise
        print(f"deepafx {args.command}: error: {error_message(exc)}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
