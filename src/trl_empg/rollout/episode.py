"""The episode engine: the one place that plays the rules of an episode, for every driver.

An :class:`EpisodeState` is one running episode. :class:`EpisodeEngine` applies to it, in order, a model reply
(:meth:`~EpisodeEngine.apply_reply`: parse the action, record the reply's tokens token-exactly with env_mask 1, the
turn index as step id and its generation entropies, or format-error feedback for a malformed reply) and the
environment's answer (:meth:`~EpisodeEngine.apply_result`: outcome, admissible actions, the next observation turn
appended with env_mask 0), and decides when and why the episode ends (``end_reason``: won, lost, max turns, token
budget, env error). :meth:`~EpisodeEngine.play_turn` is the lockstep turn every driver runs: one batched generation
over the given episodes, one batched :meth:`EnvPool.step`, then both applied. The batched runner
(:mod:`.runner`), AEPO's branching rollout (:mod:`.branching`), evaluation and the demo Space all play through it.

Token exactness: the model's generated ids are kept as generated (never decoded and re-encoded), and each
observation turn is the chat template's own rendering of the next user message plus the generation header
(:class:`~.prompts.ChatFormat`), so ``prompt_ids + completion_ids`` equals the chat template's rendering of
``messages`` and the trainer trains on exactly what the policy saw. A reply cut at the turn's token limit never said
its end of turn; before the next observation turn the engine closes it with the template's end of turn
(:attr:`~.prompts.ChatFormat.end_of_turn`, env_mask 0 and step id -1: the model did not generate it), so later turns
never see an assistant message that did not close, and the equality holds for cut replies too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .prompts import AgentPrompts, ChatFormat, parse_action
from .settings import RolloutArguments

if TYPE_CHECKING:
    from ..envs.pool import EnvPool, StepResult

__all__ = [
    "END_REASONS",
    "Episode",
    "EpisodeEngine",
    "EpisodeState",
    "GenerateFn",
    "TurnRecord",
    "TurnStart",
]

#: ``(prompt token ids of each episode, max_new_tokens) -> (generated ids per episode, per-token entropies of those
#: ids per episode or None)``. Generated ids end with the tokenizer's EOS when the model finished its turn and must
#: not carry padding; ids after the first EOS are ignored.
GenerateFn = Callable[[list[list[int]], int], tuple[list[list[int]], list[list[float]] | None]]

#: Why an episode ended: the env said done and won or not, the turn limit, the token budget, or an env failure.
END_REASONS = ("won", "lost", "max_turns", "token_budget", "env_error")


@dataclass
class Episode:
    """One played episode: the token-exact training sample plus its outcome and conversation for logging."""

    #: System + first observation rendered with the chat template, ending with the assistant generation header.
    prompt_ids: list[int]
    #: Model turn 0, observation turn 1, model turn 1, ...; always ends with a model turn (empty if none was played).
    #: An observation turn that follows a reply cut before its EOS starts with the template's end of turn.
    completion_ids: list[int] = field(default_factory=list)
    #: 1 on model tokens, 0 on observation tokens (and on the end of turn closing a cut reply).
    env_mask: list[int] = field(default_factory=list)
    #: The turn index on model tokens, -1 elsewhere.
    step_ids: list[int] = field(default_factory=list)
    #: Generation entropies on model tokens and 0.0 on observation tokens; None when the backend gave none.
    entropies: list[float] | None = field(default_factory=list)
    #: The conversation (system / user / assistant), including the env's final observation.
    messages: list[dict[str, str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    reward: float = 0.0
    won: bool = False
    score: float = 0.0
    num_turns: int = 0
    num_invalid_actions: int = 0
    #: Ended by max_turns or the token budget rather than by the environment.
    truncated: bool = False
    #: Why the environment failed (raised, hung or died); the episode then counts as a failure.
    error: str | None = None
    #: One of END_REASONS once the episode is over, None while it runs.
    end_reason: str | None = None
    #: Step layout only: the bounded-history prompt of each turn, whose reply is that turn's tokens in completion_ids.
    turn_prompt_ids: list[list[int]] = field(default_factory=list)


@dataclass
class TurnRecord:
    """One model turn of one episode, once the environment has answered: what a viewer shows turn by turn."""

    slot: int
    turn: int
    #: The model's reply, decoded without its EOS token.
    reply: str
    #: The parsed action sent to the environment; None when the reply was malformed (nothing was sent).
    action: str | None
    #: Generation entropies of the turn's tokens (EOS included); None when the backend gave none.
    entropies: list[float] | None
    #: The live episode: ``won``, ``score``, ``error`` and ``truncated`` are current; ``reward`` and ``entropies``
    #: are final only once the episode is finalised.
    episode: Episode
    #: The environment's reward for this step; 0.0 when nothing was sent or the environment failed.
    reward: float = 0.0
    #: The next user message (observation or format-error feedback); None when the environment failed.
    feedback: str | None = None
    #: The episode ended with this turn (environment done, failure or truncation).
    done: bool = False


@dataclass(frozen=True)
class TurnStart:
    """An episode's state when a turn starts: what a branch regenerating that turn copies."""

    completion_length: int
    num_messages: int
    num_actions: int
    num_invalid_actions: int
    won: bool
    score: float
    admissible_actions: tuple[str, ...]
    #: The environment's last observation (the reset one before any action): a replay must end on it.
    env_observation: str


