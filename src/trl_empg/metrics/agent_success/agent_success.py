"""Agent success: how often an agent completes its text-environment tasks, with an honest error bar.

An ``evaluate`` metric so that agent evaluations plug into the same tooling as any other Hugging Face metric. It is
self-contained (standard library plus ``evaluate`` and ``datasets``) because ``evaluate.load`` copies this one file
into its module cache and imports it from there, where the package's other modules are not importable.

Load it offline from its file or its directory (Hub metrics cannot be fetched everywhere)::

    metric = evaluate.load("path/to/metrics/agent_success")
    metric.compute(won=[True, False], score=[1.0, 0.5], num_steps=[4, 20], task_id=["12", "13"])

Confidence interval: the Wilson score interval. Evaluation sets are small (tens to hundreds of episodes) and success
rates of interest sit near 0 or 1, where the textbook normal (Wald) interval undercovers and collapses to zero width
at 0/n and n/n, and can leave [0, 1]. Clopper-Pearson is conservative (wider than needed) and needs beta quantiles.
Wilson's interval has close to nominal coverage at these sizes, always lies in [0, 1], has positive width at the
extremes, and is closed-form (only a normal quantile, from the standard library). It treats episodes as independent
trials: with several episodes per task they are correlated through the task, so the interval is then too narrow for
the task distribution; evaluate more tasks rather than more episodes per task.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import datasets
import evaluate

_DESCRIPTION = """
Success rate, mean score and mean episode length of an agent over episodes of a text environment, with a Wilson
score confidence interval for the success rate and the same statistics per task.
"""

_KWARGS_DESCRIPTION = """
Args:
    won (`list` of `bool`): whether each episode's task was completed.
    score (`list` of `float`): each episode's final score (task progress, 1.0 on success).
    num_steps (`list` of `int`): the agent turns each episode took.
    task_id (`list` of `str`): the task each episode played (e.g. its seed), for the per-task breakdown.
    confidence_level (`float`, defaults to 0.95): coverage of the success-rate interval, in (0, 1).
Returns:
    num_episodes (`int`), success_rate (`float`), success_ci (`list` [low, high]), confidence_level (`float`),
    mean_score (`float`), mean_steps (`float`), per_task (`dict` task id -> {num_episodes, successes,
    success_rate, mean_score, mean_steps}, tasks in order of first appearance).
Examples:
    >>> metric = evaluate.load("path/to/agent_success")
    >>> result = metric.compute(won=[True, False], score=[1.0, 0.0], num_steps=[3, 5], task_id=["a", "b"])
    >>> result["success_rate"], result["mean_steps"]
    (0.5, 4.0)
"""

_CITATION = """
@article{wilson1927probable,
  title={Probable inference, the law of succession, and statistical inference},
  author={Wilson, Edwin B.},
  journal={Journal of the American Statistical Association},
  volume={22},
  number={158},
  pages={209--212},
  year={1927}
}
"""


def wilson_interval(successes: int, trials: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (see the module docstring for why this interval)."""
    if trials < 1:
        raise ValueError(f"The interval needs at least one trial, got {trials}.")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}.")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must lie in (0, 1), got {confidence_level}.")
    z = NormalDist().inv_cdf(0.5 + confidence_level / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # At 0/n and n/n a bound is exactly 0 or 1 in exact arithmetic; do not report the rounding error.
    low = 0.0 if successes == 0 else max(0.0, center - half_width)
    high = 1.0 if successes == trials else min(1.0, center + half_width)
    return low, high


def _summary(won: list[bool], score: list[float], num_steps: list[int]) -> dict[str, float | int]:
    n = len(won)
    successes = sum(bool(w) for w in won)
    return {
        "num_episodes": n,
        "successes": successes,
        "success_rate": successes / n,
        "mean_score": math.fsum(score) / n,
        "mean_steps": math.fsum(num_steps) / n,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AgentSuccess(evaluate.Metric):
    """Success rate with a Wilson interval, mean score, mean steps and a per-task breakdown of agent episodes."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "won": datasets.Value("bool"),
                    "score": datasets.Value("float64"),
                    "num_steps": datasets.Value("int64"),
                    "task_id": datasets.Value("string"),
                }
            ),
        )

    def _compute(
        self,
        won: list[bool],
        score: list[float],
        num_steps: list[int],
        task_id: list[str],
        confidence_level: float = 0.95,
    ) -> dict:
        if not won:
            raise ValueError("agent_success needs at least one episode.")
        overall = _summary(won, score, num_steps)
        low, high = wilson_interval(overall.pop("successes"), len(won), confidence_level)
        rows: dict[str, list[int]] = {}
        for row, task in enumerate(task_id):
            rows.setdefault(task, []).append(row)
        per_task = {
            task: _summary([won[i] for i in idx], [score[i] for i in idx], [num_steps[i] for i in idx])
            for task, idx in rows.items()
        }
        return {
            **overall,
            "success_ci": [low, high],
            "confidence_level": confidence_level,
            "per_task": per_task,
        }
