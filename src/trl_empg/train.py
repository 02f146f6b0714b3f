"""Train an agent from a YAML recipe: ``accelerate launch -m trl_empg.train --config recipes/<...>.yaml``.

The recipe is read by TRL's ``TrlParser`` into three dataclasses: :class:`TrainScriptArguments` (dataset or reward
functions for single-turn training, dry run), :class:`~trl_empg.EMPGConfig` (training, EMPG and environment fields)
and TRL's ``ModelConfig`` (model id or path, dtype, LoRA and 4-bit quantization). Command-line flags override the
YAML; unknown keys are an error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from .config import EMPGConfig
from .hub import push_run, require_hub_token, run_config, save_run_config


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


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainScriptArguments, EMPGConfig, ModelConfig]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = TrlParser((TrainScriptArguments, EMPGConfig, ModelConfig))
    if _dry_run_without_gpu(argv):
        # A GPU recipe is validated here on its keys and values; TrainingArguments' bf16/GPU availability check is
        # about this machine, not the recipe, so the dry run parses it as if on CPU and says so.
        argv = [*argv, "--use_cpu", "true", "--bf16", "false", "--fp16", "false"]
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    if model_args.model_name_or_path is None:
        raise ValueError("The recipe must set model_name_or_path (a Hub id or a local directory).")
    if training_args.env_id is None and script_args.dataset_name is None:
        raise ValueError("The recipe must set either env_id (multi-turn env training) or dataset_name (prompts).")
    return script_args, training_args, model_args


def _dry_run_without_gpu(argv: Sequence[str]) -> bool:
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


def main(argv: Sequence[str] | None = None) -> None:
    script_args, training_args, model_args = parse_args(argv)
    if script_args.dry_run:
        resolved = run_config(script_args, training_args, model_args)
        if _dry_run_without_gpu(list(sys.argv[1:] if argv is None else argv)):
            resolved["note"] = "validated without a GPU: use_cpu/bf16/fp16 shown as on CPU"
        print(json.dumps(resolved, indent=2, default=str))
        return

    from datasets import load_dataset

    from .trainer import EMPGTrainer

    push = training_args.push_to_hub
    if push:
        require_hub_token(training_args.hub_token)  # fail now, not after hours of training; never stored in the args
        # transformers would upload the whole output dir (training_args.bin holds the token in clear): push_run
        # uploads an allow-list instead, with the model card.
        training_args.push_to_hub = False

    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "revision": model_args.model_revision,
        "dtype": model_args.dtype,
        **({"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}),
    }
    train_dataset = None
    if training_args.env_id is None:
        train_dataset = load_dataset(
            script_args.dataset_name, script_args.dataset_config, split=script_args.dataset_train_split
        )
    reward_funcs = [load_callable(path) for path in script_args.reward_funcs] or None
    trainer = EMPGTrainer(
        model_args.model_name_or_path,
        reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    if trainer.accelerator.is_main_process:
        save_run_config(training_args.output_dir, script_args, training_args, model_args)  # for cards and `push`
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the log history the plots are drawn from
    if push and trainer.accelerator.is_main_process:
        push_run(
            training_args.output_dir,
            training_args.hub_model_id or Path(training_args.output_dir).name,
            token=training_args.hub_token,
            private=bool(training_args.hub_private_repo),
            revision=training_args.hub_revision,
        )


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    # The recipe parser (TrlParser) owns every flag, --help included, so the subparser passes them all through.
    parser = subparsers.add_parser(
        "train", add_help=False, help="train from a YAML recipe (--config recipe.yaml; flags override the YAML)"
    )
    parser.set_defaults(handler=lambda args: main(args.extra_args), passthrough=True)


if __name__ == "__main__":
    main(sys.argv[1:])
