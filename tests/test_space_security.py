"""The Space as a stranger uses it: every endpoint that takes an env id, options or a checkpoint, over HTTP.

Hostile env ids name standard-library classes that spawn a process or write a file when called with the visitor's
options; each must be refused before anything is imported or built (the marker file never appears), with a message
that says what is allowed. Options outside each family's documented, bounded keys, local paths, oversized values and
settings past the operator's bounds are refused the same way, while ordinary use keeps working.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SPACES = Path(__file__).resolve().parent.parent / "spaces"
sys.path.insert(0, str(SPACES))  # the Space's modules import each other by name, as app.py beside them does

import agents  # noqa: E402
import hosting  # noqa: E402
import play  # noqa: E402
import watch  # noqa: E402
from agent_settings import DemoSettings, SpaceError  # noqa: E402

from trl_empg.rollout.policy import HFPolicy  # noqa: E402


def _load_app():
    spec = importlib.util.spec_from_file_location("trl_empg_space_app_security", SPACES / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


app = _load_app()
BUILTIN_TINY = agents.BUILTIN_TINY
ENV_ID = "twx:coin"
SHORT = DemoSettings.from_mapping(prompt_style="plain", max_turns=2, max_turn_tokens=8, max_completion_length=512)
#: An operator who lets visitors type Hub ids (capped at 100 MB) and offers one environment class of its own.
POLICY = hosting.HostPolicy(envs=("fake_envs:FlakyEnv",), allow_hub_ids=True, max_hub_model_mb=100)


def values_with(options: dict | str | None = None, **settings) -> list:
    """The settings widgets' values as a visitor sends them, with the environment options box set to ``options``."""
    values = SHORT.replace(**settings).values() if settings else SHORT.values()
    if options is not None:
        values[-1] = options if isinstance(options, str) else json.dumps(options)
    return values


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRL_EMPG_SPACE_CACHE", str(tmp_path_factory.mktemp("space-cache")))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        demo = app.serve("127.0.0.1", port, POLICY, block=False)
        try:
            yield demo, Client(f"http://127.0.0.1:{port}/", verbose=False)
        finally:
            demo.close()


@pytest.fixture
def operator():
    """Change the operator's settings for one test (the running app reads them per request); restored afterwards."""
    yield lambda **changes: hosting.configure(dataclasses.replace(POLICY, **changes))
    hosting.configure(POLICY)


def hostile_envs(marker: Path) -> list[tuple[str, dict]]:
    """Classes that run a command or write ``marker`` when ``make()`` calls them with the visitor's options."""
    return [
        ("subprocess:Popen", {"args": ["touch", str(marker)]}),
        ("logging:FileHandler", {"filename": str(marker)}),
        ("zipfile:ZipFile", {"file": str(marker), "mode": "w"}),
        ("pathlib:Path", {}),
    ]


def every_endpoint(client, env_id: str, values: list, checkpoint: str = BUILTIN_TINY) -> dict[str, str]:
    """The message each endpoint that takes an env id returns for this request."""
    return {
        "on_env_change": client.predict(env_id, *values, api_name="/on_env_change")[0],
        "run_episode": client.predict(checkpoint, env_id, None, *values, api_name="/run_episode")[0],
        "start_game": client.predict(checkpoint, env_id, None, *values, api_name="/start_game")[0],
        "compare": client.predict(checkpoint, checkpoint, env_id, 2, *values, api_name="/compare")[1],
    }


def test_hostile_env_ids_are_refused_by_every_endpoint(client, tmp_path):
    _, api = client
    marker = tmp_path / "created-by-a-visitor"
    for env_id, options in hostile_envs(marker):
        for endpoint, message in every_endpoint(api, env_id, values_with(options)).items():
            assert message.startswith(f"Error: The environment {env_id!r} is not offered here."), (endpoint, message)
            assert "Built-in families: twx:<name>, scienceworld:<name>, alfworld" in message
            assert "also: fake_envs:FlakyEnv" in message
        assert not marker.exists(), env_id
    # The operator's own class is offered, with the operator's options only.
    status, seeds = api.predict("fake_envs:FlakyEnv", *values_with({}), api_name="/on_env_change")
    assert "held-out test tasks" in status and seeds["choices"]
    status, _ = api.predict("fake_envs:FlakyEnv", *values_with({"args": [1]}), api_name="/on_env_change")
    assert status == "Error: The options of 'fake_envs:FlakyEnv' are set by this Space's operator; leave them empty."


