"""Batched lockstep multi-turn episode runner: the agent plays text environments turn by turn.

All episodes of a batch advance together: every turn makes ONE batched ``generate_fn`` call over the still-active
episodes and ONE :meth:`EnvPool.step` call over those whose reply parsed into an action. The generation backend is a
plain function, so the runner does not depend on the trainer (transformers ``generate``, vLLM and scripted test
policies all plug in the same way).

Each episode becomes one prompt and one completion. The trainer trains on these tokens, so they are built
token-exactly: the model's generated ids are kept as generated (never decoded and re-encoded), and each observation
turn is the chat template's own rendering of the next user message plus the generation header, computed as a suffix
the way TRL does for tool results. ``prompt_ids + completion_ids`` therefore equals the chat template's rendering of
the conversation, while ``env_mask`` marks the model's tokens (1) against the observation tokens (0) and ``step_ids``
numbers the model turns, which is what step-level advantage modulation needs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .envs.pool import EnvPool, StepResult

__all__ = [
    "PROMPT_STYLES",
    "REWARD_MODES",
    "AgentPrompts",
    "Episode",
    "GenerateFn",
    "RolloutSettings",
    "TurnRecord",
    "iter_episodes",
    "parse_action",
    "run_episodes",
]

PROMPT_STYLES = ("react", "plain")
REWARD_MODES = ("success", "score")

#: ``(prompt token ids of each active episode, max_new_tokens) -> (generated ids per episode, per-token entropies of
#: those ids per episode or None)``. Generated ids end with the tokenizer's EOS when the model finished its turn and
#: must not carry padding; ids after the first EOS are ignored.
GenerateFn = Callable[[list[list[int]], int], tuple[list[list[int]], list[list[float]] | None]]

_ACTION_RE = re.compile(r"<action>(.*?)</action>", re.DOTALL)


@dataclass
class RolloutSettings:
    """The rollout knobs, mirroring :class:`~trl_empg.EMPGConfig`'s fields and defaults, so the runner needs no config.

    ``max_completion_tokens`` bounds the whole completion (model and observation tokens), like GRPO's
    ``max_completion_length``, so the trainer's padded batch never exceeds what it budgeted for.
    """

    max_turns: int = 20
    max_turn_tokens: int = 128
    max_completion_tokens: int = 512
    prompt_style: str = "react"
    show_admissible_actions: bool = True
    reward_mode: str = "success"
    invalid_action_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"Unknown prompt_style {self.prompt_style!r}; expected one of {list(PROMPT_STYLES)}.")
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"Unknown reward_mode {self.reward_mode!r}; expected one of {list(REWARD_MODES)}.")
        for name in ("max_turns", "max_turn_tokens", "max_completion_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.invalid_action_penalty < 0:
            raise ValueError(f"invalid_action_penalty must be >= 0, got {self.invalid_action_penalty}.")

    @classmethod
    def from_config(cls, config: Any) -> RolloutSettings:
        """Read the settings off an :class:`~trl_empg.EMPGConfig` (its ``max_completion_length`` is the budget)."""
        return cls(
            max_turns=config.max_turns,
            max_turn_tokens=config.max_turn_tokens,
            max_completion_tokens=config.max_completion_length,
            prompt_style=config.prompt_style,
            show_admissible_actions=config.show_admissible_actions,
            reward_mode=config.reward_mode,
            invalid_action_penalty=config.invalid_action_penalty,
        )


@dataclass
class Episode:
    """One played episode: the token-exact training sample plus its outcome and conversation for logging."""

    #: System + first observation rendered with the chat template, ending with the assistant generation header.
    prompt_ids: list[int]
    #: Model turn 0, observation turn 1, model turn 1, ...; always ends with a model turn (empty if none was played).
    completion_ids: list[int] = field(default_factory=list)
    #: 1 on model tokens, 0 on observation tokens.
    env_mask: list[int] = field(default_factory=list)
    #: The turn index on model tokens, -1 on observation tokens.
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


@dataclass
class TurnRecord:
    """One model turn of one episode, as :func:`iter_episodes` reports it once the environment has answered.

    Lets a viewer (the demo Space, a live monitor) show the agent turn by turn without re-deriving what the runner
    already knows: which text the model said, what was sent to the env and what the agent will see next.
    """

    slot: int
    turn: int
    #: The model's reply, decoded without its EOS token.
    reply: str
    #: The parsed action sent to the environment; None when the reply was malformed (nothing was sent).
    action: str | None
    #: Generation entropies of the turn's tokens (EOS included); None when the backend gave none.
    entropies: list[float] | None
    #: The live episode: ``won``, ``score``, ``error`` and ``truncated`` are current; ``reward`` and ``entropies``
    #: are final only once the generator is exhausted.
    episode: Episode
    #: The environment's reward for this step; 0.0 when nothing was sent or the environment failed.
    reward: float = 0.0
    #: The next user message (observation or format-error feedback); None when the environment failed.
    feedback: str | None = None
    #: The episode ended with this turn (environment done, failure or truncation).
    done: bool = False


class AgentPrompts:
    """The texts the agent sees: system prompt, first user message, observation turns and format-error feedback.

    Kept in one small class so the trainer, evaluation and the demo Space show the agent exactly the same words; a
    subclass can change the wording without touching the runner.
    """

    def __init__(self, style: str = "react", show_admissible_actions: bool = True, task_description: str = "") -> None:
        if style not in PROMPT_STYLES:
            raise ValueError(f"Unknown prompt_style {style!r}; expected one of {list(PROMPT_STYLES)}.")
        self.style = style
        self.show_admissible_actions = show_admissible_actions
        self.task_description = task_description.strip()

    def system(self) -> str:
        """The system prompt: the task family and the reply format the parser expects."""
        task = f" {self.task_description}" if self.task_description else ""
        intro = f"You are an agent playing a text-based game.{task} Each turn you see an observation."
        if self.style == "react":
            return (
                f"{intro} First reason about what to do inside <think>...</think>, then give exactly one action "
                "inside <action>...</action>, e.g. <think>your reasoning</think><action>your action</action>."
            )
        return f"{intro} Reply with exactly one action and nothing else."

    def expected_format(self) -> str:
        """One sentence saying what a well-formed reply looks like, repeated when the agent gets it wrong."""
        if self.style == "react":
            return "Reason inside <think>...</think>, then give exactly one action inside <action>...</action>."
        return "Reply with exactly one action and nothing else."

    def observation(self, observation: str, admissible_actions: Sequence[str]) -> str:
        """A user message carrying the environment's observation (and the admissible actions when shown)."""
        text = observation.strip()
        if self.show_admissible_actions and admissible_actions:
            text = f"{text}\n\nAdmissible actions: {', '.join(admissible_actions)}"
        return text

    def first_user(self, observation: str, admissible_actions: Sequence[str]) -> str:
        """The first user message: the task's initial observation."""
        return self.observation(observation, admissible_actions)

    def format_error(self, admissible_actions: Sequence[str]) -> str:
        """Feedback for a reply the parser could not read; it is not sent to the environment."""
        return self.observation(f"Invalid reply format. {self.expected_format()}", admissible_actions)


