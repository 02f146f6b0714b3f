"""Analysis of the paired EMPG-vs-GRPO study (``benchmarks/study.py``): pure functions on run records, no training.

A run record (``benchmarks/results/study/<bench>/<method>-seed<N>.json``) holds, per checkpoint, the outcome of every
evaluation episode (``won``, in evaluation order) and the evaluation's task seeds. Every method of a training seed
starts from the same warm start and every checkpoint plays the same evaluation episodes (same test seeds, same order,
same torch seed), so method M and the baseline are compared *paired*:

- per training seed: the difference of final success (last checkpoint) and of the area under the success curve
  (trapezoid over the checkpoints, divided by the step span: the mean success over training, i.e. sample
  efficiency), and over seeds a percentile bootstrap 95% CI of the mean difference plus a two-sided exact sign test;
- per evaluation episode: the same differences episode by episode (episode e of M against episode e of the baseline,
  same task), averaged over seeds, with a bootstrap over episodes and an exact sign test on the discordant episodes
  (McNemar's exact test for the final success). This is where the power is (hundreds of pairs instead of five), but
  it is *conditional on the trained seeds*: it says whether these runs of M play better than these runs of the
  baseline, not whether a new training seed would. The seed-level CI answers that, with little power at 5 seeds.

A difference is called significant at 95% when its CI excludes 0; a sign test is reported with its p-value. With 5
seeds the two-sided sign test cannot go below p = 0.0625 (all five one way), so it is never significant at 0.05 there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Comparisons reported, (method, baseline), when both were run.
COMPARISONS = (("empg", "grpo"), ("empg_scale_only", "grpo"), ("empg_bonus_only", "grpo"))
LEVEL = 0.95


# ----------------------------------------------------------------------------------------------- basic statistics
def wilson(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    z = _normal_quantile(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _normal_quantile(q: float) -> float:
    """Standard normal quantile by bisection on erf (exact enough for CIs, no scipy needed)."""
    low, high = -10.0, 10.0
    for _ in range(100):
        mid = (low + high) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def sign_test(positive: int, negative: int) -> float:
    """Two-sided exact binomial (sign) test p-value of ``positive`` vs ``negative`` non-zero differences under
    p = 1/2 (ties are dropped before calling). Equals ``scipy.stats.binomtest(positive, n, 0.5).pvalue``."""
    n = positive + negative
    if n == 0:
        return 1.0
    k = min(positive, negative)
    tail = math.fsum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = LEVEL,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (resampled with replacement; deterministic for a seed).

    ``statistic`` maps a (n_boot, n) array of resamples to n_boot statistics (default: row means)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    index = rng.integers(0, values.size, size=(n_boot, values.size))
    stats = values[index].mean(axis=1) if statistic is None else statistic(values[index])
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def auc(steps: Sequence[float], values: Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Area under a curve sampled at ``steps`` (trapezoid), divided by the step span: the curve's mean over
    training, in the values' units. ``values`` may carry extra trailing axes (steps first): one AUC per column."""
    steps = np.asarray(steps, dtype=float)
    values = np.asarray(values, dtype=float)
    if steps.size < 2:
        return values[0] if steps.size else math.nan
    widths = np.diff(steps).reshape((-1,) + (1,) * (values.ndim - 1))
    area = (widths * (values[1:] + values[:-1]) / 2).sum(axis=0)
    return area / (steps[-1] - steps[0])


# ----------------------------------------------------------------------------------------------- paired comparison
def outcome_matrix(run: dict[str, Any]) -> tuple[list[int], np.ndarray]:
    """A run's checkpoint steps and its (checkpoints, episodes) 0/1 matrix of evaluation outcomes."""
    checkpoints = sorted(run["checkpoints"], key=lambda c: c["step"])
    return [c["step"] for c in checkpoints], np.array([[int(w) for w in c["won"]] for c in checkpoints], dtype=float)