@pytest.mark.parametrize(
    ("env_id", "options", "message"),
    [
        ("twx:coin", {"env_step_limit": 3}, "Environment option(s) ['env_step_limit'] cannot be set here; allowed:"),
        ("twx:coin", {"max_steps": 10**9}, "Option max_steps must be an integer from 1 to 100, got 1000000000."),
        ("twx:coin", {"game_params": {"numLocations": 10**6}}, "Option game_params.numLocations must be an integer"),
        ("twx:coin", {"game_params": {"seed": 1}}, "Environment option(s) ['game_params.seed'] cannot be set here"),
        ("twx:coin", {"game_params": "numLocations=99"}, "Option game_params must be a JSON object"),
        ("twx:coin", {"max_steps": True}, "Option max_steps must be an integer from 1 to 100, got True."),
        ("scienceworld:boil", {"jvm_heap": "64g"}, "Environment option(s) ['jvm_heap'] cannot be set here"),
        ("webshop", {"data_dir": "/etc"}, "Environment option(s) ['data_dir'] cannot be set here"),
        ("webshop", {"product_file": "../../etc/passwd"}, "Environment option(s) ['product_file'] cannot be set"),
        ("search", {"corpus_path": "/etc/passwd"}, "Environment option(s) ['corpus_path'] cannot be set here"),
        ("search", {"reward_mode": "__import__('os')"}, "Option reward_mode must be one of ['em', 'f1']"),
        ("alfworld", {"cache_dir": "/tmp"}, "Environment option(s) ['cache_dir'] cannot be set here"),
        ("textworld:cooking", {"settings": {"go": 10**6}}, "Environment option(s) ['settings'] cannot be set here"),
        ("webshop:task_type", {"task_type": "x"}, "Environment option(s) ['task_type'] cannot be set here"),
    ],
)
def test_undocumented_options_paths_and_oversized_values_are_refused(client, env_id, options, message):
    _, api = client
    for endpoint, reply in every_endpoint(api, env_id, values_with(options)).items():
        assert reply.startswith(f"Error: {message}"), (endpoint, reply)


def test_settings_past_the_operators_bounds_are_refused(client):
    _, api = client
    limits = {"max_turns": 50, "max_turn_tokens": 256, "max_completion_length": 8192}
    for name, bound in limits.items():
        values = values_with(**{name: bound + 1})
        for endpoint, reply in every_endpoint(api, ENV_ID, values).items():
            if endpoint != "on_env_change":  # listing seeds plays nothing
                assert reply == f"Error: Setting {name} is at most {bound} on this Space, got {bound + 1}.", endpoint
    with pytest.raises(Exception, match="Value 1000 is greater than maximum value 20"):  # Gradio's own check
        api.predict(BUILTIN_TINY, BUILTIN_TINY, ENV_ID, 1000, *values_with(), api_name="/compare")
    _, summary = app.compare_handler(BUILTIN_TINY, BUILTIN_TINY, ENV_ID, 1000, *values_with())  # and the handler's
    assert summary == "Error: Compare on 1 to 20 tasks, got 1000."


def test_checkpoints_are_the_operators_or_capped_hub_ids(client, tmp_path, monkeypatch):
    _, api = client
    local = tmp_path / "agent"
    local.mkdir()
    (local / "config.json").write_text("{}")
    for path in (str(local), "/etc", "./runs/quickstart/empg", "../agent", "~/agent", "spaces/../runs"):
        replies = every_endpoint(api, ENV_ID, values_with(), checkpoint=path)
        replies["on_checkpoint_change"] = api.predict(path, api_name="/on_checkpoint_change")[0]
        del replies["on_env_change"]  # takes no checkpoint
        for reply in replies.values():
            assert "local paths cannot be typed here" in reply, (path, reply)

    sizes = {"big/model": 5000.0, "small/model": 10.0}
    monkeypatch.setattr(agents, "hub_model_size_mb", lambda repo_id: sizes[repo_id])
    loads = []
    monkeypatch.setattr(
        HFPolicy, "from_pretrained", classmethod(lambda cls, name, *a, **k: loads.append(name) or 1 / 0)
    )
    replies = every_endpoint(api, ENV_ID, values_with(), checkpoint="big/model")
    for reply in [replies["run_episode"], replies["start_game"], replies["compare"]]:
        assert reply.startswith("Error: The Hub model 'big/model' is 5000 MB; this Space loads at most 100 MB")
    assert loads == []
    # Within the cap the id passes the checks and reaches the loader (which fails here, offline, with a message).
    reply = api.predict("small/model", ENV_ID, None, *values_with(), api_name="/run_episode")[0]
    assert loads == ["small/model"] and reply.startswith("Error:")


def test_typed_checkpoints_are_refused_unless_the_operator_allows_hub_ids(operator):
    operator(allow_hub_ids=False)
    for name in ("someone/agent", "/etc", BUILTIN_TINY + "x"):
        with pytest.raises(SpaceError, match=r"is not offered here; choose one of \['bundled:twx-coin-empg'"):
            agents.check_checkpoint(name)
    operator(allow_hub_ids=False, checkpoints=("someone/agent",))
    assert agents.check_checkpoint(" someone/agent ") == "someone/agent"
    with pytest.raises(SpaceError, match="at most 2000 characters"):
        agents.check_checkpoint("a" * 3000)


