"""Exact fault accounting: faults injected at known places (reset, step, restore replay, AEPO branch replay) land in
exactly the counters the rule in :mod:`trl_empg.envs.pool` names, and training logs them per step.

The faulty env (:class:`trl_empg.envs.faults.FaultyEnv` around the fake env) faults at ``split/seed/position/
occurrence`` places; occurrence 1 of a position is its first replay. Walk-throughs of each scenario are in the tests.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import pytest

from trl_empg import EMPGConfig, EMPGTrainer
from trl_empg.envs.faults import FaultyEnv, read_injected
from trl_empg.envs.pool import EnvPool, FaultCounts
from trl_empg.rollout import AgentPrompts, RolloutArguments, run_episodes
from trl_empg.rollout.branching import AEPORolloutSettings, run_aepo_episodes
from trl_empg.workflows.tiny import build_tiny_model, build_tokenizer

TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

FAULTY = "trl_empg.envs.faults:FaultyEnv"
STEP_TIMEOUT, RESET_TIMEOUT = 1.0, 3.0


def react(action: str) -> str:
    return f"<think>I will {action}.</think><action>{action}</action>"


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"train/{seed}:" + ",".join(["left"] * n) for seed in range(10, 30) for n in range(6)]
    corpus += [react(action) for action in ("left", "right", "finish")]
    corpus += [AgentPrompts("react").system(), AgentPrompts("react").format_error(["left", "right", "finish"])]
    return build_tokenizer(corpus * 5, vocab_size=600)


def faulty_pool(tmp_path: Path, schedule: dict[str, str], num_workers: int) -> EnvPool:
    kwargs = {"inner_env": "fake_envs:FakeEnv", "state_dir": str(tmp_path / "faults"), "schedule": schedule}
    return EnvPool(FAULTY, kwargs, num_workers=num_workers, step_timeout=STEP_TIMEOUT, reset_timeout=RESET_TIMEOUT)


def replies(tokenizer, length: int | None = None):
    """A GenerateFn: "left" every turn, or "finish" from turn ``length - 1`` on; constant entropy 1.0 per token."""

    def generate(prompts: list[list[int]], max_new_tokens: int):
        ids = []
        for prompt in prompts:
            turn = tokenizer.decode(prompt).count("<|im_start|>assistant") - 1
            action = "finish" if length is not None and turn >= length - 1 else "left"
            ids.append((tokenizer.encode(react(action), add_special_tokens=False) + [tokenizer.eos_token_id])[:64])
        return ids, [[1.0] * len(row) for row in ids]

    return generate


def test_faulty_env_decides_by_place_and_records_what_it_injects(tmp_path):
    env = FaultyEnv("fake_envs:FakeEnv", str(tmp_path), schedule={"train/3/2/0": "raise", "train/3/0/1": "raise"})
    env.reset(seed=3)
    env.step("left")
    with pytest.raises(RuntimeError, match="injected fault at train/3/2/0"):
        env.step("left")
    with pytest.raises(RuntimeError, match="train/3/0/1"):
        env.reset(seed=3)  # the second reset of seed 3 is occurrence 1
    env.reset(seed=3)
    assert [(r["kind"], r["position"], r["occurrence"]) for r in read_injected(tmp_path)] == [
        ("raise", 2, 0),
        ("raise", 0, 1),
    ]
    # Rates pick places by a hash: the same salt picks the same places, whatever the process.
    picks = []
    for run in range(2):
        rated = FaultyEnv("fake_envs:FakeEnv", str(tmp_path / f"rated{run}"), rates={"raise": 0.3}, salt=5)
        outcomes = []
        for seed in range(40):
            try:
                rated.reset(seed=seed)
                outcomes.append(False)
            except RuntimeError:
                outcomes.append(True)
        picks.append(outcomes)
    assert picks[0] == picks[1] and 4 <= sum(picks[0]) <= 24
    with pytest.raises(ValueError, match="kind"):
        FaultyEnv("fake_envs:FakeEnv", str(tmp_path), schedule={"train/1/1/0": "crash"})
    with pytest.raises(ValueError, match="sum"):
        FaultyEnv("fake_envs:FakeEnv", str(tmp_path), rates={"raise": 0.7, "hang": 0.6})


def test_step_reset_and_restore_faults_are_each_counted_once(tmp_path, tokenizer):
    """Eight episodes of five "left" turns on two workers (worker 0: slots 0, 2, 4, 6; worker 1: 1, 3, 5, 7;
    slot i plays seed 10 + i):

    - slot 0's reset raises: errors 1.
    - turn 2: slot 2 hangs (errors 2), worker 0 restarts (restarts 1); slots 4 and 6, queued behind it, are restored
      first: slot 4's replay raises at its step 1 (replay_errors 1, episode 4 ends), slot 6's succeeds (restored 1).
    - turn 3: slot 3 kills worker 1 (errors 3, restarts 2); slot 1 had answered, slots 5 and 7 are restored before
      their steps: 5 succeeds (restored 2), 7's replay hangs at its step 2 (replay_errors 2, restarts 3).
    - turn 4: slots 1 and 5 were on the restarted worker: both restored before their step (restored 4).
    """
    schedule = {
        "train/10/0/0": "raise",
        "train/12/2/0": "hang",
        "train/14/1/1": "raise",
        "train/13/3/0": "exit",
        "train/17/2/1": "hang",
    }
    tasks = [(10 + slot, "train") for slot in range(8)]
    with faulty_pool(tmp_path, schedule, num_workers=2) as pool:
        episodes = run_episodes(pool, tasks, tokenizer, replies(tokenizer), RolloutArguments(max_turns=5))
        counts = pool.faults
    assert counts == FaultCounts(errors=3, replay_errors=2, branch_errors=0, restarts=3, restored=4)
    injected = read_injected(tmp_path / "faults")
    assert Counter(r["kind"] for r in injected) == {"raise": 2, "hang": 2, "exit": 1}
    assert counts.faults == len(injected) == pool.num_errors
    # Each fault ended exactly one episode; the others played on as if nothing had happened.
    failed = [slot for slot, episode in enumerate(episodes) if episode.error is not None]
    assert failed == [0, 2, 3, 4, 7] and len(failed) == counts.errors + counts.replay_errors
    assert "Replay after a worker restart failed" in episodes[4].error and "InjectedFault" in episodes[4].error
    assert "Replay after a worker restart failed" in episodes[7].error and "no answer" in episodes[7].error
    for slot in (1, 5, 6):
        episode = episodes[slot]
        assert episode.num_turns == 5 and episode.truncated
        assert f"train/{10 + slot}:" + ",".join(["left"] * 5) in episode.messages[-1]["content"]


def test_aepo_branch_replay_faults_are_branch_errors(tmp_path, tokenizer):
    """One task, a group of 4, one worker, constant entropies (m = 2) and alpha = 1 (every offer branches): the
    pre-monitoring rollout plays 4 turns, the second global rollout resets (occurrence 1 of the reset), then branches
    at turns 1 and 2 of the pre-monitoring rollout replay its first one and two actions. The first replay raises at
    step 1 (branch_errors 1), the second hangs at step 2 (branch_errors 2, restarts 1); the global rollout, which
    lived on that worker, is restored before its first step (restored 1). Both branches' budget goes back, so the
    group still gets 4 episodes, none of them failed."""
    schedule = {"train/20/1/1": "raise", "train/20/2/1": "hang"}
    with faulty_pool(tmp_path, schedule, num_workers=1) as pool:
        episodes, stats = run_aepo_episodes(
            pool,
            [(20, "train")],
            4,
            tokenizer,
            replies(tokenizer, 4),
            RolloutArguments(),
            AEPORolloutSettings(alpha=1.0),
        )
        counts = pool.faults
    assert counts == FaultCounts(errors=0, replay_errors=0, branch_errors=2, restarts=1, restored=1)
    assert counts.faults == len(read_injected(tmp_path / "faults")) == 2
    assert len(episodes) == 4 and all(episode.error is None and episode.won for episode in episodes)
    assert stats.replay_failures == 2 and stats.global_rollouts == [2]


def test_training_logs_every_injected_fault(tmp_path, tokenizer):
    """Faults at rates on two workers during training: per step, the logged counters add up to the faults the env
    injected, and every hang or exit restarted exactly one worker."""
    state_dir = tmp_path / "faults"
    config = EMPGConfig(
        output_dir=str(tmp_path / "run"),
        use_cpu=True,
        bf16=False,
        env_id=FAULTY,
        env_kwargs={
            "inner_env": "fake_envs:FakeEnv",
            "state_dir": str(state_dir),
            "rates": {"raise": 0.08, "hang": 0.04, "exit": 0.04},
            "salt": 3,
        },
        env_num_tasks=8,
        env_workers=2,
        env_step_timeout=STEP_TIMEOUT,
        env_reset_timeout=RESET_TIMEOUT,
        max_turns=3,
        max_turn_tokens=8,
        max_completion_length=96,
        prompt_style="plain",
        per_device_train_batch_size=8,
        num_generations=2,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    model = build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64)
    trainer = EMPGTrainer(model, args=config, processing_class=tokenizer)
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "env/errors" in entry]
    assert len(history) == 2 and all(math.isfinite(entry["loss"]) for entry in history)
    logged = {name: sum(entry[f"env/{name}"] for entry in history) for name in FaultCounts().as_dict()}
    injected = read_injected(state_dir)
    assert injected, "the rates should inject faults in 2 steps of 8 episodes"
    assert logged["errors"] + logged["replay_errors"] + logged["branch_errors"] == len(injected)
    assert logged["restarts"] == sum(record["kind"] in ("hang", "exit") for record in injected)
