"""The one definition of every environment and rollout setting, with its default and help.

:class:`EnvArguments` (which environment, how it is stepped) and :class:`RolloutArguments` (how an episode is played
and scored) are dataclasses in TRL's argument style. :class:`~trl_empg.EMPGConfig` inherits both, and every
subcommand that plays episodes (``sft``, ``eval``, ``quickstart``) parses the same two with ``TrlParser``, so a
setting has one name, one default and one check wherever it is used, from a recipe to the demo Space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PROMPT_STYLES",
    "REWARD_MODES",
    "ROLLOUT_LAYOUTS",
    "EnvArguments",
    "RolloutArguments",
    "check_choice",
    "parse_env_kwargs",
]

PROMPT_STYLES = ("react", "plain")
REWARD_MODES = ("success", "score")
#: "episode": one completion per episode, observation tokens masked (EMPG's own pseudocode); "step": one sample per
#: model turn with a bounded-history prompt (verl-agent's memory, the setup of the paper's ALFWorld/WebShop baselines).
ROLLOUT_LAYOUTS = ("episode", "step")


def parse_env_kwargs(value: Any, name: str = "env_kwargs") -> dict[str, Any]:
    """An environment's keyword arguments from a dict, a JSON object string (CLI, YAML) or None."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name} must be a JSON object, got {value!r}: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object (a dict), got {type(value).__name__}: {value!r}.")
    return dict(value)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {list(choices)}.")


def _continue_post_init(instance: Any, cls: type) -> None:
    # Cooperative __post_init__: these dataclasses are mixed into EMPGConfig next to GRPOConfig.
    parent = getattr(super(cls, instance), "__post_init__", None)
    if parent is not None:
        parent()


@dataclass
class EnvArguments:
    """Which text environment episodes are played on, and how it is stepped."""

    env_id: str | None = field(
        default=None,
        metadata={
            "help": "Text environment for multi-turn rollouts, e.g. 'twx:coin', 'scienceworld:boil', 'alfworld', "
            "'textworld:cooking', 'webshop', 'search' or 'package.module:Class'. In training, None means single-turn "
            "prompts or TRL tool environments."
        },
    )
    env_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments of the environment constructor: a dict, or a JSON object on the CLI."},
    )
    env_workers: int = field(
        default=0,
        metadata={"help": "Worker processes stepping environments in parallel (0: in the calling process)."},
    )
    env_step_timeout: float = field(
        default=30.0,
        metadata={"help": "Seconds an environment step may take before the episode is ended as a recorded failure."},
    )
    env_reset_timeout: float = field(
        default=120.0,
        metadata={
            "help": "Seconds a reset may take (it may build the environment, e.g. start a JVM) before the episode is "
            "ended as a recorded failure; also a fresh worker's start-up allowance."
        },
    )

    def __post_init__(self) -> None:
        self.env_kwargs = parse_env_kwargs(self.env_kwargs)
        if self.env_workers < 0:
            raise ValueError(f"env_workers must be >= 0, got {self.env_workers}.")
        if self.env_step_timeout <= 0:
            raise ValueError(f"env_step_timeout must be > 0, got {self.env_step_timeout}.")
        if self.env_reset_timeout <= 0:
            raise ValueError(f"env_reset_timeout must be > 0, got {self.env_reset_timeout}.")
        _continue_post_init(self, EnvArguments)


@dataclass
class RolloutArguments:
    """How an episode is played, laid out for training, and scored."""

    max_turns: int = field(
        default=20,
        metadata={"help": "Maximum agent turns per episode; episodes that reach it end as truncated."},
    )
    max_turn_tokens: int = field(
        default=128,
        metadata={"help": "Maximum tokens the agent may generate in one turn."},
    )
    max_completion_length: int = field(
        default=512,
        metadata={
            "help": "Token budget of one completion (GRPO's max_completion_length). Episode layout: the whole "
            "episode after the first prompt, model and observation tokens together; an episode that cannot fit "
            "another turn ends as truncated. Step layout: one turn's reply."
        },
    )
    prompt_style: str = field(
        default="react",
        metadata={
            "help": "Agent prompt: 'react' (reasoning in <think>, action in <action>) or 'plain' (the reply is the "
            "action)."
        },
    )
    show_admissible_actions: bool = field(
        default=True,
        metadata={"help": "List the environment's admissible actions in each observation when it provides them."},
    )
    reward_mode: str = field(
        default="success",
        metadata={"help": "Episode reward: 'success' (1 if won else 0) or 'score' (the env's score in [0, 1])."},
    )
    invalid_action_penalty: float = field(
        default=0.0,
        metadata={"help": "Subtracted from the episode reward for every malformed or inadmissible action."},
    )
    reuse_kv_cache: bool = field(
        default=True,
        metadata={
            "help": "Keep each live episode's KV cache from one turn to the next (transformers generate backend), so "
            "a turn prefills only the tokens appended since the last one; same results as re-encoding. False "
            "re-encodes the whole conversation every turn. vLLM uses its own prefix caching instead."
        },
    )
    rollout_layout: str = field(
        default="episode",
        metadata={
            "help": "'episode': one completion per episode, observation tokens masked, steps = the model's turns "
            "(EMPG's pseudocode; context grows with the horizon). 'step': one training sample per model turn whose "
            "prompt holds the system prompt, the task, the last history_turns (observation, reply) pairs and the "
            "current observation (verl-agent's memory; constant length per turn)."
        },
    )
    history_turns: int = field(
        default=2,
        metadata={"help": "Step layout: earlier (observation, reply) pairs in each prompt (verl-agent, ALFWorld: 2)."},
    )

    def __post_init__(self) -> None:
        check_choice("prompt_style", self.prompt_style, PROMPT_STYLES)
        check_choice("reward_mode", self.reward_mode, REWARD_MODES)
        check_choice("rollout_layout", self.rollout_layout, ROLLOUT_LAYOUTS)
        if self.history_turns < 0:
            raise ValueError(f"history_turns must be >= 0, got {self.history_turns}.")
        for name in ("max_turns", "max_turn_tokens", "max_completion_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.invalid_action_penalty < 0:
            raise ValueError(f"invalid_action_penalty must be >= 0, got {self.invalid_action_penalty}.")
        _continue_post_init(self, RolloutArguments)