class EpisodeState:
    """A running episode: its sample so far, the env's current admissible actions and last observation."""

    def __init__(self, slot: int, episode: Episode, admissible_actions: list[str], env_observation: str) -> None:
        self.slot = slot
        self.episode = episode
        self.admissible_actions = admissible_actions
        self.env_observation = env_observation
        self.active = True
        self.has_entropies = True
        #: One snapshot per turn played, taken as the turn starts.
        self.turn_starts: list[TurnStart] = []
        #: Step layout: the prompt the next turn continues, rendered once when the turn becomes due.
        self.step_prompt_ids: list[int] = []

    def finish(self, reason: str, error: str | None = None) -> None:
        self.active = False
        self.episode.end_reason = reason
        self.episode.truncated = reason in ("max_turns", "token_budget")
        self.episode.error = error

    def append(self, ids: list[int], mask: int, step: int, entropies: list[float] | None) -> None:
        episode = self.episode
        episode.completion_ids.extend(ids)
        episode.env_mask.extend([mask] * len(ids))
        episode.step_ids.extend([step] * len(ids))
        if entropies is None:
            self.has_entropies = False
        elif self.has_entropies:
            assert episode.entropies is not None
            episode.entropies.extend(entropies)

    def snapshot(self) -> TurnStart:
        episode = self.episode
        return TurnStart(
            completion_length=len(episode.completion_ids),
            num_messages=len(episode.messages),
            num_actions=len(episode.actions),
            num_invalid_actions=episode.num_invalid_actions,
            won=episode.won,
            score=episode.score,
            admissible_actions=tuple(self.admissible_actions),
            env_observation=self.env_observation,
        )


