"""The Gradio Space (spaces/): its modules called directly, then the running app through gradio_client.

The agent is the Space's built-in tiny agent (built offline into a temporary cache), so it plays randomly: the tests
check what the page shows and how it gets it (the engine's turns, the person's moves applied through the engine,
EMPG's normalisation for the colours, evaluate_agent for comparisons), not the agent's skill.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import socket
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from trl_empg import EMPGConfig, bundled  # noqa: E402
from trl_empg.envs import ENV_FAMILIES, make  # noqa: E402
from trl_empg.envs.pool import EnvPool  # noqa: E402
from trl_empg.modulation import g, normalized_entropy  # noqa: E402
from trl_empg.rollout import AgentPrompts, EnvArguments, RolloutArguments, iter_episodes, parse_env_kwargs  # noqa: E402
from trl_empg.workflows import evaluation  # noqa: E402
from trl_empg.workflows.evaluation import step_entropies  # noqa: E402
from trl_empg.workflows.quickstart import DEFAULT_RECIPE  # noqa: E402

SPACES = Path(__file__).resolve().parent.parent / "spaces"
sys.path.insert(0, str(SPACES))  # the Space's modules import each other by name, as app.py beside them does

import agents  # noqa: E402
import compare  # noqa: E402
import environments  # noqa: E402
import hosting  # noqa: E402
import play  # noqa: E402
import render  # noqa: E402
import watch  # noqa: E402
from agent_settings import SETTINGS, DemoSettings, SpaceError  # noqa: E402


def _load_app():
    # spaces/ is not a package: load app.py under its own module name.
    spec = importlib.util.spec_from_file_location("trl_empg_space_app", SPACES / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


app = _load_app()
BUILTIN_TINY = agents.BUILTIN_TINY
ENV_ID = "twx:coin"
TEST_SEED = 20000  # first test seed of twx:coin; its gold plan is short (open door, move west, take coin)

# Short plain-style turns: a random agent plays every turn to the cap, so keep episodes small.
SETTINGS_SHORT = DemoSettings.from_mapping(
    prompt_style="plain", max_turns=3, max_turn_tokens=8, max_completion_length=512
)
# A person's game: room for the gold plan and a few wrong moves.
PLAY_SETTINGS = SETTINGS_SHORT.replace(max_turns=12, max_completion_length=3000)


#: The operator's settings these tests run under: the defaults, plus the crash-test env of tests/fake_envs.py.
POLICY = hosting.HostPolicy(envs=("fake_envs:FlakyEnv",))


@pytest.fixture(scope="module", autouse=True)
def space_cache(tmp_path_factory):
    """Build the built-in tiny agent into a temporary cache once for the whole module, under :data:`POLICY`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRL_EMPG_SPACE_CACHE", str(tmp_path_factory.mktemp("space-cache")))
        hosting.configure(POLICY)
        agents.resolve_checkpoint(BUILTIN_TINY)
        yield


@pytest.fixture
def operator():
    """Change the operator's settings for one test: ``operator(checkpoints=(...,))``; restored afterwards."""
    yield lambda **changes: hosting.configure(dataclasses.replace(POLICY, **changes))
    hosting.configure(POLICY)


def _gold(seed: int = TEST_SEED) -> list[str]:
    # coin's gold plans are random walks drawn afresh at every reset (up to ~30 moves): the shortest of 8 fits a game.
    env = make(ENV_ID)
    try:
        return min((env.reset(seed=seed, split="test")[1]["gold_actions"] for _ in range(8)), key=len)
    finally:
        env.close()


# ---------------------------------------------------------------------------------------------------------------------
# Settings: the project's own dataclasses, no restated defaults, no renaming
# ---------------------------------------------------------------------------------------------------------------------


