"""The TextWorldExpress adapter against the real TWX JVM: gold paths, splits, info keys, invalid actions, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("textworld_express")

from trl_empg.envs import make  # noqa: E402
from trl_empg.envs.twx import TextWorldExpressEnv  # noqa: E402

UNKNOWN_ACTION = "Unknown action: I'm not sure what you mean."
INFO_KEYS = {"admissible_actions", "gold_actions", "won", "score"}


@pytest.fixture(scope="module")
def coin() -> Iterator[TextWorldExpressEnv]:
    env = make("twx:coin")
    yield env
    env.close()


def play(env: TextWorldExpressEnv, actions: list[str]) -> tuple[list[tuple[str, float, bool, dict]], int]:
    """Play ``actions`` until done; returns the transitions and how many actions were left unplayed."""
    transitions = []
    for index, action in enumerate(actions):
        transitions.append(env.step(action))
        if transitions[-1][2]:
            return transitions, len(actions) - index - 1
    return transitions, 0


def test_make_builds_the_adapter(coin: TextWorldExpressEnv) -> None:
    assert isinstance(coin, TextWorldExpressEnv)
    assert coin.env_id == "twx:coin"
    assert "coin" in coin.task_description
    assert coin.game_params == {"numLocations": 4, "includeDoors": 1, "numDistractorItems": 0}


def test_unknown_env_id_lists_known_ids() -> None:
    with pytest.raises(ValueError, match=r"Known env ids: .*twx:<name>"):
        make("nope:x")


def test_unknown_game_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"Unknown TextWorldExpress game 'chess'.*'coin'"):
        TextWorldExpressEnv("chess")


@pytest.mark.parametrize(
    ("game_params", "message"),
    [("numLocations=abc", "must be an integer"), ("bogus=3", "Unrecognized property"), ("numLocations", "name=value")],
)
def test_bad_game_params_are_clear_errors(game_params: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TextWorldExpressEnv("coin", game_params=game_params)


def test_splits_are_official_and_disjoint(coin: TextWorldExpressEnv) -> None:
    seeds = {split: coin.task_seeds(split) for split in ("train", "dev", "test")}
    assert all(len(values) == 1000 for values in seeds.values())
    assert not set(seeds["train"]) & set(seeds["dev"])
    assert not set(seeds["train"]) & set(seeds["test"])
    assert not set(seeds["dev"]) & set(seeds["test"])
    with pytest.raises(ValueError, match="split"):
        coin.task_seeds("validation")


@pytest.mark.parametrize(("seed", "split"), [(seed, "test") for seed in (0, 999)] + [(10_000, "train"), (-1, "dev")])
def test_seed_outside_split_is_rejected(coin: TextWorldExpressEnv, seed: int, split: str) -> None:
    with pytest.raises(ValueError, match=f"not a {split} seed of twx:coin"):
        coin.reset(seed=seed, split=split)


@pytest.mark.parametrize("game", ["coin", "mapreader", "arithmetic", "sorting"])
def test_gold_paths_win_on_every_split(game: str) -> None:
    with make(f"twx:{game}") as env:
        for split in ("train", "dev", "test"):
            for seed in env.task_seeds(split)[:4]:
                observation, info = env.reset(seed=seed, split=split)
                assert observation and INFO_KEYS <= info.keys()
                assert info["gold_actions"] and info["gold_actions"][0] != "look around"
                assert info["admissible_actions"] == sorted(info["admissible_actions"])
                assert info["score"] == 0.0 and not info["won"]
                transitions, unplayed = play(env, info["gold_actions"])
                assert unplayed == 0
                rewards = [reward for _, reward, _, _ in transitions]
                *_, done, last = transitions[-1]
                assert done and last["won"] and last["score"] == 1.0
                assert sum(rewards) == pytest.approx(1.0)
                assert all(INFO_KEYS | {"invalid_action"} <= step_info.keys() for *_, step_info in transitions)
                assert not any(step_info["invalid_action"] for *_, step_info in transitions)


def test_episodes_are_deterministic(coin: TextWorldExpressEnv) -> None:
    _, info = coin.reset(seed=10_007, split="dev")
    actions = info["gold_actions"]
    runs = []
    for _ in range(2):
        observation, info = coin.reset(seed=10_007, split="dev")
        runs.append([(observation, info)] + play(coin, actions)[0])
    assert runs[0][1:] == runs[1][1:]
    assert runs[0][0][0] == runs[1][0][0]
    assert runs[0][0][1]["admissible_actions"] == runs[1][0][1]["admissible_actions"]


def test_coin_gold_plan_is_fixed_per_task_and_shorter_than_twx_walks() -> None:
    """TWX draws coin's plan as a random walk on every reset; 16 draws report the shortest, cached per task."""
    with make("twx:coin", gold_plan_draws=16) as env, make("twx:coin") as raw:
        assert raw.gold_plan_draws == 1
        plans, walks = [], []
        for seed in env.task_seeds("train")[:8]:
            plan = env.reset(seed=seed, split="train")[1]["gold_actions"]
            assert env.reset(seed=seed, split="train")[1]["gold_actions"] == plan
            assert plan[-1] == "take coin" and play(env, plan)[0][-1][3]["won"]
            plans.append(len(plan))
            walks += [len(raw.reset(seed=seed, split="train")[1]["gold_actions"]) for _ in range(4)]
    # Measured on these seeds: shortest plans of 1-5 actions (mean 3.0) against walks of 1-17 (mean 5.7) in one run.
    assert sum(plans) / len(plans) < sum(walks) / len(walks)


