"""Command line: ``python -m letstalk_core <command> ...``.

Subcommands are registered by their own modules: every subpackage of ``letstalk_core`` that has a
``cli`` module with ``add_parser(subparsers)`` contributes its commands (e.g. ``checkpoints/cli.py``
adds ``convert``). ``add_parser`` must call ``set_defaults(func=...)``; ``func(args)`` returns the exit
status. Keep heavy imports inside ``func`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from .checkpoints.errors import CheckpointError


def command_modules() -> list[str]:
    """Names of the ``<subpackage>.cli`` modules that exist in this package, sorted."""
    package_dir = Path(__file__).resolve().parent
    names = []
    for info in sorted(pkgutil.iter_modules([str(package_dir)]), key=lambda info: info.name):
        if info.ispkg and (package_dir / info.name / "cli.py").is_file():
            names.append(f"{__package__}.{info.name}.cli")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m letstalk_core",
                                     description="LetsTalk talking-video diffusion: command line tools.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        module = importlib.import_module(name)
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .heap import keep_working_buffers_on_heap

    keep_working_buffers_on_heap()  # this process runs CPU forwards: let glibc keep their buffers
    try:
        return int(args.func(args) or 0)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