def test_settings_are_fields_of_the_projects_settings_dataclasses():
    for setting in SETTINGS:
        field = next(item for item in fields(setting.source) if item.name == setting.name)  # same name, no mapping
        assert setting.default == field.default and setting.help == field.metadata["help"]
    sources = {setting.name: setting.source for setting in SETTINGS}
    assert {name for name, source in sources.items() if source is RolloutArguments} == {
        "prompt_style",
        "show_admissible_actions",
        "max_turns",
        "max_turn_tokens",
        "max_completion_length",
    }
    assert sources["env_kwargs"] is EnvArguments and sources["empg_zeta"] is EMPGConfig
    assert sources["temperature"] is evaluation.EvalArguments

    defaults = DemoSettings.from_mapping()
    assert defaults.rollout == RolloutArguments()
    assert defaults.env_kwargs == parse_env_kwargs(EnvArguments().env_kwargs)
    empg = {item.name: item.default for item in fields(EMPGConfig)}
    assert (defaults.empg_k, defaults.empg_k_future, defaults.empg_zeta) == (
        empg["empg_k"],
        empg["empg_k_future"],
        empg["empg_zeta"],
    )
    assert DemoSettings.from_values(defaults.values()) == defaults
    assert SETTINGS_SHORT.rollout == RolloutArguments(
        prompt_style="plain", max_turns=3, max_turn_tokens=8, max_completion_length=512
    )


def test_settings_are_checked_by_the_dataclasses_and_parse_env_kwargs():
    with pytest.raises(SpaceError, match="Unknown prompt_style 'chatty'"):
        DemoSettings.from_mapping(prompt_style="chatty")
    with pytest.raises(SpaceError, match=r"^max_turns must be >= 1, got 0\.$"):
        DemoSettings.from_mapping(max_turns=0)
    with pytest.raises(SpaceError, match="Setting max_turns must be an integer, got None"):
        DemoSettings.from_mapping(max_turns=None)
    with pytest.raises(SpaceError, match="Unknown settings"):
        DemoSettings.from_mapping(max_completion=10)  # the rollout's name is max_completion_length
    for bad in ("[1]", "{", '"x"'):
        with pytest.raises(ValueError) as expected:
            parse_env_kwargs(bad, "The environment options")
        with pytest.raises(SpaceError) as raised:
            DemoSettings.from_mapping(env_kwargs=bad)
        assert str(raised.value) == str(expected.value)
    assert DemoSettings.from_mapping(env_kwargs='{"a": 1}').env_kwargs == {"a": 1}


def test_checkpoint_defaults_follow_the_run_config(tmp_path, monkeypatch, operator):
    recipe = yaml.safe_load(DEFAULT_RECIPE.read_text())
    tiny = agents.checkpoint_defaults(BUILTIN_TINY)
    assert tiny.env_id == recipe["env_id"] == ENV_ID
    assert tiny.settings.rollout.prompt_style == recipe["prompt_style"]
    assert tiny.settings.rollout.max_turn_tokens == recipe["max_turn_tokens"]
    assert tiny.settings.env_kwargs == recipe["env_kwargs"]

    run = tmp_path / "runs" / "quickstart" / "empg"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    operator(checkpoints=(str(run),))
    assert agents.checkpoint_defaults(str(run)).settings == DemoSettings.from_mapping()
    # run_config.json's "training" is EMPGConfig.to_dict(): the same names as the page's settings.
    training = {"prompt_style": "plain", "max_turns": 6, "max_completion_length": 300, "empg_zeta": 0.05, "seed": 42}
    options = {"game_params": {"includeDoors": 0}}
    (run / "run_config.json").write_text(
        json.dumps({"training": {**training, "env_id": "twx:twc", "env_kwargs": options, "learning_rate": 1e-3}})
    )
    defaults = agents.checkpoint_defaults(str(run))
    assert defaults.env_id == "twx:twc" and "run_config.json" in defaults.note
    # The training seed is not the page's sampling seed; everything else is read by name.
    assert defaults.settings == DemoSettings.from_mapping(
        prompt_style="plain", max_turns=6, max_completion_length=300, empg_zeta=0.05, env_kwargs=options
    )

    monkeypatch.chdir(tmp_path)
    menu = agents.available_checkpoints(["someone/agent"])
    assert menu[:2] == [(str(run), str(run)), ("someone/agent", "someone/agent")]  # the operator's list first
    assert ("EMPG agent (runs/quickstart/empg)", "runs/quickstart/empg") in menu
    assert menu[-1][1] == BUILTIN_TINY

    note, env, *values = app.on_checkpoint_change(str(run))
    assert env["value"] == "twx:twc" and values == defaults.settings.values()


# ---------------------------------------------------------------------------------------------------------------------
# Watch the agent
# ---------------------------------------------------------------------------------------------------------------------