def parse_action(text: str, style: str, end_token: str = "<|im_end|>") -> str | None:
    """The action in a model reply, or None when the reply is malformed.

    ReAct: the content of the last ``<action>...</action>`` (the model may revise itself while reasoning); plain: the
    whole reply. Both are stripped of ``end_token`` and whitespace; an empty action is malformed.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"Unknown prompt_style {style!r}; expected one of {list(PROMPT_STYLES)}.")
    text = text.replace(end_token, "") if end_token else text
    if style == "react":
        matches = _ACTION_RE.findall(text)
        action = matches[-1].strip() if matches else ""
    else:
        action = text.strip()
    return action or None


class _ObservationTokens:
    """Token ids of an observation turn, as the chat template renders it after an assistant turn.

    Same method as TRL's tool-result suffix: render a dummy conversation with and without the extra user message plus
    the generation header, trim the shorter one at its last EOS (templates may put a newline after EOS) and take the
    difference. The dummy prefix is rendered once; each observation costs one template rendering.
    """

    _DUMMY = [
        {"role": "system", "content": "dummy"},
        {"role": "user", "content": "dummy"},
        {"role": "assistant", "content": "dummy"},
    ]

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        prefix = _render(tokenizer, self._DUMMY, add_generation_prompt=False)
        eos_positions = [i for i, token in enumerate(prefix) if token == tokenizer.eos_token_id]
        if not eos_positions:
            raise ValueError(
                "The chat template does not end an assistant turn with the tokenizer's EOS token "
                f"({tokenizer.eos_token!r}); multi-turn rollouts need it to separate the model's turns."
            )
        self.prefix = prefix[: eos_positions[-1] + 1]
        self("probe")  # Fail before any episode starts if the template cannot be extended this way.

    def __call__(self, content: str) -> list[int]:
        full = _render(
            self.tokenizer, [*self._DUMMY, {"role": "user", "content": content}], add_generation_prompt=True
        )
        if full[: len(self.prefix)] != self.prefix:
            raise ValueError(
                "The chat template is not prefix-preserving: rendering a conversation with one more user message "
                "changes the tokens before it, so observation turns cannot be appended to the model's tokens."
            )
        suffix = full[len(self.prefix) :]
        if not suffix:
            raise ValueError("The chat template rendered an observation turn into no tokens.")
        return suffix


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
    )


class _Running:
    """Book-keeping of one episode while it is played."""

    def __init__(self, slot: int, episode: Episode, admissible_actions: list[str]) -> None:
        self.slot = slot
        self.episode = episode
        self.admissible_actions = admissible_actions
        self.active = True
        self.has_entropies = True

    def finish(self, *, truncated: bool = False, error: str | None = None) -> None:
        self.active = False
        self.episode.truncated = truncated
        self.episode.error = error

    def append(self, ids: list[int], mask: int, step: int, entropies: list[float] | None) -> None:
        episode = self.episode
        episode.completion_ids.extend(ids)
        episode.env_mask.extend([mask] * len(ids))
        episode.step_ids.extend([step] * len(ids))
        if entropies is None:
            self.has_entropies = False
        elif self.has_entropies:
            episode.entropies.extend(entropies)


def run_episodes(
    pool: EnvPool,
    tasks: Sequence[tuple[int, str]],
    tokenizer: Any,
    generate_fn: GenerateFn,
    settings: RolloutSettings,
    prompts: AgentPrompts | None = None,
) -> list[Episode]:
    """Play one episode per task (``(task seed, split)``, episode i in pool slot i), all in lockstep.

    :func:`iter_episodes` run to the end: see there for how turns, budgets and failures are handled.
    """
    turns = iter_episodes(pool, tasks, tokenizer, generate_fn, settings, prompts)
    while True:
        try:
            next(turns)
        except StopIteration as finished:
            return finished.value


def iter_episodes(
    pool: EnvPool,
    tasks: Sequence[tuple[int, str]],
    tokenizer: Any,
    generate_fn: GenerateFn,
    settings: RolloutSettings,
    prompts: AgentPrompts | None = None,
) -> Generator[list[TurnRecord], None, list[Episode]]:
    """Play one episode per task like :func:`run_episodes`, yielding each turn's records as soon as it is played.

    Every turn yields one :class:`TurnRecord` per episode that played it, in slot order; the generator returns the
    episodes (``StopIteration.value``), scored. Viewers that show an episode while it runs use this; training and
    evaluation call :func:`run_episodes`, which is this generator exhausted, so both see the very same episodes.

    ``prompts`` defaults to the settings' style without a task description. One generate call per turn gets
    ``min(max_turn_tokens, remaining budget)`` of the neediest episode; each episode keeps only what fits its own
    budget (a prefix of a sample is a sample of the shorter turn, so nothing is biased). An episode ends when the
    env says done, when it fails (``error``, that episode only), or as ``truncated`` when ``max_turns`` is reached
    or the budget cannot hold another observation turn plus one model token; ``len(completion_ids)`` never exceeds
    ``max_completion_tokens``.
    """
    prompts = prompts or AgentPrompts(settings.prompt_style, settings.show_admissible_actions)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no EOS token; multi-turn rollouts need it to end the model's turns.")
    observation_tokens = _ObservationTokens(tokenizer)
    budget = settings.max_completion_tokens
    system = {"role": "system", "content": prompts.system()}

    resets = pool.reset([(slot, seed, split) for slot, (seed, split) in enumerate(tasks)])
    if len(resets) != len(tasks):
        raise RuntimeError(f"EnvPool.reset returned {len(resets)} results for {len(tasks)} requests.")
    running: list[_Running] = []
    for slot, result in enumerate(resets):
        admissible = list(result.info.get("admissible_actions") or [])
        user = {"role": "user", "content": prompts.first_user(result.observation, admissible)}
        prompt_ids = _render(tokenizer, [system, user], add_generation_prompt=True)
        state = _Running(slot, Episode(prompt_ids=prompt_ids, messages=[system, user]), admissible)
        if result.error is not None:
            state.finish(error=result.error)
        running.append(state)

    for turn in range(settings.max_turns):
        active = [state for state in running if state.active]
        if not active:
            break
        limits = [min(settings.max_turn_tokens, budget - len(state.episode.completion_ids)) for state in active]
        generated, entropies = generate_fn(
            [state.episode.prompt_ids + state.episode.completion_ids for state in active], max(limits)
        )
        _check_generation(generated, entropies, len(active), max(limits))

        to_step: list[tuple[int, str]] = []
        stepping: list[_Running] = []
        feedback: dict[int, str] = {}
        records: dict[int, TurnRecord] = {}
        for i, (state, limit) in enumerate(zip(active, limits)):
            ids = _end_of_turn(generated[i], eos)[:limit]
            token_entropies = None if entropies is None else [float(h) for h in entropies[i][: len(ids)]]
            state.append(ids, 1, turn, token_entropies)
            episode = state.episode
            episode.num_turns += 1
            reply = tokenizer.decode(ids[:-1] if ids[-1] == eos else ids, skip_special_tokens=False)
            episode.messages.append({"role": "assistant", "content": reply})
            action = parse_action(reply, prompts.style, tokenizer.eos_token)
            records[state.slot] = TurnRecord(state.slot, turn, reply, action, token_entropies, episode)
            if action is None:
                episode.num_invalid_actions += 1
                feedback[state.slot] = prompts.format_error(state.admissible_actions)
            else:
                episode.actions.append(action)
                to_step.append((state.slot, action))
                stepping.append(state)

        results: list[StepResult] = pool.step(to_step) if to_step else []
        if len(results) != len(to_step):
            raise RuntimeError(f"EnvPool.step returned {len(results)} results for {len(to_step)} requests.")
        for state, result in zip(stepping, results):
            if result.error is not None:
                state.finish(error=result.error)
                continue
            episode = state.episode
            info = result.info
            records[state.slot].reward = float(result.reward)
            state.admissible_actions = list(info.get("admissible_actions") or [])
            episode.won = bool(info.get("won", False))
            episode.score = float(info.get("score", 0.0))
            if info.get("invalid_action", False):
                episode.num_invalid_actions += 1
            feedback[state.slot] = prompts.observation(result.observation, state.admissible_actions)
            if result.done:
                state.finish()

        for state in active:
            if state.episode.error is not None:
                continue
            content = feedback[state.slot]
            state.episode.messages.append({"role": "user", "content": content})
            if not state.active:
                continue
            if turn + 1 >= settings.max_turns:
                state.finish(truncated=True)
                continue
            ids = observation_tokens(content)
            if len(state.episode.completion_ids) + len(ids) + 1 > budget:
                state.finish(truncated=True)
                continue
            state.append(ids, 0, -1, [0.0] * len(ids))

        for state in active:
            records[state.slot].feedback = feedback.get(state.slot)
            records[state.slot].done = not state.active
        yield [records[state.slot] for state in active]

    for state in running:
        _score(state, settings)
    return [state.episode for state in running]


def _check_generation(
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


def _end_of_turn(ids: list[int], eos: int) -> list[int]:
    """The generated ids up to and including the first EOS (later ids are padding or stray tokens)."""
    ids = list(ids)
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def _score(state: _Running, settings: RolloutSettings) -> None:
    episode = state.episode
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
