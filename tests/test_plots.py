"""Plots from synthetic Trainer log histories and evaluation reports: PNGs are written, missing metrics don't crash."""

from __future__ import annotations

import json

import pytest

from trl_empg import plots
from trl_empg.plots import TRAINING_FIGURES, plot_eval_entropy, plot_run, plot_training

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, path


def full_log_history(num_steps: int = 12) -> list[dict]:
    """Entries as an EMPG run logs them: train entries, an eval entry every 4 steps and the final summary entry."""
    history = []
    for step in range(1, num_steps + 1):
        progress = step / num_steps
        history.append(
            {
                "step": step,
                "epoch": progress,
                "loss": 0.01,
                "reward": progress,
                "reward_std": 0.3,
                "env/success_rate": 0.5 + progress / 2,
                "kl": 0.001 * step,
                "entropy": 2.0 - progress,
                "empg/step_entropy/mean": 1.5 - progress,
                "empg/step_entropy/min": 0.5 - progress / 4,
                "empg/step_entropy/max": 2.5 - progress,
                "empg/g/min": 0.6,
                "empg/g/mean": 1.0,
                "empg/g/max": 1.8,
                "empg/frac_g_above_1": 0.45,
                "empg/bonus/mean": 0.02,
            }
        )
        if step % 4 == 0:
            history.append({"step": step, "eval_env/success_rate": progress, "eval_reward": progress})
    history.append({"step": num_steps, "train_runtime": 10.0, "train_loss": 0.01, "total_flos": 0.0})
    return history


def test_plot_training_writes_every_figure(tmp_path):
    paths = plot_training(full_log_history(), tmp_path / "plots")
    assert [p.name for p in paths] == list(TRAINING_FIGURES)
    for path in paths:
        assert_png(path)


@pytest.mark.parametrize(
    "history",
    [
        [],  # nothing logged yet
        [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.7}],  # plain GRPO, beta=0: no empg/*, no kl
        [{"step": 1, "reward": float("nan"), "kl": None, "empg/g/mean": 1.0}],  # NaN, None and half a band
        [{"reward": 0.5, "env/success_rate": "n/a", "empg/frac_g_above_1": True}],  # no step key, odd types
    ],
    ids=["empty", "grpo-without-kl", "nan-and-partial-band", "no-step-odd-types"],
)
def test_plot_training_notes_missing_metrics_instead_of_crashing(tmp_path, history):
    paths = plot_training(history, tmp_path)
    assert len(paths) == len(TRAINING_FIGURES)
    for path in paths:
        assert_png(path)


def synthetic_report(num_episodes: int = 30) -> dict:
    episodes = []
    for i in range(num_episodes):
        won = i % 3 == 0
        steps = 3 + i % 5
        episodes.append(
            {
                "task_seed": 20000 + i,
                "won": won,
                "score": 1.0 if won else 0.0,
                "steps": steps,
                "actions": ["move north"] * steps,
                "step_entropies": [(1.0 if won else 2.0) - 0.1 * t + 0.01 * i for t in range(steps)],
            }
        )
    return {"model": "tiny", "env_id": "twx:coin", "split": "test", "episodes": episodes}


def test_sample_balances_won_and_lost_episodes():
    episodes = synthetic_report()["episodes"]  # 10 won, 20 lost
    sample = plots._sample(episodes, 8)
    assert sum(e["won"] for e in sample) == 4 and len(sample) == 8
    mostly_won = [e for e in episodes if e["won"]] + episodes[1:2]  # 10 won, 1 lost
    sample = plots._sample(mostly_won, 8)
    assert sum(e["won"] for e in sample) == 7 and len(sample) == 8


def test_plot_eval_entropy_writes_a_png(tmp_path):
    path = plot_eval_entropy(synthetic_report(), tmp_path / "eval" / "entropy.png")
    assert path == tmp_path / "eval" / "entropy.png"
    assert_png(path)


@pytest.mark.parametrize(
    "report",
    [
        {},
        {"episodes": []},
        {"episodes": [{"won": False, "step_entropies": None}, {"won": True, "step_entropies": []}]},
        {"episodes": [{"won": True, "step_entropies": [0.5]}]},  # only won episodes, a single step
    ],
    ids=["empty", "no-episodes", "no-entropies", "one-won-step"],
)
def test_plot_eval_entropy_without_data_writes_a_note(tmp_path, report):
    assert_png(plot_eval_entropy(report, tmp_path / "entropy.png"))


def test_plot_run_reads_the_run_state(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": full_log_history()}))
    paths = plot_run(tmp_path)
    assert [p.parent for p in paths] == [tmp_path] * len(TRAINING_FIGURES)
    for path in paths:
        assert_png(path)


def test_plot_run_falls_back_to_the_last_checkpoint(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(plots, "plot_training", lambda history, out_dir: seen.append((history, out_dir)) or [])
    for step in (5, 10, 40):  # numeric order, not lexicographic; checkpoint-40 has no state
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        if step != 40:
            (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": step}]}))
    plot_run(tmp_path)
    assert seen == [([{"step": 10}], tmp_path)]


def test_plot_run_without_state_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        plot_run(tmp_path)