def test_episode_streams_turn_records_with_entropies():
    views = [
        (len(view.steps), view.finished, view.status)
        for view in watch.run_episode(BUILTIN_TINY, ENV_ID, None, SETTINGS_SHORT)
    ]
    # A loading message first, then one more turn per update, then the final outcome.
    assert views[0][:2] == (0, False)
    assert [count for count, _, _ in views[1:]] == [1, 2, 3, 3]
    assert [finished for _, finished, _ in views] == [False, False, False, False, True]

    final = list(watch.run_episode(BUILTIN_TINY, ENV_ID, TEST_SEED, SETTINGS_SHORT))[-1]
    assert final.error is None and final.finished and final.end_reason == "max_turns"
    assert final.status.startswith("Not solved: stopped after 3 turns at the turn limit")
    agent = agents.load_agent(BUILTIN_TINY)
    env = make(ENV_ID)
    try:
        first_observation, _ = env.reset(seed=TEST_SEED, split="test")
    finally:
        env.close()
    assert final.steps[0].observation.startswith(first_observation.strip())
    assert "Admissible actions:" in final.steps[0].observation
    for step in final.steps:
        assert isinstance(step.action, str) and step.action  # plain style: the whole reply is the action
        assert 0.0 < step.entropy <= agent.max_entropy + 1e-6
    assert final.final_observation

    page = render.episode_html(final)
    assert page.count('class="turn-row"') == 3
    assert page.count('class="entropy-chip"') == 3


def test_confidence_is_empg_min_max_normalisation_over_the_episode_steps():
    entropies = [0.54, 0.54, 0.66, 0.64, 0.18, 0.56, 0.34]  # the old screenshot's steps: all "~0.9 confident" before
    confidences = render.relative_confidences(entropies)
    expected = 1.0 - normalized_entropy(torch.tensor(entropies, dtype=torch.float64))
    assert confidences == pytest.approx(expected.tolist())
    # The most certain step maps to 1, the least certain to 0, the others spread in between.
    assert confidences[4] == pytest.approx(1.0) and confidences[2] == pytest.approx(0.0, abs=1e-6)
    assert max(confidences) - min(confidences) == pytest.approx(1.0)
    assert render.confidence_color(confidences[4]) == render.confidence_color(1.0) != render.confidence_color(0.0)
    assert render.confidence_color(confidences[2]) == render.confidence_color(0.0)
    # Nothing to rank: one step, equal steps; a step without entropy stays uncoloured.
    assert render.relative_confidences([0.5]) == [None]
    assert render.relative_confidences([0.5, 0.5]) == [None, None]
    assert render.relative_confidences([0.2, None, 0.4]) == [pytest.approx(1.0), None, pytest.approx(0.0, abs=1e-6)]

    # On a played episode: the table's chips run from the least certain step (0, red) to the most certain (1, green).
    view = list(watch.run_episode(BUILTIN_TINY, ENV_ID, TEST_SEED, SETTINGS_SHORT))[-1]
    steps = [step.entropy for step in view.steps]
    assert len(set(steps)) == len(steps)
    page = render.episode_html(view)
    assert "relative to this episode's steps: 0 = its least certain step" in page
    assert f"background:{render.confidence_color(0.0)}" in page and "conf 0.00" in page
    assert f"background:{render.confidence_color(1.0)}" in page and "conf 1.00" in page
    least, most = steps.index(max(steps)), steps.index(min(steps))
    rows = page.split('class="turn-row"')[1:]
    assert "conf 0.00" in rows[least] and "conf 1.00" in rows[most]


def test_plot_uses_empg_modulation_of_the_episode_steps():
    view = list(watch.run_episode(BUILTIN_TINY, ENV_ID, TEST_SEED, SETTINGS_SHORT))[-1]
    figure = render.entropy_figure(view, SETTINGS_SHORT)
    top, bottom, bonus_axis = figure.axes
    heights = torch.tensor([bar.get_height() for bar in bottom.patches], dtype=torch.float64)
    entropies = torch.tensor([step.entropy for step in view.steps], dtype=torch.float64)
    normalized = normalized_entropy(entropies)
    assert torch.allclose(heights, g(normalized, SETTINGS_SHORT.empg_k))
    bonus = bonus_axis.get_lines()[0].get_ydata()
    assert bonus[-1] == 0.0  # the last step has no next step
    assert bonus[0] == pytest.approx(SETTINGS_SHORT.empg_zeta * math.exp(-float(normalized[1])))
    # The points carry the table's colours: 1 - Hn.
    colors = top.collections[0].get_facecolors()
    for color, hn in zip(colors, normalized.tolist()):
        assert tuple(color) == pytest.approx(to_rgba(render.confidence_color(1.0 - hn)))
    assert render.entropy_figure(watch.EpisodeView(), SETTINGS_SHORT) is None


