"""Agent evaluation: the agent_success metric's math, evaluate_agent's report on a tiny offline agent, the eval CLI.

The tiny agent is randomly initialised, so it loses every episode; the tests check the report's shape, consistency
and determinism, not the agent's skill. The metric's math is checked against hand-computed values instead.
"""

from __future__ import annotations

import json
import math
import time
from statistics import NormalDist

import pytest

from trl_empg.cli import main
from trl_empg.rollout import END_REASONS, Episode
from trl_empg.rollout.settings import RolloutArguments
from trl_empg.workflows.evaluation import (
    METRIC_PATH,
    episode_conversation,
    evaluate_agent,
    load_metric,
    step_entropies,
)

Z95 = 1.959963984540054  # the 97.5% standard normal quantile

# Small on purpose: a random agent plays every turn to the cap, and every pool slot starts its own JVM. Two batches,
# so that the fixed batch order is part of what the determinism test checks.
EVAL_KWARGS = dict(
    num_tasks=2,
    episodes_per_task=2,
    rollout=RolloutArguments(max_turns=3, max_turn_tokens=8, prompt_style="plain"),
    batch_size=2,
    seed=0,
)
NUM_EPISODES = 4


@pytest.fixture(scope="module")
def metric():
    return load_metric()


@pytest.fixture(scope="module")
def report(twx_agent_dir):
    return evaluate_agent(str(twx_agent_dir), "twx:coin", **EVAL_KWARGS)


# ---------------------------------------------------------------------------------------------------------------------
# The metric


def compute(metric, won, score=None, steps=None, tasks=None, **kwargs):
    n = len(won)
    return metric.compute(
        won=won,
        score=score if score is not None else [float(w) for w in won],
        num_steps=steps if steps is not None else [1] * n,
        task_id=tasks if tasks is not None else [str(i) for i in range(n)],
        **kwargs,
    )


def test_metric_loads_offline_from_its_file_and_its_directory(metric):
    import evaluate

    by_file = evaluate.load(str(METRIC_PATH / "agent_success.py"), keep_in_memory=True)
    by_dir = evaluate.load(str(METRIC_PATH), keep_in_memory=True)
    assert type(by_file).__name__ == type(by_dir).__name__ == type(metric).__name__ == "AgentSuccess"
    assert set(metric.features) == {"won", "score", "num_steps", "task_id"}


