"""The paired study (benchmarks/study.py, benchmarks/study_analysis.py): the statistics on synthetic data, and the
resumable runner with a fake training function (no model is trained here)."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _module(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


analysis = _module("study_analysis")
study = _module("study")


# ------------------------------------------------------------------------------------------------ statistics
def test_sign_test_exact_values():
    assert analysis.sign_test(5, 0) == pytest.approx(0.0625)  # the smallest p five seeds can give
    assert analysis.sign_test(0, 5) == pytest.approx(0.0625)
    assert analysis.sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert analysis.sign_test(10, 0) == pytest.approx(2 / 1024)
    assert analysis.sign_test(3, 3) == 1.0 and analysis.sign_test(0, 0) == 1.0
    assert analysis.sign_test(4, 1) == pytest.approx(0.375)


def test_wilson_interval():
    low, high = analysis.wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert analysis.wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert analysis.wilson(10, 10)[1] == pytest.approx(1.0)


def test_bootstrap_is_deterministic_for_a_seed():
    values = np.random.default_rng(3).normal(size=50)
    assert analysis.bootstrap_ci(values, seed=7, n_boot=2000) == analysis.bootstrap_ci(values, seed=7, n_boot=2000)
    assert analysis.bootstrap_ci(values, seed=7, n_boot=2000) != analysis.bootstrap_ci(values, seed=8, n_boot=2000)
    low, high = analysis.bootstrap_ci(values, seed=0, n_boot=2000)
    assert low < values.mean() < high


def test_auc_is_the_normalised_trapezoid():
    assert analysis.auc([0, 10, 20], [0.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert analysis.auc([0, 10, 30], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert analysis.auc([0, 10, 30], [0.0, 1.0, 1.0]) == pytest.approx((5 + 20) / 30)
    per_column = analysis.auc([0, 10, 20], np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]))
    assert per_column == pytest.approx([0.75, 1.0])


def _synthetic_runs(effect: float, seeds: int = 5, episodes: int = 500, steps=(0, 10, 20), data_seed: int = 0, **more):
    """GRPO and EMPG runs (and ``more`` methods with their effects) on the same evaluation episodes: each episode
    (task) has its own difficulty, shared by every method (so pairing helps); EMPG's success is raised by ``effect``
    after step 0 (step 0 is the shared warm start, identical for all)."""
    rng = np.random.default_rng(data_seed)
    difficulty = rng.uniform(0.2, 0.8, size=episodes)
    warm = (rng.uniform(size=episodes) < difficulty).astype(int)
    runs = []
    for seed in range(seeds):
        for method, delta in {"grpo": 0.0, "empg": effect, **more}.items():
            checkpoints = []
            for step in steps:
                won = warm if step == 0 else (rng.uniform(size=episodes) < difficulty + 0.05 + delta).astype(int)
                checkpoints.append(
                    {
                        "step": step,
                        "won": "".join(map(str, won)),
                        "success_rate": float(won.mean()),
                        "invalid_action_rate": 0.1,
                        "kl": 0.0 if step == 0 else 0.01,
                        "mean_step_entropy": 1.0,
                    }
                )
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "eval_task_seeds": "same",
                    "checkpoints": checkpoints,
                    "status": "complete",
                }
            )
    return runs


def test_a_known_difference_is_detected():
    result = analysis.compare(_synthetic_runs(0.12), "empg", "grpo", n_boot=2000)
    final, area = result["final_success"], result["auc"]
    assert final["difference"] == pytest.approx(0.12, abs=0.03)
    assert final["episode_significant"] and final["episode_bootstrap_ci"][0] > 0
    assert final["episode_sign_test"]["p"] < 0.05 and final["episodes"] == 500
    assert final["seed_sign_test"] == {"positive": 5, "negative": 0, "p": pytest.approx(0.0625)}
    assert final["seed_significant"]  # five seeds all well above: the seed bootstrap sees it too
    assert area["difference"] == pytest.approx(0.12 * 0.75, abs=0.03)  # no gain at step 0: 3/4 of the area
    assert area["episode_significant"]
    assert result["seeds"] == [0, 1, 2, 3, 4] and result["steps"] == [0, 10, 20]


def test_a_null_difference_is_not_detected():
    result = analysis.compare(_synthetic_runs(0.0, data_seed=1), "empg", "grpo", n_boot=2000)
    for metric in ("final_success", "auc"):
        entry = result[metric]
        assert not entry["episode_significant"] and not entry["seed_significant"]
        low, high = entry["episode_bootstrap_ci"]
        assert low < 0 < high and abs(entry["difference"]) < 0.03


def test_compare_refuses_unpaired_evaluations():
    runs = _synthetic_runs(0.0, seeds=1, episodes=20)
    runs[0]["eval_task_seeds"] = "other"
    with pytest.raises(ValueError, match="same evaluation episodes"):
        analysis.compare(runs, "empg", "grpo")


def test_summary_says_what_is_significant(tmp_path):
    runs = _synthetic_runs(0.12, empg_scale_only=0.0)
    report = {"coin": analysis.analyse_benchmark(runs, n_boot=1000), "search": {"status": "waiting for warm start"}}
    text = analysis.summary_markdown(report)
    empg_block = text.split("**empg - grpo**")[1].split("**empg_scale_only - grpo**")[0]
    scale_block = text.split("**empg_scale_only - grpo**")[1]
    assert "over paired episodes (these seeds) significant" in empg_block
    assert "over seeds not significant; over paired episodes (these seeds) not significant" in scale_block
    assert "waiting for warm start" in text
    png = analysis.plot_benchmark("coin", report["coin"], tmp_path / "coin.png")
    assert png.stat().st_size > 1000


def test_kl_at_checkpoints_averages_the_logged_steps_since_the_previous_one():
    curve = [(1, 0.1), (2, 0.3), (3, 0.5), (4, 0.7)]
    assert study.kl_at_checkpoints(curve, [0, 2, 4]) == [0.0, pytest.approx(0.2), pytest.approx(0.6)]
    assert study.kl_at_checkpoints([], [0, 2]) == [0.0, None]


# ------------------------------------------------------------------------------------------------ the runner
def _warm_start(folder: Path, **taught) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    training = {"env_id": "twx:coin", "env_kwargs": {}, "max_turns": 5, "prompt_style": "plain", **taught}
    (folder / "run_config.json").write_text(json.dumps({"training": training}))
    return folder


@pytest.fixture
def fake_study(tmp_path, monkeypatch):
    """study.py with a two-benchmark table (one ready, one waiting) and fake training and evaluation."""
    row = {
        "env_id": "twx:coin",
        "env_kwargs": {},
        "rollout": {"max_turns": 5, "prompt_style": "plain"},
        "training": {},
        "eval": {"tasks": 3, "episodes_per_task": 2},
    }
    table = {
        "ready": {**row, "warm_start": {"path": str(_warm_start(tmp_path / "ws" / "sft")), "build": "x"}},
        "waiting": {**row, "warm_start": {"path": str(tmp_path / "missing"), "build": "other.py"}},
    }
    monkeypatch.setattr(study, "BENCHMARKS", table)
    calls = {"train": [], "eval": 0, "fail": set()}

    def evaluation_report(path, game, args):
        calls["eval"] += 1
        episodes = [
            {"task_seed": t, "won": (t + i + len(path)) % 2 == 0}
            for t in range(args.eval_tasks)
            for i in range(args.eval_episodes_per_task)
        ]
        return {
            "success_rate": sum(e["won"] for e in episodes) / len(episodes),
            "success_ci": [0.0, 1.0],
            "mean_steps": 3.0,
            "invalid_action_rate": 0.1,
            "mean_step_entropy": 0.5,
            "episodes": episodes,
        }

    def train_one(game, method, seed, start, args, evaluator):
        calls["train"].append((game, method, seed))
        if (method, seed) in calls["fail"]:
            raise KeyboardInterrupt  # killed mid-run
        steps = study.learning.checkpoint_steps(args)
        return {
            "evaluations": [start["evaluation"]] + [{"step": s, **evaluator(f"ckpt-{s}", game, args)} for s in steps],
            "curves": {"kl": [(s, 0.01 * s) for s in range(1, args.steps + 1)]},
            "train_seconds": 1.5,
        }

    monkeypatch.setattr(study.learning, "evaluation_report", evaluation_report)
    monkeypatch.setattr(study.learning, "train_one", train_one)
    base = ["--methods", "grpo", "empg", "--seeds", "0", "1", "--steps", "4", "--eval-every", "2"]
    base += ["--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]
    base += ["--min-eval-episodes", "6", "--n-boot", "200", "--benchmarks", "ready", "waiting"]
    return tmp_path, calls, base


def test_runner_trains_each_run_once_and_skips_finished_ones(fake_study):
    tmp_path, calls, base = fake_study
    data = study.main(base)
    assert sorted(calls["train"]) == sorted(("ready", m, s) for m in ("grpo", "empg") for s in (0, 1))
    assert calls["eval"] == 1 + 4 * 2  # the warm start once, then two checkpoints per run
    run = json.loads((tmp_path / "results" / "ready" / "empg-seed1.json").read_text())
    assert run["status"] == "complete" and [c["step"] for c in run["checkpoints"]] == [0, 2, 4]
    assert [c["kl"] for c in run["checkpoints"]] == [0.0, pytest.approx(0.015), pytest.approx(0.035)]
    assert all(len(c["won"]) == 6 for c in run["checkpoints"])
    assert data["benchmarks"]["ready"]["status"] == "complete" and data["runs_left"] == 4
    waiting = data["benchmarks"]["waiting"]
    assert waiting["status"].startswith("waiting for warm start") and "other.py" in waiting["status"]
    assert len(waiting["left"]) == 4
    manifest = json.loads((tmp_path / "results" / "manifest.json").read_text())
    assert "benchmarks/study.py --methods grpo empg" in manifest["continue"]
    assert "--benchmarks" not in manifest["continue"] and "--n-boot 200" in manifest["continue"]
    assert "waiting for warm start" in (tmp_path / "results" / "manifest.md").read_text()

    calls["train"].clear()
    study.main(base + ["--max-runs", "5"])
    assert calls["train"] == []  # everything finished is skipped


def test_runner_redoes_half_written_killed_and_stale_runs(fake_study):
    tmp_path, calls, base = fake_study
    calls["fail"].add(("empg", 1))
    with pytest.raises(KeyboardInterrupt):
        study.main(base)
    results = tmp_path / "results" / "ready"
    assert not (results / "empg-seed1.json").exists() and (results / "grpo-seed1.json").exists()
    assert not list(results.glob(".*.tmp"))
    status = study.main(base + ["--status"])
    assert status["benchmarks"]["ready"]["left"] == ["empg-seed1"]

    calls["fail"].clear()
    calls["train"].clear()
    (results / "grpo-seed0.json").write_text('{"status": "complete", "benchmark": ')  # half-written
    run = json.loads((results / "empg-seed0.json").read_text())
    (results / "empg-seed0.json").write_text(json.dumps({**run, "status": "running"}))  # never finished
    status = study.main(base + ["--status"])
    assert sorted(status["benchmarks"]["ready"]["broken"]) == ["empg-seed0", "grpo-seed0"]
    study.main(base)
    assert sorted(calls["train"]) == [("ready", "empg", 0), ("ready", "empg", 1), ("ready", "grpo", 0)]

    calls["train"].clear()
    study.main([*base, "--steps", "6"])  # other settings: every run is stale and redone
    assert len(calls["train"]) == 4


def test_runner_respects_a_live_lock_and_takes_over_a_dead_one(fake_study):
    tmp_path, calls, base = fake_study
    locks = tmp_path / "runs" / "ready"
    locks.mkdir(parents=True)
    (locks / "grpo-seed0.lock").write_text(f"{os.getppid()} now\n")  # a live process (the test's parent)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (locks / "empg-seed0.lock").write_text(f"{dead.pid} then\n")  # a killed run's lock
    data = study.main(base)
    assert ("ready", "grpo", 0) not in calls["train"] and ("ready", "empg", 0) in calls["train"]
    assert data["benchmarks"]["ready"]["running"] == ["grpo-seed0"]
    assert data["benchmarks"]["ready"]["left"] == ["grpo-seed0"]


def test_a_warm_start_taught_other_settings_stops_its_benchmark(fake_study, monkeypatch):
    tmp_path, calls, base = fake_study
    other = _warm_start(tmp_path / "other", max_turns=9)
    monkeypatch.setitem(study.BENCHMARKS["ready"], "warm_start", {"path": str(other), "build": "x"})
    data = study.main(base)
    assert calls["train"] == []
    assert "max_turns: table 5, warm start 9" in data["benchmarks"]["ready"]["status"]


def test_analyse_writes_summary_plots_and_analysis(fake_study):
    tmp_path, calls, base = fake_study
    study.main(base)
    report = study.main([*base, "--analyse"])
    results = tmp_path / "results"
    assert (results / "ready.png").stat().st_size > 1000 and (results / "analysis.json").exists()
    summary = (results / "summary.md").read_text()
    assert "**empg - grpo**" in summary and "waiting for warm start" in summary
    comparison = report["ready"]["comparisons"][0]
    assert comparison["final_success"]["episodes"] == 6 and comparison["seeds"] == [0, 1]
    assert not math.isnan(comparison["auc"]["difference"])


def test_the_table_names_learning_settings_and_enough_evaluation_episodes():
    options = study.build_parser().parse_args([])
    for name, row in study.BENCHMARKS.items():
        args = study.learning_args(name, row, options)
        assert args.eval_tasks * args.eval_episodes_per_task >= study.MIN_EVAL_EPISODES, name
        assert study.learning.env_id(name, args) == row["env_id"]
