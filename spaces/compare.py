"""Compare checkpoints: two agents on the same first N test seeds, through ``trl-empg eval``'s own code path.

Both agents are evaluated by :func:`trl_empg.workflows.evaluation.evaluate_agent` with the page's settings, so the
numbers are those an offline ``trl-empg eval`` with the same settings reports.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from agent_settings import DemoSettings, SpaceError, first_line
from agents import mean, resolve_checkpoint
from environments import SPLIT, env_info
from hosting import Deadline, active_policy

from trl_empg.workflows.evaluation import evaluate_agent


def evaluate(
    checkpoint: str, env_id: str, seeds: list[int], settings: DemoSettings, deadline: Deadline
) -> dict[str, Any]:
    """One agent's evaluation report on ``seeds`` of the test split, all episodes in one lockstep batch, stopped at
    the request's ``deadline``."""
    path = resolve_checkpoint(checkpoint)
    try:
        return evaluate_agent(
            path,
            env_id,
            settings.env_kwargs,
            settings.rollout,
            split=SPLIT,
            seeds=seeds,
            greedy=settings.greedy,
            temperature=settings.temperature,
            batch_size=len(seeds),
            seed=settings.seed,
            env_workers=1,
            time_limit_s=deadline.remaining(),
        )
    except TimeoutError:
        raise deadline.exceeded() from None
    except Exception as error:
        raise SpaceError(f"Cannot evaluate {checkpoint!r}: {first_line(str(error))}") from error


def per_task_table(seeds: list[int], report_a: dict[str, Any], report_b: dict[str, Any]) -> pd.DataFrame:
    """One row per task seed: each agent's outcome, steps and mean step entropy on it."""
    rows = []
    for seed, episode_a, episode_b in zip(seeds, report_a["episodes"], report_b["episodes"]):
        row: dict[str, Any] = {"task seed": seed}
        for tag, episode in (("A", episode_a), ("B", episode_b)):
            entropy = mean(episode["step_entropies"])
            row[f"{tag} success"] = "won" if episode["won"] else ("env error" if episode["error"] else "lost")
            row[f"{tag} steps"] = episode["steps"]
            row[f"{tag} mean step entropy"] = None if entropy is None else round(entropy, 4)
        rows.append(row)
    return pd.DataFrame(rows)


def summary_line(tag: str, checkpoint: str, report: dict[str, Any]) -> str:
    """Success with its Wilson interval, mean steps and mean step entropy of one agent's report."""
    low, high = report["success_ci"]
    wins = sum(episode["won"] for episode in report["episodes"])
    entropy = report["mean_step_entropy"]
    return (
        f"- **{tag}** `{checkpoint}`: success {report['success_rate']:.0%} "
        f"({wins}/{report['num_episodes']}, {report['confidence_level']:.0%} CI {low:.0%}-{high:.0%}), "
        f"mean steps {report['mean_steps']:.1f}, mean step entropy "
        f"{'n/a' if entropy is None else f'{entropy:.3f} nats'}"
    )


def compare_checkpoints(
    checkpoint_a: str, checkpoint_b: str, env_id: str, num_tasks: int | float, settings: DemoSettings
) -> tuple[pd.DataFrame, str]:
    """Both agents on the first ``num_tasks`` test seeds with the same settings: one row per seed, plus a summary.

    Problems come back as the summary text with an empty table.
    """
    try:
        count = int(num_tasks)
        if count < 1:
            raise SpaceError("Compare on at least one task.")
        seeds = list(env_info(env_id, settings.env_kwargs).seeds[:count])
        deadline = active_policy().deadline()
        report_a = evaluate(checkpoint_a, env_id, seeds, settings, deadline)
        report_b = evaluate(checkpoint_b, env_id, seeds, settings, deadline)
    except SpaceError as error:
        return pd.DataFrame(), f"Error: {error}"
    lines = [summary_line("A", checkpoint_a, report_a), summary_line("B", checkpoint_b, report_b)]
    header = f"{env_id}, test seeds {seeds[0]}-{seeds[-1]}:\n\n"
    return per_task_table(seeds, report_a, report_b), header + "\n".join(lines)