def test_metric_matches_hand_computed_values(metric):
    won = [True, True, False, True, False, True, True, True, True, True]  # 8 / 10
    score = [1.0, 1.0, 0.5, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    steps = [3, 5, 20, 4, 20, 6, 2, 7, 3, 10]
    result = compute(metric, won, score, steps, ["7"] * 10)
    assert result["num_episodes"] == 10
    assert result["success_rate"] == pytest.approx(0.8)
    assert result["mean_score"] == pytest.approx(8.5 / 10)
    assert result["mean_steps"] == pytest.approx(80 / 10)
    # Wilson 95% for 8/10, worked by hand: center (0.8 + z^2/20) / (1 + z^2/10) = 0.71675, half-width 0.22658.
    assert result["success_ci"] == pytest.approx([0.49016, 0.94331], abs=1e-5)
    assert result["confidence_level"] == 0.95


@pytest.mark.parametrize("n", [1, 10, 50])
def test_wilson_interval_at_zero_and_all_successes(metric, n):
    # At 0/n the interval is [0, z^2 / (n + z^2)]; at n/n it is [n / (n + z^2), 1], exactly at the bound.
    upper = Z95**2 / (n + Z95**2)
    none = compute(metric, [False] * n)
    assert none["success_rate"] == 0.0
    assert none["success_ci"][0] == 0.0 and none["success_ci"][1] == pytest.approx(upper, rel=1e-9)
    every = compute(metric, [True] * n)
    assert every["success_rate"] == 1.0
    assert every["success_ci"][1] == 1.0 and every["success_ci"][0] == pytest.approx(1 - upper, rel=1e-9)


def test_confidence_level_is_configurable(metric):
    z90 = NormalDist().inv_cdf(0.95)
    result = compute(metric, [False] * 10, confidence_level=0.9)
    assert result["confidence_level"] == 0.9
    assert result["success_ci"][1] == pytest.approx(z90**2 / (10 + z90**2), rel=1e-9)
    wide = compute(metric, [True, False] * 5, confidence_level=0.99)["success_ci"]
    narrow = compute(metric, [True, False] * 5, confidence_level=0.8)["success_ci"]
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    assert sum(wide) / 2 == pytest.approx(0.5) and sum(narrow) / 2 == pytest.approx(0.5)  # symmetric at p = 1/2


def test_per_task_breakdown(metric):
    result = compute(
        metric,
        won=[True, False, True, True, False],
        score=[1.0, 0.25, 1.0, 1.0, 0.5],
        steps=[4, 20, 6, 2, 9],
        tasks=["b", "a", "b", "c", "a"],
    )
    assert list(result["per_task"]) == ["b", "a", "c"]  # order of first appearance
    assert result["per_task"]["a"] == pytest.approx(
        {"num_episodes": 2, "successes": 0, "success_rate": 0.0, "mean_score": 0.375, "mean_steps": 14.5}
    )
    assert result["per_task"]["b"] == pytest.approx(
        {"num_episodes": 2, "successes": 2, "success_rate": 1.0, "mean_score": 1.0, "mean_steps": 5.0}
    )
    assert result["per_task"]["c"] == pytest.approx(
        {"num_episodes": 1, "successes": 1, "success_rate": 1.0, "mean_score": 1.0, "mean_steps": 2.0}
    )
    assert result["success_rate"] == pytest.approx(0.6) and result["mean_steps"] == pytest.approx(41 / 5)


def test_metric_rejects_no_episodes_and_bad_levels(metric):
    with pytest.raises(ValueError, match="at least one episode"):
        metric.compute(won=[], score=[], num_steps=[], task_id=[])
    with pytest.raises(ValueError, match="confidence_level"):
        compute(metric, [True], confidence_level=1.0)


# ---------------------------------------------------------------------------------------------------------------------
# evaluate_agent


def test_step_entropies_average_each_model_turn():
    episode = Episode(
        prompt_ids=[1],
        completion_ids=[5, 6, 7, 8, 9, 10],
        env_mask=[1, 1, 0, 0, 1, 1],
        step_ids=[0, 0, -1, -1, 1, 1],
        entropies=[1.0, 2.0, 0.0, 0.0, 0.5, 0.25],
    )
    assert step_entropies(episode) == [1.5, 0.375]
    episode.entropies = None
    assert step_entropies(episode) is None


def test_report_schema(report):
    expected = {
        "model": str,
        "env_id": str,
        "split": str,
        "num_episodes": int,
        "success_rate": float,
        "success_ci": list,
        "confidence_level": float,
        "mean_score": float,
        "mean_steps": float,
        "invalid_action_rate": float,
        "mean_step_entropy": float,
        "num_env_errors": int,
        "per_task": dict,
        "settings": dict,
        "episodes": list,
        "elapsed_s": float,
    }
    assert set(report) == set(expected)
    for key, kind in expected.items():
        assert isinstance(report[key], kind), key
    assert json.loads(json.dumps(report)) == report  # JSON-able as is
    assert report["env_id"] == "twx:coin" and report["split"] == "test"
    assert report["num_episodes"] == NUM_EPISODES and len(report["episodes"]) == NUM_EPISODES
    low, high = report["success_ci"]
    assert 0.0 <= low <= report["success_rate"] <= high <= 1.0
    settings = report["settings"]
    assert settings["num_tasks"] == 2 and settings["episodes_per_task"] == 2 and settings["seeds"] is None
    assert settings["greedy"] is False and settings["temperature"] == 1.0 and settings["prompt_style"] == "plain"
    episode_types = {
        "task_seed": int,
        "won": bool,
        "score": float,
        "steps": int,
        "num_invalid_actions": int,
        "truncated": bool,
        "actions": list,
        "step_entropies": list,
    }
    for episode in report["episodes"]:
        assert set(episode) == {*episode_types, "error"}
        for key, kind in episode_types.items():
            assert isinstance(episode[key], kind), key
        assert episode["error"] is None
        assert len(episode["step_entropies"]) == episode["steps"] <= 3
        assert all(isinstance(h, float) and h > 0 for h in episode["step_entropies"])
        assert all(isinstance(a, str) for a in episode["actions"])


def test_report_is_consistent_with_its_episodes(report):
    episodes = report["episodes"]
    seeds = [e["task_seed"] for e in episodes]
    assert seeds[0::2] == seeds[1::2] and len(set(seeds)) == 2  # each task twice, tasks in split order
    assert list(report["per_task"]) == [str(s) for s in seeds[0::2]]
    assert report["success_rate"] == pytest.approx(sum(e["won"] for e in episodes) / NUM_EPISODES)
    assert report["mean_steps"] == pytest.approx(sum(e["steps"] for e in episodes) / NUM_EPISODES)
    assert report["invalid_action_rate"] == pytest.approx(
        sum(e["num_invalid_actions"] / e["steps"] for e in episodes) / NUM_EPISODES
    )
    all_steps = [h for e in episodes for h in e["step_entropies"]]
    assert report["mean_step_entropy"] == pytest.approx(math.fsum(all_steps) / len(all_steps))
    for task in report["per_task"].values():
        assert task["num_episodes"] == 2


def test_same_seed_gives_the_same_report(twx_agent_dir, report):
    again = evaluate_agent(str(twx_agent_dir), "twx:coin", **EVAL_KWARGS)
    assert {**again, "elapsed_s": 0} == {**report, "elapsed_s": 0}
    other = evaluate_agent(str(twx_agent_dir), "twx:coin", **{**EVAL_KWARGS, "seed": 1})
    assert [e["actions"] for e in other["episodes"]] != [e["actions"] for e in report["episodes"]]


def test_explicit_seeds_must_belong_to_the_split(twx_agent_dir):
    with pytest.raises(ValueError, match=r"not test seeds of twx:coin"):
        evaluate_agent(
            str(twx_agent_dir), "twx:coin", rollout=RolloutArguments(max_turns=1, max_turn_tokens=2), seeds=[0]
        )


def test_time_limit_stops_generating(twx_agent_dir):
    # No turn may start once the limit has passed: with a limit already spent at the first turn, none does.
    with pytest.raises(TimeoutError, match=r"ran past its time limit \(time_limit_s\)"):
        evaluate_agent(str(twx_agent_dir), "twx:coin", **{**EVAL_KWARGS, "time_limit_s": 0.0})
    assert evaluate_agent(str(twx_agent_dir), "twx:coin", **{**EVAL_KWARGS, "time_limit_s": 600.0})["num_episodes"]


@pytest.mark.parametrize("bad", ["/no/such/agent/dir", "./no-such-agent", "runs/x/no-such-checkpoint"])
def test_missing_local_path_fails_fast_naming_it(bad):
    start = time.monotonic()
    with pytest.raises(ValueError, match="neither an existing local directory nor a valid Hugging Face Hub") as caught:
        evaluate_agent(bad, "twx:coin")
    assert repr(bad) in str(caught.value)
    assert time.monotonic() - start < 30


def test_unknown_hub_id_fails_with_a_message_naming_it(monkeypatch):
    import huggingface_hub.constants

    # No network here: offline mode makes the Hub lookup fail at once instead of retrying for ~50 s.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(ValueError, match="no-such-org/no-such-agent") as caught:
        evaluate_agent("no-such-org/no-such-agent", "twx:coin")
    assert "Cannot load the agent" in str(caught.value)
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------------------------------------------------------------
# The CLI


def test_eval_cli_writes_the_report_and_plot(twx_agent_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(twx_agent_dir.parent)  # a relative local path goes through the same loader
    output = tmp_path / "out" / "report.json"
    main(
        [
            "eval",
            "--model",
            f"./{twx_agent_dir.name}",
            "--env_id",
            "twx:coin",
            "--env-kwargs",  # both spellings of a flag work
            '{"max_steps": 10}',
            "--num_tasks",
            "2",
            "--max_turns",
            "2",
            "--max-turn-tokens",
            "6",
            "--prompt_style",
            "plain",
            "--batch_size",
            "2",
            "--greedy",
            "--output",
            str(output),
            "--plot",
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "success 0.000 [0.000, " in lines[0] and "95% Wilson CI" in lines[0]
    written = json.loads(output.read_text())
    assert written["num_episodes"] == 2 and written["model"] == f"./{twx_agent_dir.name}"
    assert written["settings"]["greedy"] is True and written["settings"]["temperature"] is None
    assert written["settings"]["env_kwargs"] == {"max_steps": 10}
    # The rollout settings under RolloutArguments' own names, as in the recipe and EMPGConfig.
    assert written["settings"]["max_turns"] == 2 and written["settings"]["max_turn_tokens"] == 6
    assert written["settings"]["max_completion_length"] == RolloutArguments().max_completion_length
    plot = output.with_name("report_step_entropy.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_episode_conversation_tells_cut_and_malformed_replies_apart():
    eos = 2
    messages = [
        {"role": "system", "content": "Play."},
        {"role": "user", "content": "Room."},
        {"role": "assistant", "content": "<think>go</think><action>go north</action>"},
        {"role": "user", "content": "Hall."},
        {"role": "assistant", "content": "<think>the hall is"},
        {"role": "user", "content": "Invalid reply format."},
    ]
    # Turn 0 ended with EOS; turn 1 was cut (its tokens end without EOS, the closing EOS after it is not the model's).
    episode = Episode(
        prompt_ids=[1],
        completion_ids=[5, 6, eos, 9, 9, 7, 8, eos, 9],
        env_mask=[1, 1, 1, 0, 0, 1, 1, 0, 0],
        step_ids=[0, 0, 0, -1, -1, 1, 1, -1, -1],
        messages=messages,
        actions=["go north"],
        reward=-0.1,
        num_turns=2,
        end_reason="max_turns",
    )
    conversation = episode_conversation(episode, "react", eos, "<|im_end|>")
    assert conversation == {
        "messages": messages,
        "replies": [
            {"text": "<think>go</think><action>go north</action>", "action": "go north", "cut": False},
            {"text": "<think>the hall is", "action": None, "cut": True},
        ],
        "reward": -0.1,
        "end_reason": "max_turns",
    }
    assert conversation["messages"] is not messages  # a copy: the report does not alias the episode


def test_eval_cli_saves_conversations_only_when_asked(twx_agent_dir, tmp_path):
    flags = [
        "--model", str(twx_agent_dir), "--env_id", "twx:coin", "--num_tasks", "2", "--max_turns", "2",
        "--max_turn_tokens", "6", "--prompt_style", "plain", "--batch_size", "2", "--greedy",
    ]  # fmt: skip
    main(["eval", *flags, "--output", str(tmp_path / "plain.json")])
    main(["eval", *flags, "--save_conversations", "--output", str(tmp_path / "kept.json")])
    plain, kept = (json.loads((tmp_path / name).read_text()) for name in ("plain.json", "kept.json"))
    assert plain["settings"]["save_conversations"] is False and kept["settings"]["save_conversations"] is True
    assert all("conversation" not in episode for episode in plain["episodes"])
    for without, episode in zip(plain["episodes"], kept["episodes"]):
        assert {key: value for key, value in episode.items() if key != "conversation"} == without  # same episodes
        conversation = episode["conversation"]
        messages, replies = conversation["messages"], conversation["replies"]
        assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * episode["steps"] + ["user"]
        assert [r["text"] for r in replies] == [m["content"] for m in messages if m["role"] == "assistant"]
        assert [r["action"] for r in replies if r["action"] is not None] == episode["actions"]
        assert conversation["end_reason"] in END_REASONS and isinstance(conversation["reward"], float)
    # A randomly initialised agent rarely says EOS within 6 tokens: the report shows its replies were cut.
    assert any(r["cut"] for e in kept["episodes"] for r in e["conversation"]["replies"])


def test_eval_cli_help_and_flag_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as caught:
        main(["eval", "--help"])
    assert caught.value.code == 0
    help_text = capsys.readouterr().out
    # Its own fields, EnvArguments' and RolloutArguments' (one name each, as in a recipe), each with its default.
    for flag in ("--model", "--env_kwargs", "--episodes_per_task", "--greedy", "--temperature", "--output", "--plot"):
        assert flag in help_text
    for flag in ("--env_id", "--env_workers", "--max_turns", "--max_completion_length", "--invalid_action_penalty"):
        assert flag in help_text
    assert "--max_completion_tokens" not in help_text and "--hide" not in help_text
    assert f"(default: {RolloutArguments().max_turns})" in help_text.split("--max_turns MAX_TURNS")[-1][:400]
    with pytest.raises(ValueError, match="max-completion-tokens"):  # the old name is an unknown flag
        main(["eval", "--model", "x", "--env_id", "twx:coin", "--max-completion-tokens", "5"])
    with pytest.raises(ValueError, match="env_kwargs must be a JSON object"):
        main(["eval", "--model", "x", "--env_id", "twx:coin", "--env_kwargs", "{not json"])
    with pytest.raises(ValueError, match="eval needs --env_id"):
        main(["eval", "--model", "x"])
    with pytest.raises(ValueError, match=r"'\./no/such/dir' is neither an existing local directory nor a valid"):
        main(["eval", "--model", "./no/such/dir", "--env_id", "twx:coin"])
    config = tmp_path / "eval.yaml"
    config.write_text("model: x\nenv_id: twx:coin\nmax_turns: 3\nmax_turn: 4\n")
    with pytest.raises(ValueError, match="max_turn"):  # an unknown key of a --config file
        main(["eval", "--config", str(config)])
