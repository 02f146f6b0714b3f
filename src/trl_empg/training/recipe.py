"""Recipe parsing: a YAML recipe (``--config recipes/<...>.yaml``) into the dataclasses training runs on.

The recipe is read by TRL's ``TrlParser`` into three dataclasses: :class:`TrainScriptArguments` (dataset or reward
functions for single-turn training, dry run), :class:`~trl_empg.EMPGConfig` (training, EMPG and environment fields)
and TRL's ``ModelConfig`` (model id or path, dtype, LoRA and 4-bit quantization). Command-line flags override the
YAML; unknown keys are an error.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trl import ModelConfig, TrlParser

if TYPE_CHECKING:  # imported when parsing: it loads transformers' TrainingArguments (and peft)
    from .config import EMPGConfig

__all__ = ["TrainScriptArguments", "dry_run_without_gpu", "load_callable", "parse_args", "parse_command"]


@dataclass
class TrainScriptArguments:
    """What a recipe names besides the trainer and the model."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub id or local path of a prompt dataset for single-turn training (unused with env_id)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Dataset split to train on."})
    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Reward functions as 'package.module:function' (single-turn training; env runs use the "
            "episode outcome)."
        },
    )
    dry_run: bool = field(
        default=False, metadata={"help": "Validate the recipe, print the resolved configuration and exit."}
    )


def parse_command(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None,
    *,
    prog: str | None = None,
    description: str | None = None,
    rest: bool = False,
) -> tuple[Any, ...]:
    """Parse a subcommand's flags (and its ``--config file.yaml``) into one instance per dataclass, with TRL's
    ``TrlParser``: flags override the YAML, unknown keys or flags are an error, ``--help`` lists every field with its
    default. Both ``--max_turns`` and ``--max-turns`` spellings are accepted; abbreviations are not. With ``rest``,
    unknown config keys and unknown flags are returned (as two lists of strings, after the dataclasses) instead."""
    parser = TrlParser(tuple(dataclass_types), prog=prog, description=description, allow_abbrev=False)
    args = list(sys.argv[1:] if argv is None else argv)
    if rest:
        return tuple(
            parser.parse_args_and_config(args, return_remaining_strings=True, separate_remaining_strings=True)
        )
    return tuple(parser.parse_args_and_config(args))


def parse_args(
    argv: Sequence[str] | None = None, prog: str | None = None
) -> tuple[TrainScriptArguments, EMPGConfig, ModelConfig]:
    """The recipe and its command-line overrides as (script arguments, :class:`~trl_empg.EMPGConfig`, ``ModelConfig``).

    Raises ValueError, naming the problem, for unknown keys and a recipe without a model or an env/dataset. The model
    itself is checked when training starts (:func:`check_model_reference`): a recipe may name a directory that an
    earlier stage has yet to write."""
    from .config import EMPGConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = TrlParser((TrainScriptArguments, EMPGConfig, ModelConfig), prog=prog)
    if dry_run_without_gpu(argv):
        # A GPU recipe is validated here on its keys and values; TrainingArguments' bf16/GPU availability check is
        # about this machine, not the recipe, so the dry run parses it as if on CPU and says so.
        argv = [*argv, "--use_cpu", "true", "--bf16", "false", "--fp16", "false"]
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    if model_args.model_name_or_path is None:
        raise ValueError("The recipe must set model_name_or_path (a Hub id or a local directory).")
    if training_args.env_id is None and script_args.dataset_name is None:
        raise ValueError("The recipe must set either env_id (multi-turn env training) or dataset_name (prompts).")
    if training_args.env_id is not None:  # a mistyped task name fails here, naming the recipe line it came from
        from ..envs import check_env_name

        check_env_name(training_args.env_id, where=_setting_source(argv, "env_id"))
    return script_args, training_args, model_args


def _setting_source(argv: Sequence[str], key: str) -> str:
    """Where ``key`` was set: its command-line flag, else the ``--config`` file and line."""
    if any(arg in (f"--{key}", f"--{key.replace('_', '-')}") or arg.startswith(f"--{key}=") for arg in argv):
        return f"--{key}"
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        config = Path(argv[argv.index("--config") + 1])
        try:
            for number, line in enumerate(config.read_text(encoding="utf-8").splitlines(), 1):
                if re.match(rf"{key}\s*:", line):
                    return f"{config} line {number} ({key})"
        except (OSError, UnicodeDecodeError):
            pass
        return f"{config} ({key})"
    return key


def check_model_reference(name_or_path: str, argument: str = "model") -> str:
    """``name_or_path`` if it is an existing directory or a valid Hub model id, else a ValueError naming it.

    Validity is huggingface_hub's own (``validate_repo_id``): without this, a mistyped local path reaches
    transformers, which reports a Hub-id format error that never says the directory does not exist. Whether a valid
    id exists on the Hub is left to the download (it needs the network)."""
    from pathlib import Path

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ValueError(f"{argument} {name_or_path!r} is a file; expected a model directory or a Hub model id.")
    try:
        validate_repo_id(name_or_path)
    except HFValidationError as error:
        raise ValueError(
            f"{argument} {name_or_path!r} is neither an existing local directory nor a valid Hugging Face Hub model "
            f"id ('name' or 'org/name'; {str(error).split(':')[0].rstrip('.')})."
        ) from None
    return name_or_path


def dry_run_without_gpu(argv: Sequence[str]) -> bool:
    """A dry run on a machine without a GPU: the recipe is checked as if on CPU."""
    import torch

    return any(a in ("--dry_run", "--dry-run") for a in argv) and not torch.cuda.is_available()


def load_callable(path: str) -> Callable[..., Any]:
    """Import ``package.module:function``."""
    module_name, sep, attr = path.partition(":")
    if not sep or not attr:
        raise ValueError(f"Expected 'package.module:function', got {path!r}.")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import {path!r}: {error}") from error
