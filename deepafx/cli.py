"""The ``deepafx`` command line: ``deepafx <command> --help`` explains each command.

Each command lives in its own module exposing ``register(subparsers)``, which adds
a sub-parser whose ``func`` default is called with the parsed arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that contribute sub-commands, imported on demand.
COMMAND_MODULES = (
    "deepafx.commands.plugins",
    "deepafx.commands.data",
    "deepafx.commands.train",
    "deepafx.commands.process",
    "deepafx.commands.evaluate",
    "deepafx.commands.match",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepafx",
        description="Train neural networks that drive real audio plugins (SPSA through black-box Fx).",
    )
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
