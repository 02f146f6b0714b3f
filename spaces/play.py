"""Play yourself: a person plays a held-out task through the episode engine while the agent suggests each move.

The person's moves stand in for the agent's replies and go through the same engine as every rollout
(:class:`trl_empg.rollout.EpisodeEngine`): a typed move becomes reply token ids (:meth:`~EpisodeEngine.reply_ids`,
written in the prompt style's format), :meth:`~EpisodeEngine.apply_reply` parses it (a malformed reply gets the
agent's format-error feedback and is not sent), the environment steps, :meth:`~EpisodeEngine.apply_result` applies
its answer, and the engine ends the game where it would end an agent's episode (won, lost, max turns, token budget,
env error). The agent's suggestion is generated on ``engine.context(state)``, exactly what it would continue.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_settings import DemoSettings, SpaceError, first_line, plural
from agents import Suggestion, load_agent
from environments import SPLIT, check_seed, open_pool
from hosting import SESSIONS, active_policy, check_text

from trl_empg.envs.pool import EnvPool
from trl_empg.rollout import AgentPrompts, EpisodeEngine


@dataclass
class PlayTurn:
    """One move of the person, with what the agent suggested at that point."""

    turn: int
    #: What the person typed or clicked.
    move: str
    #: The action the engine read from it and sent; None when the reply did not parse (nothing was sent).
    action: str | None
    suggestion: Suggestion | None
    reward: float
    #: Malformed, or an action the environment did not understand.
    invalid: bool
    #: What the agent sees next: the observation, or the format-error feedback.
    feedback: str | None


def as_reply(move: str, style: str) -> str:
    """A move written as the prompt style's reply: ``<action>move</action>`` in ReAct, unless the person wrote a
    whole reply themselves (with ``<think>`` or ``<action>`` tags), which is taken as it is."""
    if style != "react" or "<action>" in move or "<think>" in move:
        return move
    return f"<action>{move}</action>"


class PlaySession:
    """A person playing one test task while the agent watches and suggests.

    The environment lives in a worker process for the session's lifetime; call :meth:`close` (the page does on a new
    game and when the session expires).
    """

    def __init__(self, checkpoint: str, env_id: str, seed: int | str | None, settings: DemoSettings) -> None:
        self.pool: EnvPool | None = None
        self.holds_slot = False
        self.agent = load_agent(checkpoint)
        info, self.seed = check_seed(env_id, seed, settings.env_kwargs)
        SESSIONS.acquire(active_policy().max_sessions)
        self.holds_slot = True
        self.env_id = env_id
        self.settings = settings
        rollout = settings.rollout
        prompts = AgentPrompts(rollout.prompt_style, rollout.show_admissible_actions, info.description)
        self.engine = EpisodeEngine(self.agent.tokenizer, rollout, prompts)
        self.turns: list[PlayTurn] = []
        try:
            self.pool = open_pool(env_id, settings.env_kwargs)
            (self.state,) = self.engine.start_all(self.pool, [(0, self.seed, SPLIT)])
        except BaseException:
            self.close()
            raise
        if not self.state.active:
            self.close()
            raise SpaceError(f"The environment failed to start: {first_line(self.state.episode.error or '')}")
        self.suggestion: Suggestion | None = self._suggest()

    # -- the game as the engine sees it -------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return not self.state.active

    @property
    def won(self) -> bool:
        return self.state.episode.won

    @property
    def score(self) -> float:
        return self.state.episode.score

    @property
    def admissible_actions(self) -> list[str]:
        return [] if self.done else list(self.state.admissible_actions)

    @property
    def observation(self) -> str:
        """What the agent sees now: the last user message (observation, or format-error feedback)."""
        return self.state.episode.messages[-1]["content"]

    @property
    def error(self) -> str | None:
        error = self.state.episode.error
        return None if error is None else f"The environment failed: {first_line(error)}"

    def _suggest(self) -> Suggestion | None:
        try:
            return self.agent.suggest(self.engine, self.state, self.settings.sampling(), active_policy().deadline())
        except Exception as error:  # E.g. a conversation longer than the model's context: the game goes on.
            return Suggestion(f"(no suggestion: {type(error).__name__}: {error})", None, None)

    # -- a move ------------------------------------------------------------------------------------------------------

    def act(self, move: str | None) -> None:
        """Play ``move`` through the engine; the agent then suggests the next one. Ignored once the game is over."""
        move = check_text(move, "That move").strip()
        if self.done or self.pool is None:
            return
        if not move:
            raise SpaceError("Choose or type an action first.")
        ids = self.engine.reply_ids(as_reply(move, self.engine.prompts.style))
        limit = self.engine.turn_limit(self.state)
        if len(ids) > limit:
            raise SpaceError(
                f"That move is {len(ids)} tokens and the agent's turn holds at most {limit} (max_turn_tokens, or what "
                "is left of the episode's token budget): shorten it."
            )
        episode = self.state.episode
        invalid_before = episode.num_invalid_actions
        record = self.engine.apply_reply(self.state, ids, None)
        result = None
        if record.action is not None:
            (result,) = self.pool.step([(self.state.slot, record.action)])
        self.engine.apply_result(self.state, record, result)
        self.turns.append(
            PlayTurn(
                turn=record.turn,
                move=move,
                action=record.action,
                suggestion=self.suggestion,
                reward=record.reward,
                invalid=episode.num_invalid_actions > invalid_before,
                feedback=record.feedback,
            )
        )
        if record.done:
            self.engine.finalize(self.state)
            self.suggestion = None
            self.close()
        else:
            self.suggestion = self._suggest()

    def status(self) -> str:
        """One line: the game's outcome (by the engine's end reason), else the move to play next."""
        episode, rollout = self.state.episode, self.settings.rollout
        moves, score = plural(len(self.turns), "move"), f"score {self.score:.2f}"
        reason = episode.end_reason
        if reason == "env_error":
            return f"Error: {self.error}"
        if reason == "won":
            return f"You won after {moves} ({score})."
        if reason == "lost":
            return f"Game over after {moves} ({score})."
        if reason == "max_turns":
            return f"Out of turns: the agent's episodes stop after {rollout.max_turns} turns ({score})."
        if reason == "token_budget":
            return (
                f"Out of tokens after {moves}: the episode's budget of {rollout.max_completion_length} tokens cannot "
                f"hold another turn ({score})."
            )
        last = self.turns[-1] if self.turns else None
        note = " Your last reply did not parse, so nothing was sent." if last and last.action is None else ""
        return (
            f"{self.env_id} test task {self.seed}: move {len(self.turns) + 1} of at most {rollout.max_turns}, "
            f"score so far {self.score:.2f}.{note}"
        )

    def close(self) -> None:
        """End the game: its environment process and its place among the Space's open sessions."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.holds_slot:
            self.holds_slot = False
            SESSIONS.release()
