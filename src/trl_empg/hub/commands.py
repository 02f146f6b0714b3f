"""The ``trl-empg push``, ``pull`` and ``card`` commands: their arguments (dataclasses read by TRL's ``TrlParser``, so
each takes ``--config file.yaml`` and rejects unknown keys) and entry points, over :mod:`trl_empg.hub.push`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from huggingface_hub import CommitInfo

from .push import pull_run, push_run, render_run_card, upload_plan

__all__ = ["CardArguments", "PullArguments", "PushArguments", "card_main", "pull_main", "push_main"]


@dataclass
class _CardOptions:
    run_dir: str = field(metadata={"help": "Training output directory (weights, tokenizer, run_config.json)."})
    repo_id: str = field(metadata={"help": "Hub repo: 'name' (your namespace) or 'org/name'."})
    eval_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Evaluation report JSON files, space-separated (besides run_dir/eval*)."},
    )
    plot_files: list[str] = field(
        default_factory=list, metadata={"help": "Plot images to include, space-separated (besides run_dir's)."}
    )
    recipe: str | None = field(
        default=None, metadata={"help": "The training recipe, for a run directory without run_config.json."}
    )
    base_model: str | None = field(
        default=None, metadata={"help": "Hub id of the base model (None: the config's model_name_or_path)."}
    )
    start_description: str | None = field(
        default=None,
        metadata={
            "help": "What training started from, in words, when it is not a Hub model (a local warm start, a "
            "converted GGUF file); the card's 'starting from ...' (ignored when a base model id is known)."
        },
    )
    license: str = field(default="apache-2.0", metadata={"help": "License of the uploaded model."})


@dataclass
class PushArguments(_CardOptions):
    """``trl-empg push``: what to upload, where, and with which credentials."""

    private: bool = field(default=False, metadata={"help": "Create the repo as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    token: str | None = field(default=None, metadata={"help": "Hub token (None: HF_TOKEN or `hf auth login`)."})
    include_checkpoints: bool = field(default=False, metadata={"help": "Also upload checkpoint-*/ model files."})
    include_optimizer_states: bool = field(
        default=False, metadata={"help": "With checkpoints, also their optimizer states (what resuming needs)."}
    )


@dataclass
class CardArguments(_CardOptions):
    """``trl-empg card``: render the model card ``push`` would upload."""

    output: str = field(default="README.md", metadata={"help": "File to write, '-' for stdout."})


@dataclass
class PullArguments:
    """``trl-empg pull``: download an agent into a run directory."""

    repo_id: str = field(metadata={"help": "Hub repo of the agent ('name' or 'org/name')."})
    local_dir: str = field(metadata={"help": "Where to put it."})
    revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit."})
    token: str | None = field(default=None, metadata={"help": "Hub token, for private repos."})
    include_checkpoints: bool = field(default=False, metadata={"help": "Also download checkpoint-*/ folders."})


def _leading_positional(argv: Sequence[str] | None, flag: str) -> list[str] | None:
    # `trl-empg push DIR ...` (the form before these commands took dataclass flags) still means `--run_dir DIR`.
    if argv and not argv[0].startswith("-"):
        return [flag, argv[0], *argv[1:]]
    return None if argv is None else list(argv)


def push_main(argv: Sequence[str] | None = None, prog: str = "trl-empg push") -> CommitInfo:
    """``trl-empg push --run_dir DIR --repo_id org/name [...]`` (``push DIR ...`` works too)."""
    from ..training.recipe import parse_command

    argv = _leading_positional(argv, "--run_dir")
    (args,) = parse_command((PushArguments,), argv, prog=prog, description=upload_plan.__doc__)
    options = asdict(args)
    run_dir, repo_id = options.pop("run_dir"), options.pop("repo_id")
    info = push_run(run_dir, repo_id, **options)
    print(f"Pushed {run_dir} to {info.commit_url}")
    return info


def pull_main(argv: Sequence[str] | None = None, prog: str = "trl-empg pull") -> Path:
    """``trl-empg pull --repo_id org/name --local_dir DIR`` (``pull org/name ...`` works too)."""
    from ..training.recipe import parse_command

    argv = _leading_positional(argv, "--repo_id")
    (args,) = parse_command((PullArguments,), argv, prog=prog, description=pull_run.__doc__)
    path = pull_run(**asdict(args))
    print(f"Downloaded {args.repo_id} to {path}")
    return path


def card_main(argv: Sequence[str] | None = None, prog: str = "trl-empg card") -> str:
    """``trl-empg card --run_dir DIR --repo_id org/name [--output README.md]`` (``card DIR ...`` works too)."""
    from ..training.recipe import parse_command

    argv = _leading_positional(argv, "--run_dir")
    (args,) = parse_command((CardArguments,), argv, prog=prog, description=render_run_card.__doc__)
    options = asdict(args)
    output = options.pop("output")
    card = render_run_card(options.pop("run_dir"), options.pop("repo_id"), **options)
    if output == "-":
        print(card, end="")
    else:
        Path(output).write_text(card, encoding="utf-8")
        print(f"Wrote the model card for {args.repo_id} to {output}")
    return card
