"""ALFWorld adapter: generated (ALFWorld-style) games played in ALFWorld's engine, and the official-games mode."""

from __future__ import annotations

import json
import shutil
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from trl_empg.envs import EnvError, make  # noqa: E402
from trl_empg.envs.alfworld.env import INVALID_ACTION_FEEDBACK, SEED_OFFSETS, TASK_TYPES, ALFWorldEnv  # noqa: E402
from trl_empg.envs.alfworld.gen import split_floor_plans  # noqa: E402

INTRO = "You are in the middle of a room. Looking quickly around you, you see "


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("alfworld-cache")


@pytest.fixture(scope="module")
def no_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ALFWORLD_DATA without official games, so that "auto" picks generated games on any machine."""
    return tmp_path_factory.mktemp("alfworld-data")


def _env(task_type: str | None, cache_dir: Path, no_data: Path, **kwargs) -> ALFWorldEnv:
    name = f"alfworld:{task_type}" if task_type else "alfworld"
    env = make(name, data_dir=str(no_data), cache_dir=str(cache_dir), **kwargs)
    assert isinstance(env, ALFWorldEnv) and env.mode == "generated"
    return env


def _play_gold(env: ALFWorldEnv, seed: int, split: str) -> tuple[str, dict]:
    observation, info = env.reset(seed=seed, split=split)
    gold = info["gold_actions"]
    assert gold and not info["won"] and info["score"] == 0.0
    for i, action in enumerate(gold):
        assert action in info["admissible_actions"]
        _, reward, done, info = env.step(action)
        assert not info["invalid_action"]
        last = i == len(gold) - 1
        assert done == last and info["won"] == last and reward == (1.0 if last else 0.0)
    assert info["score"] == 1.0
    return observation, info


@pytest.mark.parametrize(
    ("task_type", "split", "seed"),
    [
        ("pick_and_place_simple", "train", 0),
        ("pick_heat_then_place_in_recep", "test", SEED_OFFSETS["test"]),
        ("pick_clean_then_place_in_recep", "train", 3),
        ("pick_two_obj_and_place", "test", SEED_OFFSETS["test"] + 1),
    ],
)
def test_gold_path_wins(task_type: str, split: str, seed: int, cache_dir: Path, no_data: Path) -> None:
    with _env(task_type, cache_dir, no_data) as env:
        observation, _ = _play_gold(env, seed, split)
        assert observation.startswith(INTRO)
        assert "\n\nYour task is to: " in observation and "Welcome to TextWorld" not in observation
        _, info = env.reset(seed=seed, split=split)
        assert info["task_type"] == task_type
        game = json.loads(Path(info["game_file"]).read_text())
        assert game["alfworld_style"]["floor_plan"] in split_floor_plans(split)


def test_make_alfworld_all_task_types(cache_dir: Path, no_data: Path) -> None:
    with _env(None, cache_dir, no_data) as env:
        assert env.task_type is None and env.task_description
        observation, info = env.reset(seed=SEED_OFFSETS["dev"], split="dev")
        assert observation.startswith(INTRO) and info["task_type"] in TASK_TYPES
        assert set(info) >= {"admissible_actions", "gold_actions", "won", "score"}


def test_splits_are_disjoint(cache_dir: Path, no_data: Path) -> None:
    plans = {split: set(split_floor_plans(split)) for split in ("train", "dev", "test")}
    assert all(not plans[a] & plans[b] for a, b in combinations(plans, 2))
    assert len(plans["train"] | plans["dev"] | plans["test"]) == 120
    env = ALFWorldEnv(data_dir=no_data, cache_dir=cache_dir)
    seeds = {split: set(env.task_seeds(split)) for split in ("train", "dev", "test")}
    assert len(seeds["train"]) >= 500 and len(seeds["dev"]) >= 100 and len(seeds["test"]) >= 100
    assert all(not seeds[a] & seeds[b] for a, b in combinations(seeds, 2))


def test_deterministic(cache_dir: Path, no_data: Path, tmp_path: Path) -> None:
    """Same seed, same game: replayed from the cache, and regenerated from scratch in another cache."""
    with _env("pick_and_place_simple", cache_dir, no_data) as env:
        first, info = env.reset(seed=0, split="train")
        again, info_again = env.reset(seed=0, split="train")
        other, _ = env.reset(seed=1, split="train")
    assert first == again and info["gold_actions"] == info_again["gold_actions"] and first != other
    with _env("pick_and_place_simple", tmp_path, no_data) as fresh:
        regenerated, fresh_info = fresh.reset(seed=0, split="train")
    assert regenerated == first
    assert Path(fresh_info["game_file"]).read_text() == Path(info["game_file"]).read_text()


def test_invalid_action_and_max_steps(cache_dir: Path, no_data: Path) -> None:
    with _env("pick_and_place_simple", cache_dir, no_data, max_steps=3) as env:
        _, info = env.reset(seed=0, split="train")
        observation, reward, done, step_info = env.step("jump over the moon")
        assert observation == INVALID_ACTION_FEEDBACK and step_info["invalid_action"]
        assert reward == 0.0 and not done and step_info["admissible_actions"] == info["admissible_actions"]
        _, _, done, step_info = env.step("  LOOK ")  # commands are normalised: case and spaces
        assert not step_info["invalid_action"] and not done
        _, _, done, step_info = env.step("inventory")
        assert done and not step_info["won"]
        with pytest.raises(RuntimeError):
            env.step("look")


def test_engine_leaves_sys_argv_alone(cache_dir: Path, no_data: Path) -> None:
    argv = list(sys.argv)
    with _env("pick_and_place_simple", cache_dir, no_data) as env:
        env.reset(seed=0, split="train")
        env.step("look")
    assert sys.argv == argv


def test_official_mode_without_games_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "json_2.1.1" / "train").mkdir(parents=True)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="alfworld-download"):
        make("alfworld", data_dir=str(tmp_path), mode="official")
    assert time.monotonic() - start < 5.0


def test_official_mode_plays_game_files(cache_dir: Path, no_data: Path, tmp_path: Path) -> None:
    """An official-style tree (json_2.1.1/<split>/<task folder>/<trial>/game.tw-pddl) is found and played as is."""
    with _env("pick_and_place_simple", cache_dir, no_data) as env:
        _, info = env.reset(seed=0, split="train")
    game = json.loads(Path(info["game_file"]).read_text())
    folders = {"pick_and_place_simple-Obj-None-Recep-1": True, "pick_two_obj_and_place-X-None-Y-2": False}
    for name, solvable in folders.items():
        trial = tmp_path / "json_2.1.1" / "train" / name / "trial_T0"
        trial.mkdir(parents=True)
        (trial / "game.tw-pddl").write_text(json.dumps({**game, "solvable": solvable}))
    shutil.copytree(tmp_path / "json_2.1.1" / "train", tmp_path / "json_2.1.1" / "valid_unseen")
    official = make("alfworld", data_dir=str(tmp_path), cache_dir=str(cache_dir))
    assert official.mode == "official"
    assert official.task_seeds("train") == [0] and official.task_seeds("dev") == []
    assert official.task_seeds("test") == [SEED_OFFSETS["test"]]
    with official:
        _, official_info = official.reset(seed=0, split="train")
        assert official_info["task_type"] == "pick_and_place_simple"
        assert official_info["gold_actions"] == info["gold_actions"]
        with pytest.raises(ValueError, match="not an official ALFWorld"):
            official.reset(seed=1, split="train")


def test_bad_arguments(no_data: Path) -> None:
    with pytest.raises(ValueError, match="Unknown ALFWorld task type"):
        make("alfworld:boil_water", data_dir=str(no_data))
    with pytest.raises(ValueError, match="Unknown split"):
        ALFWorldEnv(data_dir=no_data).reset(seed=0, split="valid")


def test_generation_has_a_hard_time_limit(cache_dir: Path, no_data: Path) -> None:
    env = _env("pick_and_place_simple", cache_dir, no_data, generation_timeout=0.01)
    with pytest.raises(EnvError, match="longer than"):
        env.reset(seed=123_456, split="train")
