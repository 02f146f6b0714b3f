"""The agent shipped inside the package: it loads from the install, plays as its shipped evaluation says, and
``bundle_agent`` copies a run's model files (never its checkpoints or optimizer state)."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from trl_empg import bundled
from trl_empg.rollout.settings import RolloutArguments
from trl_empg.workflows.evaluation import evaluate_agent


def test_the_shipped_agent_reproduces_its_shipped_evaluation():
    path = bundled.bundled_agent("twx-coin-empg")
    report = json.loads((path / "eval.json").read_text())
    training = json.loads((path / "run_config.json").read_text())["training"]
    assert report["env_id"] == training["env_id"] == "twx:coin" and report["num_episodes"] == 200
    assert report["success_rate"] >= 0.5  # a competent agent, as the README and the Space present it
    settings = report["settings"]
    rollout = RolloutArguments(**{item.name: settings[item.name] for item in fields(RolloutArguments)})
    # Its first evaluation batch again, with the recorded settings and seed: the same wins and the same actions.
    batch = settings["batch_size"]
    again = evaluate_agent(
        str(path),
        report["env_id"],
        settings["env_kwargs"],
        rollout,
        num_tasks=batch,
        batch_size=batch,
        seed=settings["seed"],
        greedy=settings["greedy"],
        temperature=settings["temperature"],
    )
    shipped = report["episodes"][:batch]
    assert [e["task_seed"] for e in again["episodes"]] == [e["task_seed"] for e in shipped]
    assert [e["won"] for e in again["episodes"]] == [e["won"] for e in shipped]
    assert [e["actions"] for e in again["episodes"]] == [e["actions"] for e in shipped]


def test_unknown_or_missing_bundled_agents_are_clear(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown bundled agent 'nope'; the package ships \['twx-coin-empg'\]"):
        bundled.bundled_agent("nope")
    monkeypatch.setattr(bundled, "BUNDLED_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing from .* \\(a broken install\\?\\)"):
        bundled.bundled_agent("twx-coin-empg")
    assert bundled.installed_agents() == {}


def test_bundle_agent_copies_only_the_model_files(monkeypatch, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-40").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "run_config.json", "training_args.bin"):
        (run / name).write_text(name)
    (run / "checkpoint-40" / "optimizer.pt").write_text("state")
    report = tmp_path / "eval_empg.json"
    report.write_text("{}")
    monkeypatch.setattr(bundled, "BUNDLED_ROOT", tmp_path / "bundled")
    target = bundled.bundle_agent(run, "twx-coin-empg", extra_files={"eval.json": report})
    assert sorted(item.name for item in target.iterdir()) == [
        "config.json",
        "eval.json",
        "model.safetensors",
        "run_config.json",
        "tokenizer.json",
    ]
    assert bundled.installed_agents() == {"twx-coin-empg": bundled.BUNDLED_AGENTS["twx-coin-empg"]}
    with pytest.raises(FileNotFoundError, match="holds no trained model"):
        bundled.bundle_agent(tmp_path / "empty", "twx-coin-empg")