def test_turn_records_match_the_played_episode():
    """The Space reads turns from iter_episodes; they must agree with the episode run_episodes would return."""
    agent = agents.load_agent(BUILTIN_TINY)
    torch.manual_seed(0)
    with EnvPool(ENV_ID) as pool:
        turns = iter_episodes(
            pool,
            [(TEST_SEED, "test"), (TEST_SEED + 1, "test")],
            agent.tokenizer,
            agent.generate_fn(SETTINGS_SHORT.sampling(), POLICY.deadline()),
            SETTINGS_SHORT.rollout,
            AgentPrompts("plain"),
        )
        records = []
        while True:
            try:
                records.append(next(turns))
            except StopIteration as finished:
                episodes = finished.value
                break
    assert [[record.slot for record in turn] for turn in records] == [[0, 1]] * 3
    for slot, episode in enumerate(episodes):
        mine = [turn[slot] for turn in records]
        assert [record.action for record in mine] == episode.actions
        assert [sum(r.entropies) / len(r.entropies) for r in mine] == pytest.approx(step_entropies(episode))
        assert [record.feedback for record in mine] == [m["content"] for m in episode.messages[3::2]]
        assert [record.done for record in mine] == [False, False, True]


def test_reasoning_is_the_think_text():
    assert watch.split_reply("<think>the door is west</think><action>move west</action>", "react") == (
        "the door is west"
    )
    assert watch.split_reply("move west", "plain") == ""
    assert watch.split_reply("go <action>move west</action>", "react") == "go"
    assert watch.split_reply("I am lost", "react") == "I am lost"
    react = watch.StepView(0, "You see a door.", "the door is west", "move west", 0.0, 0.5)
    plain = watch.StepView(0, "You see a door.", "", "move west", 0.0, 0.5)
    assert '<td class="reasoning">the door is west</td>' in render.episode_html(watch.EpisodeView(steps=[react]))
    assert "reasoning" not in render.episode_html(watch.EpisodeView(steps=[plain]))


# ---------------------------------------------------------------------------------------------------------------------
# Play yourself: the person's moves go through the episode engine
# ---------------------------------------------------------------------------------------------------------------------


def test_play_mode_applies_moves_through_the_engine_to_a_win(monkeypatch):
    gold = _gold()
    contexts = []
    generate_fn = agents.LoadedAgent.generate_fn

    def recording_generate_fn(self, sampling, deadline):
        generate = generate_fn(self, sampling, deadline)

        def record(prompts, max_new_tokens):
            contexts.append(prompts[0])
            return generate(prompts, max_new_tokens)

        return record

    monkeypatch.setattr(agents.LoadedAgent, "generate_fn", recording_generate_fn)
    session, status, observation, suggestion, radio, history = app.start_game(
        None, BUILTIN_TINY, ENV_ID, TEST_SEED, *PLAY_SETTINGS.values()
    )
    assert isinstance(session, play.PlaySession) and session.pool is not None
    engine, state = session.engine, session.state
    # The suggestion is the policy's continuation of exactly what the engine would feed it.
    assert contexts == [engine.context(state)]
    assert status.startswith(f"{ENV_ID} test task {TEST_SEED}: move 1 of at most 12")
    assert "Observation" in observation and "Agent's suggestion" in suggestion and "confidence" in suggestion
    assert radio["choices"] == state.admissible_actions and radio["visible"] is True
    assert "No moves yet" in history

    *_, radio, history = app.play_move(session, "dance wildly")
    assert session.turns[-1].invalid and "not understood" in history
    assert state.episode.num_invalid_actions == 1
    for action in gold:
        assert not session.done
        assert action in session.admissible_actions
        outputs = app.play_move(session, action)
        if not session.done:
            assert contexts[-1] == engine.context(state)
    _, status, _, suggestion, radio, history = outputs
    assert session.won and session.done and session.pool is None  # the env worker is released at the end
    assert state.episode.end_reason == "won" and state.episode.reward == 1.0  # scored by engine.finalize
    assert status == f"You won after {len(gold) + 1} moves (score 1.00)."
    assert suggestion == "" and radio["visible"] is False
    assert history.count('class="play-row"') == len(gold) + 1
    assert all(turn.suggestion is not None and turn.suggestion.entropy is not None for turn in session.turns)

    # The engine recorded the moves token-exactly as the turns of an episode: reply ids on model tokens.
    episode = state.episode
    moves = ["dance wildly", *gold]
    assert episode.actions == moves and episode.num_turns == len(moves)
    for turn, move in enumerate(moves):
        ids = [token for token, step in zip(episode.completion_ids, episode.step_ids) if step == turn]
        assert ids == engine.reply_ids(move)
    assert [m["content"] for m in episode.messages[2::2]] == moves
    assert episode.entropies is None  # a person's replies have no generation entropies

    # The agent's own suggestion can be played; a finished game ignores further moves.
    assert app.play_suggestion(session)[1] == status


