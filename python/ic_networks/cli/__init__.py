"""The ``ic-networks`` command line (also ``python -m ic_networks``).

Verbs, by family (one module each, every one exposing ``register(subparsers)``):

* :mod:`.training`: ``train``, ``eval``, ``demo``, ``study``;
* :mod:`.models`: ``flops``, ``convert``, ``diagnose``;
* :mod:`.bench`: ``bench``;
* :mod:`.viz`: ``figures``, ``gradcam`` (``gradcam`` needs the ``[viz]`` extra);
* :mod:`.detection`: ``train-det``, ``eval-det`` (the mAP needs the ``[detection]`` extra).

Shared argument parsers live in :mod:`.common`. A verb's errors (bad paths, bad values, a missing
optional dependency) print ``ic-networks VERB: error: ...`` and return 1; bad option syntax, and
options that cannot go together (:class:`.common.UsageError`), print the verb's usage and exit with
status 2.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, detection, models, training, viz
from .common import UsageError

__all__ = ["main", "build_parser", "VERB_MODULES"]

VERB_MODULES = (training, models, bench, viz, detection)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ic-networks",
        description="IC Networks: IC convolution models with a Rust core.",
        epilog="Run 'ic-networks VERB --help' for the options of a verb.",
    )
    sub = parser.add_subparsers(dest="command", metavar="VERB")
    for mod in VERB_MODULES:
        mod.register(sub)
    parser.verbs = sub.choices  # verb name -> its parser (for usage errors found after parsing)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except UsageError as exc:
        parser.verbs[args.command].error(str(exc))  # usage and message, exit status 2
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:
        print(f"ic-networks {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