def paired_matrices(
    runs: list[dict[str, Any]], method: str, baseline: str
) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
    """The seeds both methods finished, the common checkpoint steps, and the two (seeds, checkpoints, episodes)
    outcome arrays, after checking that both play the same evaluation episodes."""
    by_key = {(r["method"], r["seed"]): r for r in runs}
    seeds = sorted(s for (m, s) in by_key if m == method and (baseline, s) in by_key)
    if not seeds:
        return [], [], np.zeros((0, 0, 0)), np.zeros((0, 0, 0))
    steps = None
    arrays: dict[str, list[np.ndarray]] = {method: [], baseline: []}
    reference = by_key[(baseline, seeds[0])].get("eval_task_seeds")
    for seed in seeds:
        for name in (method, baseline):
            run = by_key[(name, seed)]
            if run.get("eval_task_seeds") != reference:
                raise ValueError(f"{name} seed {seed} did not play the same evaluation episodes as {baseline}.")
            run_steps, matrix = outcome_matrix(run)
            if steps is None:
                steps = run_steps
            if run_steps != steps:
                raise ValueError(f"{name} seed {seed} has checkpoints {run_steps}, expected {steps}.")
            arrays[name].append(matrix)
    return seeds, list(steps or []), np.stack(arrays[method]), np.stack(arrays[baseline])


def compare(
    runs: list[dict[str, Any]], method: str, baseline: str = "grpo", *, n_boot: int = 10_000, seed: int = 0
) -> dict[str, Any] | None:
    """Paired differences ``method - baseline`` on final success and on AUC (see the module docstring); None when
    no seed has both."""
    seeds, steps, ours, theirs = paired_matrices(runs, method, baseline)
    if not seeds:
        return None
    # Per (seed, episode) differences: final checkpoint, and AUC over the checkpoints of each episode's outcomes.
    per_episode = {
        "final_success": ours[:, -1, :] - theirs[:, -1, :],
        "auc": auc(steps, np.moveaxis(ours, 1, 0)) - auc(steps, np.moveaxis(theirs, 1, 0)),
    }
    result: dict[str, Any] = {"method": method, "baseline": baseline, "seeds": seeds, "steps": steps}
    for metric, diff in per_episode.items():
        diff = np.asarray(diff, dtype=float).reshape(len(seeds), -1)
        per_seed = diff.mean(axis=1)
        per_column = diff.mean(axis=0)
        positive, negative = int((per_seed > 0).sum()), int((per_seed < 0).sum())
        ep_positive, ep_negative = int((per_column > 0).sum()), int((per_column < 0).sum())
        seed_ci = bootstrap_ci(per_seed, n_boot=n_boot, seed=seed)
        episode_ci = bootstrap_ci(per_column, n_boot=n_boot, seed=seed + 1)
        result[metric] = {
            "difference": float(per_seed.mean()),
            "per_seed": [float(d) for d in per_seed],
            "method_mean": float(_metric(ours, steps, metric).mean()),
            "baseline_mean": float(_metric(theirs, steps, metric).mean()),
            "seed_bootstrap_ci": list(seed_ci),
            "seed_significant": _excludes_zero(seed_ci) and len(seeds) > 1,
            "seed_sign_test": {"positive": positive, "negative": negative, "p": sign_test(positive, negative)},
            "episodes": int(diff.shape[1]),
            "episode_bootstrap_ci": list(episode_ci),
            "episode_significant": _excludes_zero(episode_ci),
            "episode_sign_test": {
                "positive": ep_positive,
                "negative": ep_negative,
                "p": sign_test(ep_positive, ep_negative),
            },
        }
    return result


def _metric(outcomes: np.ndarray, steps: list[int], metric: str) -> np.ndarray:
    """Per-seed final success or AUC of a (seeds, checkpoints, episodes) outcome array."""
    success = outcomes.mean(axis=2)  # (seeds, checkpoints)
    return success[:, -1] if metric == "final_success" else np.asarray(auc(steps, success.T))


def _excludes_zero(ci: Sequence[float]) -> bool:
    return bool(ci[0] > 0 or ci[1] < 0)


