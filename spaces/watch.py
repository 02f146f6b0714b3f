"""Watch the agent: one held-out task played by the project's rollout runner, streamed turn by turn.

The episode is :func:`trl_empg.rollout.iter_episodes` (the generator behind ``run_episodes``, which training and
evaluation use) with :class:`trl_empg.rollout.policy.HFPolicy`: same prompts, parsing and generation-time entropies as
the trainer's rollouts. Each yielded :class:`~trl_empg.rollout.TurnRecord` becomes one row of the page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from agent_settings import DemoSettings, SpaceError, first_line, plural
from agents import load_agent, mean
from environments import SPLIT, check_seed, open_pool
from hosting import active_policy

from trl_empg.rollout import AgentPrompts, Episode, iter_episodes

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ACTION_BLOCK_RE = re.compile(r"<action>.*?</action>", re.DOTALL)


@dataclass
class StepView:
    """One agent turn as the page shows it."""

    turn: int
    observation: str  # what the agent saw before replying (the user message, admissible actions included)
    reasoning: str
    action: str | None  # None: the reply did not parse, nothing was sent to the environment
    reward: float
    entropy: float | None  # the step entropy: mean token entropy of the reply, in nats


@dataclass
class EpisodeView:
    """The episode so far: its steps, a one-line status and, when something went wrong, the message to show."""

    steps: list[StepView] = field(default_factory=list)
    status: str = ""
    finished: bool = False
    error: str | None = None
    won: bool = False
    score: float = 0.0
    final_observation: str = ""
    #: One of trl_empg.rollout.END_REASONS once the episode is over.
    end_reason: str | None = None
    #: ln|V| of the agent: the entropy of a uniformly random token, for reference.
    max_entropy: float | None = None


def split_reply(reply: str, style: str) -> str:
    """The reasoning part of a reply: the ``<think>`` text in the ReAct style, else whatever surrounds the action
    (a malformed reply shows whole); plain replies are only an action."""
    if style != "react":
        return ""
    thoughts = _THINK_RE.findall(reply)
    if thoughts:
        return "\n".join(thought.strip() for thought in thoughts)
    return _ACTION_BLOCK_RE.sub("", reply).strip()


def outcome(episode: Episode, settings: DemoSettings) -> str:
    """The status line of a finished episode, from the engine's ``end_reason``."""
    turns, score = plural(episode.num_turns, "turn"), f"score {episode.score:.2f}"
    reason = episode.end_reason
    if reason == "env_error":
        return f"Error: The environment failed: {first_line(episode.error or '')}"
    if reason == "won":
        return f"Won in {turns} ({score})."
    if reason == "max_turns":
        limit = settings.rollout.max_turns
        return f"Not solved: stopped after {turns} at the turn limit (max_turns = {limit}; {score})."
    if reason == "token_budget":
        return (
            f"Not solved: stopped after {turns}: the episode's token budget (max_completion_length = "
            f"{settings.rollout.max_completion_length}) cannot hold another turn ({score})."
        )
    return f"Lost after {turns} ({score})."


def run_episode(checkpoint: str, env_id: str, seed: int | str | None, settings: DemoSettings) -> Iterator[EpisodeView]:
    """Play one test task with the agent, yielding the episode after every turn (one view, updated in place).

    Never raises for the things a visitor can get wrong or an environment can do: a bad checkpoint, an unknown env,
    a missing package, a bad seed or a crashed env end the stream with a view whose ``error`` says what happened.
    """
    yield EpisodeView(status=f"Loading {checkpoint or 'the agent'} and {env_id or 'the environment'}...")
    try:
        agent = load_agent(checkpoint)
        info, seed = check_seed(env_id, seed, settings.env_kwargs)
    except SpaceError as error:
        yield EpisodeView(status=f"Error: {error}", finished=True, error=str(error))
        return
    rollout = settings.rollout
    prompts = AgentPrompts(rollout.prompt_style, rollout.show_admissible_actions, info.description)
    view = EpisodeView(status=f"Playing {env_id} test task {seed}...", max_entropy=agent.max_entropy)
    torch.manual_seed(settings.seed)
    pool = open_pool(env_id, settings.env_kwargs)
    generate = agent.generate_fn(settings.sampling(), active_policy().deadline())
    try:
        turns = iter_episodes(pool, [(seed, SPLIT)], agent.tokenizer, generate, rollout, prompts)
        seen: str | None = None  # the user message the agent answers next
        while True:
            try:
                (record,) = next(turns)
            except StopIteration as finished:
                (episode,) = finished.value
                break
            if record.turn == 0:
                seen = record.episode.messages[1]["content"]
            view.steps.append(
                StepView(
                    turn=record.turn,
                    observation=seen or "",
                    reasoning=split_reply(record.reply, rollout.prompt_style),
                    action=record.action,
                    reward=record.reward,
                    entropy=mean(record.entropies),
                )
            )
            seen = record.feedback
            view.status = f"Turn {record.turn + 1} of at most {rollout.max_turns} played..."
            yield view
    except SpaceError as error:  # The request's time limit.
        view.error = str(error)
        view.status, view.finished = f"Error: {view.error}", True
        yield view
        return
    except Exception as error:  # A broken checkpoint (e.g. a chat template the rollout cannot extend).
        view.error = f"The episode failed: {type(error).__name__}: {error}"
        view.status, view.finished = f"Error: {view.error}", True
        yield view
        return
    finally:
        pool.close()
    view.won, view.score, view.finished, view.end_reason = episode.won, episode.score, True, episode.end_reason
    view.final_observation = seen or ""
    view.status = outcome(episode, settings)
    if episode.error is not None:
        view.error = view.status.removeprefix("Error: ")
    yield view