class EpisodeEngine:
    """The rules of an episode for one tokenizer, rollout settings and prompts (see the module docstring).

    ``settings.max_completion_length`` bounds the whole completion (model and observation tokens), like GRPO's
    ``max_completion_length``: a turn generates at most what is left, and an episode that cannot hold another
    observation turn plus one model token ends as truncated, so ``len(completion_ids)`` never exceeds it.
    """

    def __init__(self, tokenizer: Any, settings: RolloutArguments, prompts: AgentPrompts | None = None) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.prompts = prompts or AgentPrompts(settings.prompt_style, settings.show_admissible_actions)
        self.chat = ChatFormat(tokenizer)
        self.eos = self.chat.eos
        self.system = {"role": "system", "content": self.prompts.system()}

    # -- starting ----------------------------------------------------------------------------------------------------

    def start(self, slot: int, reset: StepResult) -> EpisodeState:
        """A new episode in ``slot`` from the env's reset result (a failed reset is an episode that already ended)."""
        admissible = list(reset.info.get("admissible_actions") or [])
        user = {"role": "user", "content": self.prompts.first_user(reset.observation, admissible)}
        prompt_ids = self.chat.render([self.system, user], add_generation_prompt=True)
        episode = Episode(prompt_ids=prompt_ids, messages=[self.system, user])
        state = EpisodeState(slot, episode, admissible, reset.observation)
        state.step_prompt_ids = prompt_ids
        if reset.error is not None:
            state.finish("env_error", reset.error)
        return state

    def start_all(self, pool: EnvPool, requests: Sequence[tuple[int, int, str]]) -> list[EpisodeState]:
        """Reset ``(slot, task seed, split)`` in one batched pool call and start an episode in each slot."""
        resets = pool.reset(list(requests)) if requests else []
        if len(resets) != len(requests):
            raise RuntimeError(f"EnvPool.reset returned {len(resets)} results for {len(requests)} requests.")
        return [self.start(slot, result) for (slot, _, _), result in zip(requests, resets)]

    def fork(self, parent: EpisodeState, turn: int, slot: int) -> EpisodeState:
        """A copy of ``parent`` as it was when ``turn`` started, in ``slot`` (whose env must be restored to it)."""
        start = parent.turn_starts[turn]
        cut, source = start.completion_length, parent.episode
        episode = Episode(
            prompt_ids=list(source.prompt_ids),
            completion_ids=source.completion_ids[:cut],
            env_mask=source.env_mask[:cut],
            step_ids=source.step_ids[:cut],
            entropies=None if source.entropies is None else source.entropies[:cut],
            messages=[dict(message) for message in source.messages[: start.num_messages]],
            actions=source.actions[: start.num_actions],
            won=start.won,
            score=start.score,
            num_turns=turn,
            num_invalid_actions=start.num_invalid_actions,
        )
        child = EpisodeState(slot, episode, list(start.admissible_actions), start.env_observation)
        child.has_entropies = parent.has_entropies
        child.turn_starts = parent.turn_starts[:turn]
        if self.step_layout:
            episode.turn_prompt_ids = source.turn_prompt_ids[:turn]
            child.step_prompt_ids = self._step_prompt(episode)
        return child

    # -- one turn ----------------------------------------------------------------------------------------------------

    @property
    def step_layout(self) -> bool:
        return self.settings.rollout_layout == "step"

    def context(self, state: EpisodeState) -> list[int]:
        """The token ids the policy continues this turn: the first prompt and every turn since (episode layout), or
        the turn's bounded-history prompt (step layout)."""
        if self.step_layout:
            return state.step_prompt_ids
        return state.episode.prompt_ids + state.episode.completion_ids

    def turn_limit(self, state: EpisodeState) -> int:
        """Tokens this turn may generate: the per-turn cap, or what is left of the budget (the episode's in the
        episode layout, one reply's in the step layout)."""
        used = 0 if self.step_layout else len(state.episode.completion_ids)
        return min(self.settings.max_turn_tokens, self.settings.max_completion_length - used)

    def _step_prompt(self, episode: Episode) -> list[int]:
        """The step layout's prompt for the turn that follows ``episode.messages`` (which ends with a user message)."""
        messages, turn = episode.messages, episode.num_turns
        first = max(0, turn - self.settings.history_turns)
        history = [(messages[1 + 2 * j]["content"], messages[2 + 2 * j]["content"]) for j in range(first, turn)]
        content = self.prompts.step_user(messages[1]["content"], turn, history, messages[-1]["content"])
        user = {"role": "user", "content": content}
        return self.chat.render([self.system, user], add_generation_prompt=True)

    def reply_ids(self, text: str) -> list[int]:
        """A reply typed as text (a human in the demo) as the token ids a model would have ended with EOS."""
        return list(self.tokenizer.encode(text, add_special_tokens=False)) + [self.eos]

    def apply_reply(self, state: EpisodeState, ids: list[int], entropies: Sequence[float] | None) -> TurnRecord:
        """Record a model reply (cut to the turn's limit and first EOS) and parse its action.

        A malformed reply counts as an invalid action and its format-error feedback is set on the record; otherwise
        ``record.action`` is what to send to the environment, and :meth:`apply_result` applies the answer.
        """
        episode, turn = state.episode, state.episode.num_turns
        state.turn_starts.append(state.snapshot())
        if self.step_layout:
            episode.turn_prompt_ids.append(state.step_prompt_ids)
        ids = list(ids)
        ids = ids[: ids.index(self.eos) + 1] if self.eos in ids else ids
        ids = ids[: self.turn_limit(state)]
        token_entropies = None if entropies is None else [float(h) for h in entropies[: len(ids)]]
        state.append(ids, 1, turn, token_entropies)
        episode.num_turns += 1
        reply = self.tokenizer.decode(ids[:-1] if ids and ids[-1] == self.eos else ids, skip_special_tokens=False)
        episode.messages.append({"role": "assistant", "content": reply})
        action = parse_action(reply, self.prompts.style, self.tokenizer.eos_token)
        record = TurnRecord(state.slot, turn, reply, action, token_entropies, episode)
        if action is None:
            episode.num_invalid_actions += 1
            record.feedback = self.prompts.format_error(state.admissible_actions)
        else:
            episode.actions.append(action)
        return record

    def apply_result(self, state: EpisodeState, record: TurnRecord, result: StepResult | None) -> None:
        """Apply the env's answer to the turn's action (None when the reply was malformed and nothing was sent), then
        end the episode or append the next observation turn."""
        episode = state.episode
        if result is not None:
            if result.error is not None:
                state.finish("env_error", result.error)
                record.done = True
                return
            info = result.info
            record.reward = float(result.reward)
            state.env_observation = result.observation
            state.admissible_actions = list(info.get("admissible_actions") or [])
            episode.won = bool(info.get("won", False))
            episode.score = float(info.get("score", 0.0))
            if info.get("invalid_action", False):
                episode.num_invalid_actions += 1
            record.feedback = self.prompts.observation(result.observation, state.admissible_actions)
            if result.done:
                state.finish("won" if episode.won else "lost")
        assert record.feedback is not None
        episode.messages.append({"role": "user", "content": record.feedback})
        if state.active:
            self._continue(state)
        record.done = not state.active

    def _continue(self, state: EpisodeState) -> None:
        episode = state.episode
        if episode.num_turns >= self.settings.max_turns:
            state.finish("max_turns")
            return
        if self.step_layout:  # the observation goes into the next turn's prompt, not into the completion
            state.step_prompt_ids = self._step_prompt(episode)
            return
        # The completion ends with the last reply here; one cut before its EOS is closed as the template closes it.
        closing = [] if episode.completion_ids[-1] == self.eos else self.chat.end_of_turn
        ids = closing + self.chat.observation(episode.messages[-1]["content"])
        if len(episode.completion_ids) + len(ids) + 1 > self.settings.max_completion_length:
            state.finish("token_budget")
            return
        state.append(ids, 0, -1, [0.0] * len(ids))

    def play_turn(self, states: Sequence[EpisodeState], pool: EnvPool, generate_fn: GenerateFn) -> list[TurnRecord]:
        """One lockstep turn of every given (active) episode: one generation call, one batched env step."""
        limits = [self.turn_limit(state) for state in states]
        generated, entropies = generate_fn([self.context(state) for state in states], max(limits))
        check_generation(generated, entropies, len(states), max(limits))
        records = [
            self.apply_reply(state, generated[i], None if entropies is None else entropies[i])
            for i, state in enumerate(states)
        ]
        stepping = [i for i, record in enumerate(records) if record.action is not None]
        requests = [(states[i].slot, records[i].action) for i in stepping]
        results = pool.step(requests) if requests else []  # type: ignore[arg-type]
        if len(results) != len(requests):
            raise RuntimeError(f"EnvPool.step returned {len(results)} results for {len(requests)} requests.")
        answers: dict[int, StepResult] = dict(zip(stepping, results))
        for i, (state, record) in enumerate(zip(states, records)):
            self.apply_result(state, record, answers.get(i))
        return records

    # -- the end -----------------------------------------------------------------------------------------------------

    def finalize(self, state: EpisodeState) -> Episode:
        """Score the finished episode: success or score, minus the invalid-action penalty; an env failure scores 0."""
        settings, episode = self.settings, state.episode
        if not state.has_entropies:
            episode.entropies = None
        if episode.error is not None:
            episode.won = False
            outcome = 0.0
        elif settings.reward_mode == "success":
            outcome = 1.0 if episode.won else 0.0
        else:
            outcome = episode.score
        episode.reward = outcome - settings.invalid_action_penalty * episode.num_invalid_actions
        return episode


def check_generation(
    generated: list[list[int]], entropies: list[list[float]] | None, num_prompts: int, max_new_tokens: int
) -> None:
    """Fail loudly on a backend that breaks the GenerateFn contract: silent fixes would corrupt training tokens."""
    if len(generated) != num_prompts:
        raise ValueError(f"generate_fn returned {len(generated)} completions for {num_prompts} prompts.")
    if entropies is not None and len(entropies) != num_prompts:
        raise ValueError(f"generate_fn returned entropies for {len(entropies)} of {num_prompts} completions.")
    for i, ids in enumerate(generated):
        if not ids:
            raise ValueError(f"generate_fn returned no tokens for prompt {i}; every turn needs at least one token.")
        if len(ids) > max_new_tokens:
            raise ValueError(f"generate_fn returned {len(ids)} tokens for prompt {i}, over max_new_tokens.")
        if entropies is not None and len(entropies[i]) < len(ids):
            raise ValueError(f"generate_fn returned {len(entropies[i])} entropies for {len(ids)} tokens (prompt {i}).")
