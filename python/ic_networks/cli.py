"""``ic-networks`` command line (also ``python -m ic_networks``).

Each command lives next to the code it drives; a module in ``_COMMAND_MODULES`` exposes
``register(subparsers)``, which adds its sub-commands and sets ``func`` on them.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

_COMMAND_MODULES = (
    "ic_networks.training.cli",  # demo, train, eval
    "ic_networks.models.cli",  # convert, flops
    "ic_networks.bench",  # bench
    "ic_networks.viz.cli",  # figures, gradcam
    "ic_networks.detection.cli",  # train-det, eval-det
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ic-networks", description="IC Networks: IC convolution models with a Rust core.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command module not built in this checkout
            if exc.name == name:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as exc:
        print(f"ic-networks {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