def test_play_mode_malformed_reply_gets_feedback():
    react = PLAY_SETTINGS.replace(prompt_style="react", max_turn_tokens=64)
    assert play.as_reply("move west", "react") == "<action>move west</action>"
    assert play.as_reply("<think>hm</think><action>move west</action>", "react").startswith("<think>")
    assert play.as_reply("move west", "plain") == "move west"
    session = play.PlaySession(BUILTIN_TINY, ENV_ID, TEST_SEED, react)
    try:
        before = session.state.env_observation
        _, status, observation, *_, history = app.play_move(session, "<think>no idea what to do</think>")
        turn = session.turns[-1]
        assert turn.action is None and turn.invalid and turn.reward == 0.0
        assert session.state.env_observation == before  # nothing was sent to the environment
        assert session.state.episode.num_invalid_actions == 1 and session.state.episode.actions == []
        feedback = session.engine.prompts.format_error(session.state.admissible_actions)
        assert turn.feedback == feedback == session.observation
        assert observation.endswith(feedback) and feedback.startswith("Invalid reply format.")
        assert "did not parse, so nothing was sent" in status and "malformed reply" in history
        assert status.startswith(f"{ENV_ID} test task {TEST_SEED}: move 2")

        # A move longer than the agent's turn is refused before it costs a turn.
        outputs = app.play_move(session, "look around " * 40)
        assert outputs[1].startswith("Error: That move is") and "holds at most 64" in outputs[1]
        assert len(session.turns) == 1

        app.play_move(session, "move south")
        assert session.turns[-1].action == "move south" and session.state.episode.actions == ["move south"]
    finally:
        session.close()


def test_play_mode_ends_where_the_engine_ends_an_episode():
    session = play.PlaySession(BUILTIN_TINY, ENV_ID, TEST_SEED, PLAY_SETTINGS.replace(max_turns=2))
    app.play_move(session, "look around")
    _, status, *_ = app.play_move(session, "inventory")
    assert session.done and session.state.episode.end_reason == "max_turns" and session.pool is None
    assert status == "Out of turns: the agent's episodes stop after 2 turns (score 0.00)."


def test_play_mode_messages():
    session, status, *_ = app.start_game(None, "/no/such/checkpoint", ENV_ID, None, *SETTINGS_SHORT.values())
    assert session is None and status.startswith("Error: The checkpoint '/no/such/checkpoint' is not offered here")
    assert app.play_move(None, "move west")[1] == "Start a game first."
    session = app.start_game(None, BUILTIN_TINY, ENV_ID, None, *SETTINGS_SHORT.values())[0]
    try:
        assert app.play_move(session, "  ")[1] == "Error: Choose or type an action first."
        assert app.start_game(None, BUILTIN_TINY, ENV_ID, None, "chatty", *SETTINGS_SHORT.values()[1:])[1].startswith(
            "Error: Unknown prompt_style 'chatty'"
        )
    finally:
        session.close()


# ---------------------------------------------------------------------------------------------------------------------
# Compare checkpoints: evaluate_agent's reports, side by side
# ---------------------------------------------------------------------------------------------------------------------