# ----------------------------------------------------------------------------------------------- curves
def curves(runs: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """Per checkpoint, over a method's seeds: mean, min and max of success, invalid-action rate, KL to the warm start
    and step entropy, plus the pooled success with its Wilson CI (all seeds' episodes together)."""
    chosen = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
    table: dict[int, dict[str, list[float]]] = {}
    pooled: dict[int, list[int]] = {}
    for run in chosen:
        for c in run["checkpoints"]:
            row = table.setdefault(c["step"], {})
            for key in ("success_rate", "invalid_action_rate", "kl", "mean_step_entropy"):
                if c.get(key) is not None:
                    row.setdefault(key, []).append(float(c[key]))
            wins = pooled.setdefault(c["step"], [0, 0])
            wins[0] += int(sum(int(w) for w in c["won"]))
            wins[1] += len(c["won"])
    out: dict[str, Any] = {"seeds": [r["seed"] for r in chosen], "steps": sorted(table)}
    for key in ("success_rate", "invalid_action_rate", "kl", "mean_step_entropy"):
        out[key] = [
            {"mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v))}
            if (v := table[s].get(key))
            else None
            for s in out["steps"]
        ]
    out["pooled_success"] = [
        {"rate": pooled[s][0] / pooled[s][1], "wilson_ci": list(wilson(*pooled[s]))} for s in out["steps"]
    ]
    if chosen:
        steps = out["steps"]
        per_seed_auc = [
            float(auc(steps, [c["success_rate"] for c in sorted(r["checkpoints"], key=lambda c: c["step"])]))
            for r in chosen
        ]
        out["auc"] = {"mean": float(np.mean(per_seed_auc)), "per_seed": per_seed_auc}
    return out


def analyse_benchmark(runs: list[dict[str, Any]], *, n_boot: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Curves of every method and the paired comparisons of :data:`COMPARISONS` that the runs allow."""
    methods = sorted({r["method"] for r in runs})
    comparisons = [
        c
        for method, baseline in COMPARISONS
        if method in methods and baseline in methods
        if (c := compare(runs, method, baseline, n_boot=n_boot, seed=seed)) is not None
    ]
    return {"methods": methods, "curves": {m: curves(runs, m) for m in methods}, "comparisons": comparisons}


# ----------------------------------------------------------------------------------------------- report
def _fmt_ci(ci: Sequence[float]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def verdict(entry: dict[str, Any]) -> str:
    """Plain words for one metric of a comparison."""
    seed_word = "significant" if entry["seed_significant"] else "not significant"
    episode_word = "significant" if entry["episode_significant"] else "not significant"
    return f"over seeds {seed_word}; over paired episodes (these seeds) {episode_word}"


def summary_markdown(report: dict[str, dict[str, Any]], plan: dict[str, Any] | None = None) -> str:
    """The study's summary: per benchmark, success and AUC per method, then every paired difference with both CIs,
    both sign tests and a plain verdict."""
    lines = [
        "# EMPG vs GRPO: the paired study",
        "",
        "Generated by `benchmarks/study.py --analyse` from the run files in this folder. Every method of a training "
        "seed starts from the same warm start; every checkpoint plays the same evaluation episodes (same test seeds, "
        "same order, same sampling seed), so differences are paired. AUC = area under the test-success curve over "
        "the checkpoints (trapezoid), divided by the step span (mean success during training: sample efficiency).",
        "",
        "Two 95% intervals per difference: **seeds** (percentile bootstrap of the per-seed differences: would a new "
        "training seed show it?) and **episodes** (bootstrap over evaluation episodes paired by test seed, averaged "
        "over the seeds: do *these* trained runs differ? More power, conditional on the seeds). A difference is "
        "called significant when its interval excludes 0. Sign tests are two-sided exact binomial tests, over seeds "
        "(with 5 seeds the smallest possible p is 0.0625) and over the discordant episodes (McNemar's exact test on "
        "final success).",
        "",
    ]
    if plan:
        lines += [f"Plan: {plan}", ""]
    for bench, analysis in report.items():
        lines += [f"## {bench}", ""]
        if not analysis.get("methods"):
            lines += [analysis.get("status", "no finished runs yet"), ""]
            continue
        lines += [
            "| method | seeds | success at each checkpoint (mean over seeds) | AUC | invalid (last) | KL (last) |"
        ]
        lines += ["|---|---|---|---|---|---|"]
        for method, curve in analysis["curves"].items():
            success = ", ".join(
                f"{s}: {c['mean']:.3f}" for s, c in zip(curve["steps"], curve["success_rate"]) if c is not None
            )
            invalid = curve["invalid_action_rate"][-1]
            kl = curve["kl"][-1]
            lines.append(
                f"| {method} | {len(curve['seeds'])} | {success} | {curve.get('auc', {}).get('mean', math.nan):.3f} "
                f"| {invalid['mean'] if invalid else math.nan:.3f} | {kl['mean'] if kl else math.nan:.4f} |"
            )
        lines.append("")
        if not analysis["comparisons"]:
            lines += ["No paired comparison yet (a method and GRPO on a common seed are needed).", ""]
        for comp in analysis["comparisons"]:
            lines += [
                f"**{comp['method']} - {comp['baseline']}** (seeds {comp['seeds']}, checkpoints {comp['steps']})",
                "",
            ]
            lines += [
                "| metric | difference | per seed | seeds 95% CI | sign test (seeds) | episodes 95% CI "
                "| sign test (episodes) | verdict |"
            ]
            lines += ["|---|---|---|---|---|---|---|---|"]
            for metric in ("final_success", "auc"):
                e = comp[metric]
                st, ep = e["seed_sign_test"], e["episode_sign_test"]
                lines.append(
                    f"| {metric} | {e['difference']:+.3f} | {', '.join(f'{d:+.3f}' for d in e['per_seed'])} "
                    f"| {_fmt_ci(e['seed_bootstrap_ci'])} | {st['positive']}+ / {st['negative']}- p={st['p']:.3g} "
                    f"| {_fmt_ci(e['episode_bootstrap_ci'])} | {ep['positive']}+ / {ep['negative']}- p={ep['p']:.3g} "
                    f"| {verdict(e)} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def plot_benchmark(bench: str, analysis: dict[str, Any], path: Path) -> Path:
    """One PNG: test success (mean over seeds, min-max band over seeds, dotted pooled Wilson CI), invalid-action
    rate, KL to the warm start and step entropy per checkpoint, one line per method."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(16, 4.2))
    axes = figure.subplots(1, 4)
    panels = (
        ("success_rate", "test success"),
        ("invalid_action_rate", "invalid-action rate (test)"),
        ("kl", "KL to the warm start (training)"),
        ("mean_step_entropy", "step entropy, nats (test)"),
    )
    for axis, (key, title) in zip(axes, panels):
        for method, curve in analysis["curves"].items():
            points = [(s, c) for s, c in zip(curve["steps"], curve[key]) if c is not None]
            if not points:
                continue
            x = [p[0] for p in points]
            (line,) = axis.plot(
                x, [p[1]["mean"] for p in points], marker="o", label=f"{method} ({len(curve['seeds'])})"
            )
            axis.fill_between(
                x, [p[1]["min"] for p in points], [p[1]["max"] for p in points], alpha=0.18, color=line.get_color()
            )
            if key == "success_rate":
                ci = [p["wilson_ci"] for p in curve["pooled_success"]]
                axis.plot(curve["steps"], [c[0] for c in ci], ":", color=line.get_color(), linewidth=0.8)
                axis.plot(curve["steps"], [c[1] for c in ci], ":", color=line.get_color(), linewidth=0.8)
        note = "; dotted: pooled Wilson 95% CI" if key == "success_rate" else ""
        axis.set_title(f"{bench}: {title}\n(mean over seeds, band min-max{note})", fontsize=9)
        axis.set_xlabel("training step")
        axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
