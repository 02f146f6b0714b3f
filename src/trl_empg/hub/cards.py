"""Model cards for trained agents: Hub metadata (tags, base model, model-index) plus a body that says how to run them.

The card is rendered from what a run leaves behind (its configuration, evaluation reports and plot file names) so
that every pushed agent documents the same things: what it plays, its measured success with an error bar, the exact
command and Python code that replay it with the settings it was trained with, and the EMPG hyperparameters. The facts
themselves (method name, rollout settings, hyperparameter rows, redaction of anything private) come from
:mod:`trl_empg.hub.facts`; this module turns them into the card. The metadata is built with
``huggingface_hub.ModelCardData`` so the Hub indexes it (``model-index`` results per environment and split), and the
body comes from the Jinja template shipped in ``trl_empg/hub/templates/model_card.md``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .facts import (
    ENV_FAMILY_NAMES,
    METHODS,
    active_methods,
    adapter_description,
    check_repo_id,
    env_display_name,
    hub_model_id,
    is_local_absolute,
    method_name,
    modulation_rows,
    package_versions,
    redact,
    reward_description,
    rollout_settings,
    training_rows,
)

# check_repo_id, hub_model_id, method_name and redact are documented as trl_empg.hub.cards names.
__all__ = ["TEMPLATE_PATH", "check_repo_id", "hub_model_id", "method_name", "redact", "render_model_card"]

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "model_card.md"


def _reply_format(prompt_style: str) -> str:
    if prompt_style == "react":
        return "a short reasoning in `<think>...</think>` followed by one action in `<action>...</action>`"
    return "one action as plain text"


def _eval_command(repo_id: str, env_id: str, env_kwargs: Mapping[str, Any], rollout: Mapping[str, Any]) -> str:
    # Flags of `trl-empg eval` (trl_empg.workflows.evaluation) that reproduce the training rollout settings.
    # Every flag is a field of EvalArguments, EnvArguments or RolloutArguments, named as in the recipe.
    command = ["trl-empg", "eval", "--model", repo_id, "--env_id", env_id]
    if env_kwargs:
        command += ["--env_kwargs", json.dumps(env_kwargs, sort_keys=True)]
    command += ["--split", "test", "--num_tasks", "100"]
    for key in ("max_turns", "max_turn_tokens", "max_completion_length", "prompt_style"):
        command += [f"--{key}", str(rollout[key])]
    if not rollout["show_admissible_actions"]:
        command += ["--show_admissible_actions", "false"]
    temperature = rollout["temperature"]
    if temperature != 1.0:
        command += ["--temperature", f"{temperature:g}"]
    command += ["--output", "eval_test.json"]
    # One flag and its value per line, so the command reads (and copies) well in the card.
    lines, line = [], command[:2]
    for word in command[2:]:
        if word.startswith("--") and line:
            lines.append(shlex.join(line))
            line = []
        line.append(word)
    lines.append(shlex.join(line))
    return " \\\n  ".join(lines)


def _python_snippet(repo_id: str, env_id: str, env_kwargs: Mapping[str, Any], rollout: Mapping[str, Any]) -> str:
    settings = "".join(
        f"    {key}={value},\n"
        for key, value in [
            ("max_turns", rollout["max_turns"]),
            ("max_turn_tokens", rollout["max_turn_tokens"]),
            ("max_completion_length", rollout["max_completion_length"]),
            ("prompt_style", json.dumps(rollout["prompt_style"])),
            ("show_admissible_actions", bool(rollout["show_admissible_actions"])),
        ]
    )
    return "\n".join(
        [
            "from trl_empg.envs import make",
            "from trl_empg.envs.pool import EnvPool",
            "from trl_empg.rollout.policy import HFPolicy, SamplingSettings",
            "from trl_empg.rollout import AgentPrompts, RolloutArguments, run_episodes",
            "",
            f"env_id, env_kwargs = {json.dumps(env_id)}, {dict(env_kwargs)!r}",
            f"policy = HFPolicy.from_pretrained({json.dumps(repo_id)}, "
            f"SamplingSettings(temperature={float(rollout['temperature'])!r}))",
            f"settings = RolloutArguments(\n{settings})",
            "env = make(env_id, **env_kwargs)  # the task seeds of each split, and the task text the agent was shown",
            'seeds, description = env.task_seeds("test")[:8], getattr(env, "task_description", "")',
            "env.close()",
            "prompts = AgentPrompts(settings.prompt_style, settings.show_admissible_actions, description)",
            "with EnvPool(env_id, env_kwargs) as pool:",
            '    tasks = [(seed, "test") for seed in seeds]',
            "    episodes = run_episodes(pool, tasks, policy.tokenizer, policy, settings, prompts)",
            'print(f"success rate: {sum(e.won for e in episodes) / len(episodes):.2f}")',
            "print(episodes[0].actions)",
        ]
    )


def _result_row(report: Mapping[str, Any]) -> dict[str, str]:
    low, high = report["success_ci"]
    settings = report.get("settings") or {}
    if settings.get("greedy"):
        decoding = "greedy"
    elif settings.get("temperature") is not None:
        decoding = f"sampled, T={settings['temperature']:g}"
    else:
        decoding = "n/a"
    return {
        "env_name": env_display_name(report["env_id"]),
        "env_id": report["env_id"],
        "split": report["split"],
        "num_episodes": str(report["num_episodes"]),
        "success": f"{report['success_rate']:.3f} [{low:.3f}, {high:.3f}]",
        "mean_score": f"{report['mean_score']:.3f}" if report.get("mean_score") is not None else "n/a",
        "mean_steps": f"{report['mean_steps']:.1f}" if report.get("mean_steps") is not None else "n/a",
        "decoding": decoding,
    }


def _eval_results(report: Mapping[str, Any]) -> list[EvalResult]:
    common = {
        "task_type": "reinforcement-learning",
        "task_name": "Text-game agent",
        "dataset_type": report["env_id"],
        "dataset_name": env_display_name(report["env_id"]),
        "dataset_split": report["split"],
    }
    metrics = [("success_rate", "Success rate"), ("mean_score", "Mean score"), ("mean_steps", "Mean steps")]
    return [
        EvalResult(metric_type=key, metric_name=name, metric_value=round(float(report[key]), 4), **common)
        for key, name in metrics
        if report.get(key) is not None
    ]


def _plot_entries(plots: Sequence[str]) -> list[dict[str, str]]:
    entries = []
    for plot in plots:
        if is_local_absolute(plot):
            raise ValueError(f"Plot paths in a card must be relative to the repository root, got {plot!r}.")
        stem = PurePosixPath(plot).stem
        entries.append({"path": PurePosixPath(plot).as_posix(), "title": stem.replace("_", " ").replace("-", " ")})
    return entries


def render_model_card(
    training_config: Mapping[str, Any],
    repo_id: str,
    *,
    base_model: str | None = None,
    env_id: str | None = None,
    eval_results: Sequence[Mapping[str, Any]] = (),
    plots: Sequence[str] = (),
    model_config: Mapping[str, Any] | None = None,
    license: str = "apache-2.0",
    start_description: str | None = None,
) -> str:
    """Render the README.md (YAML metadata + body) of the Hub repo ``repo_id`` for a trained agent.

    Args:
        training_config: the run's :class:`~trl_empg.EMPGConfig` as a dict (``to_dict()``); redacted before use.
        repo_id: the Hub repo the card describes; the usage snippets load the agent from it.
        base_model: Hub id of the model training started from; defaults to ``model_config``'s
            ``model_name_or_path`` when that is a Hub id (see :func:`hub_model_id`), else the card names no base.
        env_id: the environment; defaults to the config's ``env_id``.
        eval_results: evaluation reports of this agent in ``trl_empg.workflows.evaluation``'s JSON schema (``env_id``,
            ``split``, ``num_episodes``, ``success_rate``, ``success_ci``, ``mean_score``, ``mean_steps``, ...).
        plots: image paths relative to the repo root (e.g. ``plots/rewards.png``), shown under the training details.
        model_config: TRL's ``ModelConfig`` as a dict, for LoRA and quantization details and the base model.
        license: the card's license; the base models of the recipes (Qwen2.5 0.5B/1.5B/7B) are Apache-2.0.
        start_description: what training started from when it is not a Hub model (e.g. a tiny agent built offline).
    """
    training = redact(dict(training_config))
    model = redact(dict(model_config or {}))
    check_repo_id(repo_id)
    env_id = env_id or training.get("env_id")
    if not env_id:
        raise ValueError("The card needs the environment id (env_id), from the config or as an argument.")
    base_model = base_model or hub_model_id(model.get("model_name_or_path"))
    if base_model is not None and hub_model_id(base_model) is None:
        raise ValueError(f"base_model must be a Hub model id, got {base_model!r}.")
    env_kwargs = training.get("env_kwargs") or {}
    rollout = rollout_settings(training)
    adapter = adapter_description(model)
    family = env_id.partition(":")[0]
    tags = ["trl", "trl-empg", "reinforcement-learning", "agent", "text-game"]
    tags += [label.lower() for label in method_name(training).replace("Dr. ", "dr-").split("+")]
    tags += [ENV_FAMILY_NAMES[family][1]] if family in ENV_FAMILY_NAMES else []
    tags += ["lora"] if adapter else []
    tags += ["qlora", "4-bit"] if model.get("load_in_4bit") else []
    tags = list(dict.fromkeys(tags))
    model_name = repo_id.split("/")[-1]
    results = [dict(report) for report in eval_results]
    card_data = ModelCardData(
        language="en",
        license=license,
        library_name="peft" if adapter else "transformers",
        base_model=base_model,
        pipeline_tag="text-generation",
        tags=tags,
        model_name=model_name,
        eval_results=[result for report in results for result in _eval_results(report)] or None,
    )
    confidence = {report.get("confidence_level", 0.95) for report in results}
    modulation_title, modulation_table = modulation_rows(training)
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        base_model=base_model,
        start_description=start_description or "a local model that is not on the Hub",
        env_id=env_id,
        env_name=env_display_name(env_id),
        env_kwargs=json.dumps(env_kwargs, sort_keys=True) if env_kwargs else "",
        env_split=training.get("env_split", "train"),
        env_num_tasks=training.get("env_num_tasks"),
        show_admissible_actions=rollout["show_admissible_actions"],
        reply_format=_reply_format(str(rollout["prompt_style"])),
        prompt_style=rollout["prompt_style"],
        max_turns=rollout["max_turns"],
        method=method_name(training),
        modulation=training.get("modulation", "empg"),
        loss_type=training.get("loss_type", "dapo"),
        reward_description=reward_description(training),
        adapter=adapter,
        training_table=training_rows(training),
        modulation_title=modulation_title,
        modulation_table=modulation_table,
        results=[_result_row(report) for report in results],
        confidence_label=(
            f"{confidence.pop():.0%} Wilson CI" if len(confidence) == 1 else "Wilson CI, level per report"
        ),
        results_note=(
            "Success rate: fraction of episodes whose task was solved, with its Wilson score confidence interval. "
            "Mean score: the environment's task progress in [0, 1]. Mean steps: agent turns per episode."
        ),
        eval_command=_eval_command(repo_id, env_id, env_kwargs, rollout),
        python_snippet=_python_snippet(repo_id, env_id, env_kwargs, rollout),
        plots=_plot_entries(plots),
        versions=package_versions(adapter is not None),
        other_methods=[  # EMPG's BibTeX is always in the template
            {"name": METHODS[key][0], "arxiv": METHODS[key][1]} for key in active_methods(training) if key != "empg"
        ],
    )
    return str(card).rstrip("\n") + "\n"