def test_compare_uses_evaluate_agent(monkeypatch):
    calls, reports = [], []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        reports.append(evaluation.evaluate_agent(*args, **kwargs))
        return reports[-1]

    monkeypatch.setattr(compare, "evaluate_agent", spy)
    table, summary = compare.compare_checkpoints(BUILTIN_TINY, BUILTIN_TINY, ENV_ID, 2, SETTINGS_SHORT)
    assert len(calls) == 2
    for args, kwargs in calls:
        path = agents.resolve_checkpoint(BUILTIN_TINY)
        assert args == (path, ENV_ID, SETTINGS_SHORT.env_kwargs, SETTINGS_SHORT.rollout)
        assert kwargs["split"] == "test" and kwargs["seeds"] == [TEST_SEED, TEST_SEED + 1]
        assert (kwargs["greedy"], kwargs["temperature"], kwargs["seed"]) == (False, 1.0, 0)

    assert list(table["task seed"]) == [TEST_SEED, TEST_SEED + 1]
    assert list(table.columns) == [
        "task seed",
        "A success",
        "A steps",
        "A mean step entropy",
        "B success",
        "B steps",
        "B mean step entropy",
    ]
    for tag, report in (("A", reports[0]), ("B", reports[1])):
        episodes = report["episodes"]
        assert list(table[f"{tag} steps"]) == [episode["steps"] for episode in episodes] == [3, 3]
        assert list(table[f"{tag} success"]) == ["won" if e["won"] else "lost" for e in episodes]
        assert list(table[f"{tag} mean step entropy"]) == pytest.approx(
            [sum(e["step_entropies"]) / len(e["step_entropies"]) for e in episodes], abs=1e-4
        )
        assert f"mean step entropy {report['mean_step_entropy']:.3f} nats" in summary
    assert summary.count("success 0% (0/2, 95% CI") == 2

    table, summary = compare.compare_checkpoints(BUILTIN_TINY, "/no/such/checkpoint", ENV_ID, 2, SETTINGS_SHORT)
    assert table.empty and summary.startswith("Error: The checkpoint '/no/such/checkpoint' is not offered here")


# ---------------------------------------------------------------------------------------------------------------------
# Messages instead of exceptions
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "env_id", "seed", "message"),
    [
        ("/no/such/checkpoint", ENV_ID, None, "The checkpoint '/no/such/checkpoint' is not offered here"),
        ("nobody/no-such-agent", ENV_ID, None, "The checkpoint 'nobody/no-such-agent' is not offered here"),
        ("", ENV_ID, None, "Choose a checkpoint"),
        (BUILTIN_TINY, "no-such-env", None, "The environment 'no-such-env' is not offered here. Built-in families"),
        (BUILTIN_TINY, "twx:no-such-game", None, "Unknown TextWorldExpress game 'no-such-game'"),
        (BUILTIN_TINY, ENV_ID, 5, "5 is not a test seed of twx:coin"),
        (BUILTIN_TINY, ENV_ID, "five", "The task seed must be an integer"),
    ],
)
def test_bad_inputs_give_messages(checkpoint, env_id, seed, message):
    *_, last = watch.run_episode(checkpoint, env_id, seed, SETTINGS_SHORT)
    assert last.finished and not last.steps
    assert message in last.error and last.status == f"Error: {last.error}"


def test_missing_environment_package_gives_a_message(monkeypatch):
    monkeypatch.setitem(ENV_FAMILIES, "scienceworld", ("trl_empg.envs.no_such_adapter", "Env", "scienceworld", True))
    environments.cached_env_info.cache_clear()
    try:
        status, seeds = app.on_env_change("scienceworld:boil")
        *_, last = watch.run_episode(BUILTIN_TINY, "scienceworld:boil", None, SETTINGS_SHORT)
    finally:
        environments.cached_env_info.cache_clear()
    assert status.startswith("Error: Missing environment package for 'scienceworld:boil'")
    assert "pip install" in status and seeds["choices"] == []
    assert last.error.startswith("Missing environment package")


