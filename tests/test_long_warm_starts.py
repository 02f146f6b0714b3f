"""Options the long-horizon warm starts use: hidden actions (TWX, ALFWorld), ALFWorld's searching expert and its
longer generated task lists, and the runner's commands (benchmarks/long_warm_starts.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from trl_empg.envs import make

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ["examine ", "look around", "inventory"]
COOKING = {"numLocations": 2, "numIngredients": 5, "numDistractorItems": 0, "includeDoors": 0}


def test_twx_hide_actions_lists_fewer_but_still_plays_them() -> None:
    pytest.importorskip("textworld_express")
    with make("twx:cookingworld", game_params=COOKING, hide_actions=HIDDEN) as env:
        seed = env.task_seeds("test")[0]
        _, info = env.reset(seed=seed, split="test")
        shown = info["admissible_actions"]
        assert shown and not any(a.startswith(tuple(HIDDEN)) for a in shown)
        assert "read cookbook" in shown
        _, _, _, step = env.step("look around")  # hidden, still a valid action
        assert not step["invalid_action"]
        for action in info["gold_actions"]:
            assert action in shown, action
            _, _, done, info = env.step(action)
            shown = info["admissible_actions"]
        assert done and info["won"]
    with make("twx:cookingworld", game_params=COOKING) as env:
        _, full = env.reset(seed=seed, split="test")
        assert any(a.startswith("examine ") for a in full["admissible_actions"])
    with pytest.raises(ValueError, match="hide_actions"):
        make("twx:coin", hide_actions="examine")


@pytest.fixture(scope="module")
def alfworld_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pytest.importorskip("alfworld")
    return {
        "data_dir": str(tmp_path_factory.mktemp("alfworld-data")),
        "cache_dir": str(tmp_path_factory.mktemp("alfworld-cache")),
    }


@pytest.mark.parametrize(
    ("task_type", "seed"),
    [("pick_and_place_simple", 0), ("pick_two_obj_and_place", 1), ("look_at_obj_in_light", 2), (None, 5)],
)
def test_alfworld_search_plan_wins_and_searches(task_type: str | None, seed: int, alfworld_cache: dict) -> None:
    name = f"alfworld:{task_type}" if task_type else "alfworld"
    hidden = ["examine ", "help", "inventory", "look", "close "]
    with make(name, gold_plan="search", hide_actions=hidden, **alfworld_cache) as env:
        _, info = env.reset(seed=seed, split="train")
        plan = info["gold_actions"]
        with make(name, **alfworld_cache) as expert_env:
            expert = expert_env.reset(seed=seed, split="train")[1]["gold_actions"]
        assert len(plan) >= len(expert)
        # Every take happens where the searcher has been, never before it got there.
        for i, action in enumerate(plan):
            if action.startswith("take "):
                assert f"go to {action.split(' from ')[-1]}" in plan[:i]
        for action in plan:
            assert action in info["admissible_actions"], (action, info["admissible_actions"])
            assert not action.startswith(tuple(hidden))
            _, _, done, info = env.step(action)
            assert not info["invalid_action"]
        assert done and info["won"]
        env.reset(seed=seed, split="train")
        assert not env.step("look")[3]["invalid_action"]  # hidden, still admissible


def test_alfworld_generated_tasks_and_checks(alfworld_cache: dict) -> None:
    pytest.importorskip("alfworld")
    env = make("alfworld", mode="generated", generated_tasks={"test": 200}, **alfworld_cache)
    assert len(env.task_seeds("test")) == 200 and len(env.task_seeds("dev")) == 140
    with pytest.raises(ValueError, match="generated_tasks"):
        make("alfworld", mode="generated", generated_tasks={"test": 0}, **alfworld_cache)
    with pytest.raises(ValueError):
        make("alfworld", mode="generated", generated_tasks={"validation": 5}, **alfworld_cache)
    with pytest.raises(ValueError, match="gold_plan"):
        make("alfworld", mode="generated", gold_plan="oracle", **alfworld_cache)


def test_runner_commands_name_the_documented_paths() -> None:
    spec = importlib.util.spec_from_file_location("long_warm_starts", ROOT / "benchmarks" / "long_warm_starts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, bench in module.BENCHMARKS.items():
        argvs = module.commands(name, bench, 200)
        assert argvs["sft"][argvs["sft"].index("--output_dir") + 1] == f"runs/warm_starts/{name}/sft"
        assert argvs["eval"][argvs["eval"].index("--num_tasks") + 1] == "200"
        for stage in ("build-tiny", "sft", "eval"):
            assert "--env_kwargs" in argvs[stage]
    assert set(module.BENCHMARKS) == {"alfworld", "twx-cookingworld-long"}