def test_gold_plan_draws_keep_the_shortest_with_ties_broken_alphabetically(monkeypatch) -> None:
    with make("twx:coin", gold_plan_draws=3) as env:
        client = env._client
        draws = iter([["look around", "move west", "take coin"], ["move east", "take coin"], ["move a", "take coin"]])
        calls = []
        monkeypatch.setattr(client, "getGoldActionSequence", lambda: next(draws))
        real_reset = client.reset
        monkeypatch.setattr(client, "reset", lambda **kw: calls.append(kw["generateGoldPath"]) or real_reset(**kw))
        seed = env.task_seeds("train")[0]
        assert env.reset(seed=seed, split="train")[1]["gold_actions"] == ["move a", "take coin"]
        assert env.reset(seed=seed, split="train")[1]["gold_actions"] == ["move a", "take coin"]
        assert calls == [True, True, True, False]


def test_bad_gold_plan_draw_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="gold_plan_draws must be >= 1"):
        TextWorldExpressEnv("coin", gold_plan_draws=0)


def test_invalid_action_is_reported_with_twx_text(coin: TextWorldExpressEnv) -> None:
    observation, info = coin.reset(seed=3, split="train")
    for action in ("fly to the moon", "LOOK AROUND", "help"):
        assert action not in info["admissible_actions"]
        observation, reward, done, step_info = coin.step(action)
        assert step_info["invalid_action"] and not done and reward == 0.0
        assert step_info["admissible_actions"] == info["admissible_actions"]
    assert coin.step("fly to the moon")[0] == UNKNOWN_ACTION
    # TWX trims surrounding whitespace, so the padded action is understood.
    observation, _, _, step_info = coin.step(f"  {info['admissible_actions'][0]} ")
    assert not step_info["invalid_action"] and observation != UNKNOWN_ACTION
    # An invalid action leaves the game as it was: the gold path still wins.
    coin.reset(seed=3, split="train")
    coin.step("dance")
    transitions, _ = play(coin, info["gold_actions"])
    assert transitions[-1][3]["won"]


def test_max_steps_ends_the_episode_and_step_after_done_raises() -> None:
    with make("twx:coin", max_steps=3) as env:
        with pytest.raises(RuntimeError, match="reset"):
            env.step("look around")
        env.reset(seed=0, split="train")
        dones = [env.step("look around")[2] for _ in range(3)]
        assert dones == [False, False, True]
        with pytest.raises(RuntimeError, match="episode is over"):
            env.step("look around")


def test_lost_game_scores_zero_and_ends() -> None:
    with make("twx:arithmetic") as env:
        _, info = env.reset(seed=0, split="train")
        answer = (
            next(a for a in info["gold_actions"] if a.startswith("put ")).removeprefix("put ").removesuffix(" in box")
        )
        wrong = next(
            a.removeprefix("take ")
            for a in info["admissible_actions"]
            if a.startswith("take ") and a.removeprefix("take ") not in (answer, "math problem")
        )
        env.step(f"take {wrong}")
        _, reward, done, info = env.step(f"put {wrong} in box")
        # TWX scores a lost game -1; the adapter clips the score to [0, 1].
        assert done and info["lost"] and not info["won"]
        assert info["score"] == 0.0 and reward == 0.0


def test_game_params_override_defaults() -> None:
    with make("twx:coin", game_params={"numLocations": 1}) as env:
        assert env.game_params["numLocations"] == 1 and env.game_params["includeDoors"] == 1
        _, info = env.reset(seed=0, split="train")
        # With a single room the coin is in sight: the gold plan is just taking it.
        assert info["gold_actions"] == ["take coin"]