def test_crashed_environment_gives_a_message_and_the_app_goes_on():
    # fake_envs.FlakyEnv (tests/fake_envs.py): test seed 203 kills its own process at the first step, 201 raises.
    *_, last = watch.run_episode(BUILTIN_TINY, "fake_envs:FlakyEnv", 203, SETTINGS_SHORT)
    assert last.error.startswith("The environment failed") and "died" in last.error
    assert last.end_reason == "env_error" and len(last.steps) == 1

    session = play.PlaySession(BUILTIN_TINY, "fake_envs:FlakyEnv", 201, SETTINGS_SHORT)
    _, status, *_ = app.play_move(session, "left")
    assert status.startswith("Error: The environment failed") and "fake env failure" in status
    assert session.done and session.pool is None and session.state.episode.end_reason == "env_error"

    *_, last = watch.run_episode(BUILTIN_TINY, "fake_envs:FlakyEnv", 200, SETTINGS_SHORT)
    assert last.error is None and last.steps


def test_environment_options_reach_the_environment():
    doorless = SETTINGS_SHORT.replace(env_kwargs='{"game_params": {"includeDoors": 0}}')
    views = list(watch.run_episode(BUILTIN_TINY, ENV_ID, TEST_SEED, doorless))
    assert views[-1].error is None and views[-1].steps
    assert "door" not in views[-1].steps[0].observation.lower()
    with_doors = list(watch.run_episode(BUILTIN_TINY, ENV_ID, TEST_SEED, SETTINGS_SHORT))
    assert "door" in with_doors[-1].steps[0].observation.lower()
    views = list(watch.run_episode(BUILTIN_TINY, ENV_ID, TEST_SEED, SETTINGS_SHORT.replace(env_kwargs={"bogus": 1})))
    assert views[-1].error == (
        "Environment option(s) ['bogus'] cannot be set here; allowed: ['game_params', 'max_steps', 'gold_plan_draws']."
    )


def test_bad_settings_give_messages():
    values = SETTINGS_SHORT.values()
    values[2] = None  # a cleared "max turns" box
    status, page, plot = next(app.watch_episode(BUILTIN_TINY, ENV_ID, None, *values))
    assert status == "Error: Setting max_turns must be an integer, got None." and plot is None and "No turns" in page
    values[2] = 0
    table, summary = app.compare_handler(BUILTIN_TINY, BUILTIN_TINY, ENV_ID, 2, *values)
    assert table.empty and summary == "Error: max_turns must be >= 1, got 0."
    values[2], values[5], values[6] = 3, False, 0.0  # sampling at temperature 0
    status = app.start_game(None, BUILTIN_TINY, ENV_ID, None, *values)[1]
    assert status.startswith("Error: The temperature must be > 0")


# ---------------------------------------------------------------------------------------------------------------------
# Menus and launch options
# ---------------------------------------------------------------------------------------------------------------------


def test_checkpoint_menu_offers_the_shipped_agent_first_then_local_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(agents, "REPO_ROOT", tmp_path)  # this checkout's own runs/ stay out of the menu
    converted = tmp_path / "runs" / "smollm2-135m-instruct-bf16"
    trained = tmp_path / "runs" / "smollm2" / "search-sft"
    for path, marker in ((converted, "gguf_provenance.json"), (trained, "run_config.json")):
        (path / "checkpoint-5").mkdir(parents=True)
        for folder in (path, path / "checkpoint-5"):
            (folder / "config.json").write_text("{}")
        (path / marker).write_text("{}")
    (tmp_path / "runs" / "no-model").mkdir()
    menu = agents.available_checkpoints()
    assert menu[0] == (bundled.BUNDLED_AGENTS["twx-coin-empg"], "bundled:twx-coin-empg")  # the page's default
    assert menu[1:] == [
        ("converted from GGUF (runs/smollm2-135m-instruct-bf16)", "runs/smollm2-135m-instruct-bf16"),
        ("trained run (runs/smollm2/search-sft)", "runs/smollm2/search-sft"),
        ("tiny random agent, built offline (twx:coin tokenizer)", BUILTIN_TINY),
    ]
    assert agents.resolve_checkpoint("bundled:twx-coin-empg") == str(bundled.bundled_agent("twx-coin-empg"))
    shipped = agents.checkpoint_defaults("bundled:twx-coin-empg")
    training = json.loads((bundled.bundled_agent("twx-coin-empg") / "run_config.json").read_text())["training"]
    assert shipped.env_id == "twx:coin" and shipped.settings == DemoSettings.from_training(training)
    with pytest.raises(SpaceError, match="not offered here"):
        agents.check_checkpoint("bundled:no-such-agent")


