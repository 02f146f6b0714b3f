"""Train an agent from a YAML recipe: ``accelerate launch -m trl_empg.train --config recipes/<...>.yaml``.

The documented entry point of training (also ``trl-empg train``): parse the recipe (:mod:`trl_empg.training.recipe`),
build :class:`~trl_empg.EMPGTrainer`, train, save the run configuration for model cards and push the agent to the Hub
when the recipe asks for it (:mod:`trl_empg.hub`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .training.recipe import check_model_reference, dry_run_without_gpu, load_callable, parse_args

__all__ = ["check_checkpoint", "main", "parse_args"]


def check_checkpoint(checkpoint: str | Path) -> Path:
    """A ``resume_from_checkpoint`` directory that training can read, or a ValueError naming the path and the problem.

    Checked before the trainer is built: otherwise a truncated or foreign file surfaces only after the model is loaded
    and the environments started, as a bare safetensors "header too large" or a JSON decode error without a path.
    Opens every ``*.safetensors`` header and parses ``trainer_state.json``; the tensors themselves are read by resume.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint {str(checkpoint)!r} is not a directory (expected .../checkpoint-N).")
    weights = sorted(path.glob("*.safetensors"))
    # DeepSpeed (global_step*/) and sharded FSDP (pytorch_model_fsdp_*/) checkpoints keep their weights in folders.
    folders = ("*.bin", "global_step*", "pytorch_model_fsdp*")
    if not weights and not any(any(path.glob(pattern)) for pattern in folders):
        raise ValueError(f"resume_from_checkpoint {str(path)!r} holds no model weights (*.safetensors).")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"resume_from_checkpoint: {str(file)!r} is not a readable safetensors file: {error}"
            ) from None
    state = path / "trainer_state.json"
    if not state.is_file():
        raise ValueError(f"resume_from_checkpoint {str(path)!r} has no trainer_state.json: not a Trainer checkpoint.")
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"resume_from_checkpoint: {str(state)!r} is not valid JSON: {error}") from None
    return path


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """``trl-empg train --config recipe.yaml [--field value ...]``: parse, check, train, save, push."""
    script_args, training_args, model_args = parse_args(argv, prog=prog)
    from .hub.facts import check_repo_id
    from .hub.push import push_run, require_hub_token, run_config, save_run_config

    if training_args.push_to_hub:  # the repo id by huggingface_hub's own rules, before any work
        check_repo_id(training_args.hub_model_id or Path(training_args.output_dir).name, "hub_model_id")
    if script_args.dry_run:
        resolved = run_config(script_args, training_args, model_args)
        if dry_run_without_gpu(list(sys.argv[1:] if argv is None else argv)):
            resolved["note"] = "validated without a GPU: use_cpu/bf16/fp16 shown as on CPU"
        print(json.dumps(resolved, indent=2, default=str))
        return

    # Before anything is loaded: a mistyped path would otherwise surface as a Hub-id format error, and a corrupt
    # checkpoint as a bare safetensors error after the model is built and the environments started.
    check_model_reference(model_args.model_name_or_path, "model_name_or_path")
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() not in ("true", "false"):
        check_checkpoint(resume)

    from datasets import load_dataset
    from trl import get_peft_config, get_quantization_config

    from .training.trainer import EMPGTrainer

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


if __name__ == "__main__":
    from .cli import defer_bitsandbytes

    defer_bitsandbytes(sys.argv[1:])
    main(sys.argv[1:])
