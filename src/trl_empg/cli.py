"""The ``trl-empg`` command (also ``python -m trl_empg``): one subcommand per job, each with ``--help``.

Each subcommand lives with the code it runs: a module exposes ``register_cli(subparsers)``, which adds its parser
and sets ``handler`` to a function taking the parsed arguments (``passthrough=True`` hands the unparsed flags to the
handler as ``extra_args``). This module only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that register a subcommand, in the order --help lists them.
SUBCOMMAND_MODULES = (
    "trl_empg.tiny",
    "trl_empg.sft",
    "trl_empg.train",
    "trl_empg.evaluation",
    "trl_empg.hub",
    "trl_empg.quickstart",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-empg", description="Train LLM agents on text environments with Entropy-Modulated Policy Gradients."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if getattr(args, "passthrough", False):
        args.extra_args = extra  # e.g. `train`, whose recipe parser owns its flags
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.handler(args)


if __name__ == "__main__":
    main()