def test_env_menu_lists_every_registered_family():
    choices = environments.env_choices()
    assert choices[0] == ENV_ID and choices[-1] == "fake_envs:FlakyEnv"  # the operator's own environments last
    assert {choice.partition(":")[0] for choice in choices[:-1]} == set(ENV_FAMILIES)
    status, seeds = app.on_env_change(ENV_ID)
    assert "1000 held-out test tasks" in status
    assert seeds["value"] == TEST_SEED and len(seeds["choices"]) == environments.MENU_SEEDS


def test_launch_options(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    for name in ("TRL_EMPG_SPACE_CHECKPOINTS", "TRL_EMPG_SPACE_ENVS", "TRL_EMPG_SPACE_MAX_TURNS"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.host, args.port, args.checkpoints) == ("127.0.0.1", 7860, None)
    assert app.policy_from_args(args) == hosting.HostPolicy()
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8000")
    assert (app.parse_args([]).host, app.parse_args([]).port) == ("0.0.0.0", 8000)
    args = app.parse_args(["--host", "127.0.0.2", "--port", "9000", "--checkpoint", "a", "--checkpoint", "b"])
    assert (args.host, args.port, args.checkpoints) == ("127.0.0.2", 9000, ["a", "b"])
    # The operator's settings: environment variables first, flags on top (list flags add to the variable's list).
    monkeypatch.setenv("TRL_EMPG_SPACE_CHECKPOINTS", "me/agent, runs/mine")
    monkeypatch.setenv("TRL_EMPG_SPACE_MAX_TURNS", "30")
    args = app.parse_args(["--checkpoint", "a", "--allow-env", "pkg.mod:Env", "--allow-hub-ids", "--max-turns", "10"])
    policy = app.policy_from_args(args)
    assert policy.checkpoints == ("me/agent", "runs/mine", "a") and policy.envs == ("pkg.mod:Env",)
    assert policy.allow_hub_ids is True and policy.max_turns == 10
    assert app.policy_from_args(app.parse_args([])).max_turns == 30
    monkeypatch.setenv("TRL_EMPG_SPACE_MAX_TURNS", "many")
    with pytest.raises(ValueError, match="TRL_EMPG_SPACE_MAX_TURNS must be int, got 'many'"):
        hosting.HostPolicy.from_env()


def test_space_modules_use_no_private_names_of_each_other():
    modules = [path.stem for path in SPACES.glob("*.py")]
    for path in SPACES.glob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 450, path
        for line in text.splitlines():
            if line.startswith("from ") and " import " in line:
                source, names = line[5:].split(" import ", 1)
                if source in modules or source.startswith("trl_empg"):
                    assert not any(name.strip().startswith("_") for name in names.split(",")), (path, line)


# ---------------------------------------------------------------------------------------------------------------------
# The running app, through its API
# ---------------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    port = _free_port()
    demo = app.serve("127.0.0.1", port, POLICY, block=False)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def test_api_runs_an_episode(client):
    values = SETTINGS_SHORT.values()
    status, page, plot = client.predict(BUILTIN_TINY, ENV_ID, TEST_SEED, *values, api_name="/run_episode")
    assert status.startswith("Not solved: stopped after 3 turns")
    assert page.count('class="turn-row"') == 3 and "H = " in page
    assert plot is not None

    # Streaming: every turn reaches the client as its own update.
    job = client.submit(BUILTIN_TINY, ENV_ID, TEST_SEED, *values, api_name="/run_episode")
    job.result()
    rows = [update[1].count('class="turn-row"') for update in job.outputs()]
    assert rows[-4:] == [1, 2, 3, 3]


def test_api_reports_bad_checkpoints_and_keeps_serving(client):
    values = SETTINGS_SHORT.values()
    # The checkpoint menu takes no typed values (the operator did not allow Hub ids): Gradio refuses them itself.
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("nobody/no-such-agent", ENV_ID, None, *values, api_name="/run_episode")
    status, *_ = client.predict(BUILTIN_TINY, "no-such-env", None, *values, api_name="/run_episode")
    assert status.startswith("Error: The environment 'no-such-env' is not offered here.")
    status, page, _ = client.predict(BUILTIN_TINY, ENV_ID, None, *values, api_name="/run_episode")
    assert page.count('class="turn-row"') == 3