def test_gradio_runs_requests_under_the_operators_queue_limits(client):
    demo, _ = client
    assert demo._queue.max_size == POLICY.max_queue
    assert demo._queue.default_concurrency_limit == POLICY.concurrency_limit
    assert demo.api_open is False  # every request goes through the queue


def test_play_sessions_are_capped(operator, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EMPG_SPACE_CACHE", str(tmp_path))
    operator(max_sessions=1)
    first = play.PlaySession(BUILTIN_TINY, ENV_ID, None, SHORT)
    try:
        _, status, *_ = app.start_game(None, BUILTIN_TINY, ENV_ID, None, *values_with())
        assert status == (
            "Error: All 1 play sessions of this Space are in use (max_sessions, set by its operator); "
            "try again in a few minutes."
        )
    finally:
        first.close()
    second, status, *_ = app.start_game(None, BUILTIN_TINY, ENV_ID, None, *values_with())
    assert isinstance(second, play.PlaySession) and hosting.SESSIONS.open == 1
    with pytest.raises(SpaceError, match="That move is too long"):
        second.act("north " * 1000)
    second.close()
    assert hosting.SESSIONS.open == 0

    # A game whose environment cannot start gives its place back.
    def no_worker(*args):
        raise RuntimeError("no worker")

    monkeypatch.setattr(play, "open_pool", no_worker)
    with pytest.raises(RuntimeError, match="no worker"):
        play.PlaySession(BUILTIN_TINY, ENV_ID, None, SHORT)
    assert hosting.SESSIONS.open == 0


def test_requests_stop_at_the_time_limit(operator, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EMPG_SPACE_CACHE", str(tmp_path))
    operator(request_time_limit_s=2.5)
    # A clock that advances one second per look: generations start at 0, 1 and 2 s, the fourth would at 3 s.
    ticks = itertools.count()
    monkeypatch.setattr(
        hosting.HostPolicy,
        "deadline",
        lambda self: hosting.Deadline(self.request_time_limit_s, self.request_time_limit_s, lambda: next(ticks)),
    )
    *_, last = watch.run_episode(BUILTIN_TINY, ENV_ID, None, SHORT.replace(max_turns=5))
    assert len(last.steps) == 3 and last.finished
    assert last.error == (
        "Stopped: this request ran past the Space's time limit of 2.5 s (request_time_limit_s, set by its operator)."
    )
    # A comparison runs in trl-empg eval's code path, given what is left of the request's time (2.5 s here); with
    # every turn's generation taking 0.7 s, five turns cannot fit.
    generate = HFPolicy.__call__

    def slow(self, prompts, max_new_tokens):
        time.sleep(0.7)
        return generate(self, prompts, max_new_tokens)

    monkeypatch.setattr(HFPolicy, "__call__", slow)
    _, summary = app.compare_handler(BUILTIN_TINY, BUILTIN_TINY, ENV_ID, 2, *values_with(max_turns=5))
    assert summary.startswith("Error: Stopped: this request ran past the Space's time limit of 2.5 s")


def test_ordinary_use_still_works(client):
    _, api = client
    doorless = values_with({"game_params": {"includeDoors": 0}, "max_steps": 10})
    status, seeds = api.predict(ENV_ID, *doorless, api_name="/on_env_change")
    assert "1000 held-out test tasks" in status and seeds["value"] == 20000
    status, page, _ = api.predict(BUILTIN_TINY, ENV_ID, 20000, *doorless, api_name="/run_episode")
    assert status.startswith("Not solved: stopped after 2 turns") and page.count('class="turn-row"') == 2
    _, summary = api.predict(BUILTIN_TINY, BUILTIN_TINY, ENV_ID, 1, *doorless, api_name="/compare")
    assert summary.startswith("twx:coin, test seeds 20000-20000")


def test_operator_settings_are_checked_at_start():
    with pytest.raises(ValueError, match="max_turns must be >= 1, got 0"):
        hosting.HostPolicy(max_turns=0)
    with pytest.raises(ValueError, match="TRL_EMPG_SPACE_ALLOW_HUB_IDS must be bool, got 'maybe'"):
        hosting.HostPolicy.from_env({"TRL_EMPG_SPACE_ALLOW_HUB_IDS": "maybe"})
    policy = hosting.HostPolicy.from_env({"TRL_EMPG_SPACE_ENVS": "a.b:C, d.e:F", "TRL_EMPG_SPACE_ALLOW_HUB_IDS": "1"})
    assert policy.envs == ("a.b:C", "d.e:F") and policy.allow_hub_ids is True
