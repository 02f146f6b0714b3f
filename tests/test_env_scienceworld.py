"""ScienceWorld adapter against the real simulator (Java): gold paths win, splits, invalid input, failure, JVM hygiene.

One JVM serves the module (starting one takes ~2 s); ``find-living-thing`` is used because its gold paths are ~10
steps and it has every behaviour worth checking (an initial score above 0, a losing focus, ambiguous inputs).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("scienceworld")
if shutil.which("java") is None:
    pytest.skip("ScienceWorld needs Java", allow_module_level=True)

from trl_empg.envs import SPLITS, TextEnv, make  # noqa: E402
from trl_empg.envs.scienceworld import TASK_NAMES, ScienceWorldEnv, resolve_task  # noqa: E402

INFO_KEYS = {"admissible_actions", "gold_actions", "won", "score", "done", "raw_score"}


@pytest.fixture(scope="module")
def env():
    environment = make("scienceworld:find-living-thing")
    yield environment
    environment.close()


def play(env: ScienceWorldEnv, actions: list[str]) -> tuple[list[str], list[float], dict]:
    observations, rewards, info = [], [], {}
    for action in actions:
        observation, reward, done, info = env.step(action)
        observations.append(observation)
        rewards.append(reward)
        assert done == info["done"]
        if done:
            break
    return observations, rewards, info


def test_task_names_and_ids_resolve_without_a_jvm():
    assert len(TASK_NAMES) == 30
    assert resolve_task("1-1") == "boil"
    assert resolve_task("4-1") == resolve_task("find-living-thing") == "find-living-thing"
    with pytest.raises(ValueError, match="find-living-thing"):
        ScienceWorldEnv("not-a-task")
    with pytest.raises(ValueError, match="Valid task names"):
        make("scienceworld:boiling")
    with pytest.raises(ValueError, match="jvm_heap"):
        ScienceWorldEnv("boil", jvm_heap="-Xmx1g")


def test_make_builds_the_adapter(env):
    assert isinstance(env, TextEnv)
    assert env.env_id == "scienceworld:find-living-thing"
    assert env.task_id == "4-1"
    assert env.task_description.startswith("Your task is to find a(n) living thing")


def test_splits_are_the_official_disjoint_variations(env):
    seeds = {split: env.task_seeds(split) for split in SPLITS}
    assert all(seeds[split] == sorted(seeds[split]) and seeds[split] for split in SPLITS)
    assert len(set(seeds["train"]) | set(seeds["dev"]) | set(seeds["test"])) == sum(map(len, seeds.values()))
    with pytest.raises(ValueError, match="not in the train split"):
        env.reset(seed=seeds["test"][0], split="train")
    with pytest.raises(ValueError, match="Unknown split"):
        env.task_seeds("validation")


@pytest.mark.parametrize("split", ["train", "test"])
def test_gold_path_wins(env, split):
    seed = env.task_seeds(split)[0]
    observation, info = env.reset(seed=seed, split=split)
    assert observation.startswith("Task Description:\nYour task is")
    assert INFO_KEYS <= info.keys() and not info["won"] and 0.0 <= info["score"] < 1.0
    assert info["admissible_actions"] and all(isinstance(action, str) for action in info["admissible_actions"])
    gold = info["gold_actions"]
    assert 0 < len(gold) <= env.max_steps
    _, rewards, last = play(env, gold)
    assert len(rewards) == len(gold)
    assert last["won"] and last["done"] and last["score"] == 1.0 and last["raw_score"] == 100
    assert not last["invalid_action"] and last["admissible_actions"] == []
    assert sum(rewards) == pytest.approx(1.0 - info["score"])


def test_replay_after_reset_is_deterministic(env):
    seed = env.task_seeds("train")[1]
    _, first_info = env.reset(seed=seed)
    first, _, _ = play(env, first_info["gold_actions"])
    _, second_info = env.reset(seed=seed)  # the gold path now comes from the cache, loaded without regenerating it
    assert second_info["gold_actions"] == first_info["gold_actions"]
    second, _, last = play(env, second_info["gold_actions"])
    assert second == first and last["won"]


def test_invalid_and_ambiguous_actions(env):
    env.reset(seed=0)
    observation, reward, done, info = env.step("xyzzy")
    assert observation == "No known action matches that input."
    assert info["invalid_action"] and reward == 0.0 and not done and info["admissible_actions"]
    _, _, _, info = env.step("go to kitchen")
    assert not info["invalid_action"]
    observation, _, done, info = env.step("eat door")  # the kitchen has several doors
    assert observation.startswith("Ambiguous request") and not info["invalid_action"] and not done
    options = info["admissible_actions"]
    assert len(options) > 1 and all(option.isdigit() for option in options)
    observation, _, _, info = env.step(options[0])
    assert observation == "The door is not edible." and not info["invalid_action"]
    _, _, _, info = env.step("eat door")
    _, _, _, info = env.step("not a number")  # an answer that is not an offered number cancels the prompt
    assert info["invalid_action"] and not any(action.isdigit() for action in info["admissible_actions"])


def test_failing_the_task_ends_the_episode_lost(env):
    env.reset(seed=0)
    _, reward, done, info = env.step("focus on air")  # air is not a living thing
    assert done and not info["won"] and info["score"] == 0.0 and info["raw_score"] == -100 and reward < 0
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("look around")


def test_admissible_actions_off_and_step_limit(env):
    env.admissible_actions, env.max_steps = False, 2
    try:
        _, info = env.reset(seed=0)
        assert info["admissible_actions"] == []
        _, _, done, info = env.step("look around")
        assert not done and info["admissible_actions"] == []
        _, _, done, info = env.step("look around")
        assert done and not info["won"]
    finally:
        env.admissible_actions, env.max_steps = True, 100


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the JVM's environment from /proc")
def test_heap_cap_reaches_only_the_jvm_and_close_stops_it(monkeypatch):
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Dtrl.empg.test=1")
    small = ScienceWorldEnv("find-non-living-thing", jvm_heap="128m", gold_actions=False)
    pid = small.jvm_pid
    try:
        jvm_environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"JAVA_TOOL_OPTIONS=-Dtrl.empg.test=1 -Xmx128m" in jvm_environ
        assert os.environ["JAVA_TOOL_OPTIONS"] == "-Dtrl.empg.test=1"
        with pytest.raises(RuntimeError, match="reset"):
            small.step("look around")
        _, info = small.reset(seed=small.task_seeds("dev")[0], split="dev")
        assert info["gold_actions"] == []
    finally:
        small.close()
    assert small.jvm_pid is None and not Path(f"/proc/{pid}").exists()
    small.close()
    with pytest.raises(RuntimeError, match="closed"):
        small.reset(seed=0)
