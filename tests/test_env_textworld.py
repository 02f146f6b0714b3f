"""TextWorld adapter: games are generated and compiled offline (a few seconds each), so the module shares one cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("textworld")

from trl_empg.envs import EnvError, make  # noqa: E402
from trl_empg.envs.textworld import TextWorldEnv, _game_seed  # noqa: E402


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("textworld-cache")


@pytest.fixture(scope="module")
def cooking(cache_root: Path) -> Iterator[TextWorldEnv]:
    env = TextWorldEnv("cooking", cache_dir=cache_root / "cooking")
    yield env
    env.close()


@pytest.fixture(scope="module")
def coin(cache_root: Path) -> Iterator[TextWorldEnv]:
    env = make("textworld:tw-coin_collector", cache_dir=cache_root / "coin")
    yield env
    env.close()


def _play_gold(env: TextWorldEnv, seed: int, split: str) -> None:
    observation, info = env.reset(seed=seed, split=split)
    assert observation and "$$$$" not in observation  # the ASCII banner is gone, the objective comes first
    assert set(info) >= {"admissible_actions", "gold_actions", "won", "score"}
    assert info["gold_actions"] and not info["won"] and info["score"] == 0.0
    total_reward, done = 0.0, False
    for action in info["gold_actions"]:
        assert not done
        assert action in info["admissible_actions"]
        observation, reward, done, info = env.step(action)
        assert not info["invalid_action"] and observation
        total_reward += reward
    assert done and info["won"] and not info["lost"] and info["score"] == 1.0
    assert total_reward == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")


@pytest.mark.parametrize(("split", "index"), [("train", 0), ("train", 1), ("test", 0)])
@pytest.mark.parametrize("env_name", ["cooking", "coin"])
def test_gold_path_wins(request: pytest.FixtureRequest, env_name: str, split: str, index: int) -> None:
    env = request.getfixturevalue(env_name)
    _play_gold(env, env.task_seeds(split)[index], split)


def test_generation_is_deterministic_and_cached(cooking: TextWorldEnv, cache_root: Path) -> None:
    first_observation, first_info = cooking.reset(seed=0, split="train")
    again_observation, again_info = cooking.reset(seed=0, split="train")
    assert (again_observation, again_info) == (first_observation, first_info)

    other = TextWorldEnv("tw-cooking", cache_dir=cache_root / "cooking-again")
    try:
        observation, info = other.reset(seed=0, split="train")
        assert (observation, info) == (first_observation, first_info)
        assert other.game_file(0).read_bytes() == cooking.game_file(0).read_bytes()
    finally:
        other.close()


def test_splits_are_disjoint_and_give_different_games(cooking: TextWorldEnv) -> None:
    seeds = {split: cooking.task_seeds(split) for split in ("train", "dev", "test")}
    assert all(len(split_seeds) == 1000 for split_seeds in seeds.values())
    assert len(set(seeds["train"]) | set(seeds["dev"]) | set(seeds["test"])) == 3000
    # Even a seed number reused across splits generates from a different seed.
    assert len({_game_seed(split, 7) for split in ("train", "dev", "test")}) == 3

    train_observation, train_info = cooking.reset(seed=seeds["train"][0], split="train")
    test_observation, test_info = cooking.reset(seed=seeds["test"][0], split="test")
    assert train_observation != test_observation
    assert train_info["gold_actions"] != test_info["gold_actions"]


def test_invalid_actions_are_flagged_and_played(cooking: TextWorldEnv) -> None:
    _, info = cooking.reset(seed=0, split="train")
    observation, reward, done, step_info = cooking.step("xyzzy")
    assert step_info["invalid_action"] and reward == 0.0 and not done
    assert "verb" in observation  # the game's own parser message
    assert step_info["admissible_actions"] == info["admissible_actions"]
    _, _, _, step_info = cooking.step("take the moon")
    assert step_info["invalid_action"]
    # Case and spacing do not matter, like for the game's parser.
    _, _, _, step_info = cooking.step(f"  {info['gold_actions'][0].upper()}\n")
    assert not step_info["invalid_action"]


def test_max_steps_ends_the_episode(cache_root: Path) -> None:
    with TextWorldEnv("cooking", cache_dir=cache_root / "cooking", max_steps=2) as env:
        env.reset(seed=0)
        assert not env.step("look")[2]
        _, _, done, info = env.step("look")
        assert done and not info["won"]
        with pytest.raises(RuntimeError):
            env.step("look")


def test_make_and_settings(cache_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = make("textworld:cooking", cache_dir=cache_root / "cooking")
    assert isinstance(env, TextWorldEnv) and env.env_id == "textworld:cooking"
    assert env.challenge == "tw-cooking" and "cookbook" in env.task_description
    assert env.reset(seed=0)[1]["gold_actions"]
    env.close()

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    default = TextWorldEnv("cooking")
    harder = TextWorldEnv("cooking", settings={"go": 9}, cook=True)
    assert default.cache_dir.parent == tmp_path / "trl_empg" / "textworld"
    assert default.cache_dir.name.startswith("tw-cooking-") and harder.cache_dir != default.cache_dir
    assert harder.settings["go"] == 9 and harder.settings["cook"] is True and harder.settings["take"] == 1
    assert TextWorldEnv("custom", world_size=3).settings["world_size"] == 3


def test_unknown_challenge_or_setting_raises() -> None:
    with pytest.raises(ValueError, match="cooking") as error:
        make("textworld:chess")
    assert "coin_collector" in str(error.value) and "custom" in str(error.value)
    with pytest.raises(ValueError, match="level"):
        TextWorldEnv("coin_collector", settings={"levle": 3})
    with pytest.raises(ValueError, match="split"):
        TextWorldEnv("cooking").reset(seed=0, split="validation")


def test_generation_failure_and_timeout_raise_env_error(tmp_path: Path) -> None:
    with pytest.raises(EnvError, match="level"):
        TextWorldEnv("coin_collector", level=1000, cache_dir=tmp_path / "bad").reset(seed=0)
    with pytest.raises(EnvError, match="timed out"):
        TextWorldEnv("coin_collector", generation_timeout=0.05, cache_dir=tmp_path / "slow").reset(seed=0)
    assert not list((tmp_path / "slow").iterdir())  # no partial game left in the cache
