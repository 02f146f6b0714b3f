"""What the Space's operator allows visitors to do, and the checks every visitor request passes first.

Every Gradio endpoint is a public HTTP API, so everything a visitor sends is untrusted. A visitor may play:

- environments of the built-in families (``twx:<game>``, ``scienceworld:<task>``, ``alfworld``, ``textworld:<name>``,
  ``webshop``, ``search``): the family's adapter checks the name against its own list, and nothing is imported from
  the id. ``package.module:Class`` ids (code to run, like a recipe) only when the operator lists them;
- environment options only from :data:`VISITOR_OPTIONS`: the documented keys of each built-in family, with typed,
  bounded values (no paths, file names or code); options for an operator's own environments are the operator's;
- checkpoints from the operator's menu; typed Hub model ids only when the operator allows them, never local paths,
  never with ``trust_remote_code``, and only under a size cap;
- within the operator's limits on turns, tokens, compared tasks, live play sessions, queue and time per request.

The operator's settings are :class:`HostPolicy` fields, read from ``TRL_EMPG_SPACE_<FIELD>`` environment variables at
start and overridden by ``app.py``'s flags. One Space process serves one policy: :func:`configure` installs it and the
modules that build environments or load checkpoints ask :func:`active_policy` (so no path can skip the checks).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from agent_settings import DemoSettings, SpaceError

from trl_empg.envs import ENV_FAMILIES, known_env_ids

ENV_PREFIX = "TRL_EMPG_SPACE_"
#: The built-in families as a visitor writes them (``twx:<name>``, ``alfworld``): the registry's ids but user classes.
BUILTIN_ENV_IDS = tuple(env_id for env_id in known_env_ids() if env_id.partition(":")[0] in ENV_FAMILIES)
#: Longest env id, checkpoint id, option text or typed move a visitor may send (characters).
MAX_TEXT_LENGTH = 2000


# -- environment options a visitor may set ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IntOption:
    low: int
    high: int

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise SpaceError(f"Option {name} must be an integer from {self.low} to {self.high}, got {value!r}.")
        return value


@dataclass(frozen=True)
class ChoiceOption:
    choices: tuple[Any, ...]

    def check(self, name: str, value: Any) -> Any:
        if isinstance(value, bool) or value not in self.choices:
            raise SpaceError(f"Option {name} must be one of {list(self.choices)}, got {value!r}.")
        return value


@dataclass(frozen=True)
class FlagOption:
    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise SpaceError(f"Option {name} must be true or false, got {value!r}.")
        return value


@dataclass(frozen=True)
class MappingOption:
    """A JSON object whose keys are themselves bounded options (TextWorldExpress' ``game_params``)."""

    keys: Mapping[str, IntOption]

    def check(self, name: str, value: Any) -> dict[str, int]:
        if not isinstance(value, Mapping):
            raise SpaceError(f"Option {name} must be a JSON object with keys from {sorted(self.keys)}.")
        return check_options(value, self.keys, f"{name}.")


Option = IntOption | ChoiceOption | FlagOption | MappingOption

#: Per built-in family, the environment options a visitor may set (each family's documented keyword arguments,
#: bounded so that one request stays small). Paths, data files, caches, JVM sizes and generator seeds (which would
#: write new data to disk) are left to the operator.
VISITOR_OPTIONS: dict[str, dict[str, Option]] = {
    "twx": {
        "game_params": MappingOption(
            {
                "numLocations": IntOption(1, 12),
                "includeDoors": IntOption(0, 1),
                "numDistractorItems": IntOption(0, 10),
                "numIngredients": IntOption(1, 5),
                "numItemsToPutAway": IntOption(1, 10),
                "maxDistanceApart": IntOption(1, 8),
                "maxDistractorItemsPerLocation": IntOption(0, 3),
                "limitInventorySize": IntOption(0, 1),
            }
        ),
        "max_steps": IntOption(1, 100),
        "gold_plan_draws": IntOption(1, 16),
    },
    "scienceworld": {
        "simplification": ChoiceOption(("easy", "")),
        "max_steps": IntOption(1, 100),
        "admissible_actions": FlagOption(),
    },
    "alfworld": {"max_steps": IntOption(1, 100), "mode": ChoiceOption(("auto", "official", "generated"))},
    "textworld": {"max_steps": IntOption(1, 100)},
    "webshop": {"max_steps": IntOption(1, 30)},
    "search": {
        "top_k": IntOption(1, 10),
        "max_turns": IntOption(1, 10),
        "reward_mode": ChoiceOption(("em", "f1")),
        "question_set": ChoiceOption(("all", "id", "ood")),
    },
}


def check_options(options: Mapping[str, Any], allowed: Mapping[str, Option], prefix: str = "") -> dict[str, Any]:
    """``options`` with every key allowed and every value in bounds, or a :class:`SpaceError` naming what is."""
    unknown = sorted(str(key) for key in options if key not in allowed)
    if unknown:
        raise SpaceError(
            f"Environment option(s) {[prefix + key for key in unknown]} cannot be set here; allowed: "
            f"{[prefix + key for key in allowed] or 'none'}."
        )
    return {key: allowed[key].check(prefix + key, value) for key, value in options.items()}


# -- the operator's settings ------------------------------------------------------------------------------------------


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class HostPolicy:
    """The operator's settings: what visitors may play and the limits of one request."""

    envs: tuple[str, ...] = _setting(
        (),
        "Env ids offered beyond the built-in families, e.g. 'my_pkg.envs:MyEnv' (code the Space will run, like a "
        "recipe: list only what you trust). Comma-separated in the environment variable.",
    )
    checkpoints: tuple[str, ...] = _setting(
        (), "Checkpoints (local directories or Hub ids) offered first in the menu. Comma-separated."
    )
    allow_hub_ids: bool = _setting(
        False,
        "Let visitors type a Hub model id that is not in the menu (never a local path; loaded without "
        "trust_remote_code; at most max_hub_model_mb).",
    )
    max_hub_model_mb: int = _setting(1024, "Largest typed Hub model a visitor may load, in MB (its files summed).")
    max_turns: int = _setting(50, "Most agent turns per episode a visitor may ask for.")
    max_turn_tokens: int = _setting(256, "Most tokens per turn a visitor may ask for.")
    max_completion_length: int = _setting(8192, "Largest episode token budget a visitor may ask for.")
    max_compare_tasks: int = _setting(20, "Most tasks one comparison may play (per checkpoint).")
    max_sessions: int = _setting(8, "Most 'Play yourself' games open at once (each holds an environment process).")
    session_ttl_s: int = _setting(1800, "Seconds an idle 'Play yourself' game is kept before it is closed.")
    concurrency_limit: int = _setting(1, "Requests that run an agent at the same time (Gradio's concurrency limit).")
    max_queue: int = _setting(16, "Requests waiting in the queue before new ones are refused (Gradio's max_size).")
    request_time_limit_s: float = _setting(300.0, "Seconds one request may generate for before it is stopped.")

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 1:
                raise ValueError(f"Space setting {item.name} must be >= 1, got {value}.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> HostPolicy:
        """The settings from ``TRL_EMPG_SPACE_<FIELD>`` variables (unset ones default), then ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            text = environ.get(ENV_PREFIX + item.name.upper())
            if text is not None and text.strip():
                values[item.name] = parse_setting(item.name, item.default, text)
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    # -- checks -------------------------------------------------------------------------------------------------------

    def check_env(self, env_id: Any, env_kwargs: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """The env id and options of a request, once allowed; a :class:`SpaceError` saying what is allowed if not.

        Runs before anything is imported or built.
        """
        if not isinstance(env_id, str) or not env_id.strip():
            raise SpaceError("Choose an environment.")
        env_id = env_id.strip()
        if len(env_id) > 200:
            raise SpaceError("That environment id is too long (at most 200 characters).")
        options = dict(env_kwargs or {})
        family = env_id.partition(":")[0]
        if env_id in self.envs:
            if options:
                raise SpaceError(f"The options of {env_id!r} are set by this Space's operator; leave them empty.")
            return env_id, options
        if family not in ENV_FAMILIES:
            raise SpaceError(
                f"The environment {env_id!r} is not offered here. Built-in families: "
                f"{', '.join(BUILTIN_ENV_IDS)}" + (f"; also: {', '.join(self.envs)}" if self.envs else "") + "."
            )
        return env_id, check_options(options, VISITOR_OPTIONS.get(family, {}))

    def check_settings(self, settings: DemoSettings) -> DemoSettings:
        """The request's settings within the operator's bounds (the bound is in the message)."""
        for name in ("max_turns", "max_turn_tokens", "max_completion_length"):
            value, bound = getattr(settings.rollout, name), getattr(self, name)
            if value > bound:
                raise SpaceError(f"Setting {name} is at most {bound} on this Space, got {value}.")
        return settings

    def check_compare_tasks(self, num_tasks: Any) -> int:
        try:
            count = float(num_tasks)
        except (TypeError, ValueError):
            raise SpaceError(f"The number of tasks must be an integer, got {num_tasks!r}.") from None
        if not count.is_integer() or not 1 <= count <= self.max_compare_tasks:
            raise SpaceError(f"Compare on 1 to {self.max_compare_tasks} tasks, got {num_tasks!r}.")
        return int(count)

    def deadline(self) -> Deadline:
        return Deadline(time.monotonic() + self.request_time_limit_s, self.request_time_limit_s)


def parse_setting(name: str, default: Any, text: str) -> Any:
    """A setting's value from its environment variable, by the type of its default."""
    try:
        if isinstance(default, tuple):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if isinstance(default, bool):
            lowered = text.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return lowered in ("1", "true", "yes")
        return type(default)(text.strip())
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()} must be {type(default).__name__}, got {text!r}.") from None


# -- time and sessions ------------------------------------------------------------------------------------------------


class RequestTimeLimit(SpaceError):
    """A request generated for longer than the operator's ``request_time_limit_s``."""


@dataclass(frozen=True)
class Deadline:
    """When a request must stop starting new work: ``at`` on ``clock``, ``seconds`` after it began."""

    at: float
    seconds: float
    clock: Callable[[], float] = time.monotonic

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    def exceeded(self) -> RequestTimeLimit:
        return RequestTimeLimit(
            f"Stopped: this request ran past the Space's time limit of {self.seconds:g} s "
            "(request_time_limit_s, set by its operator)."
        )

    def check(self) -> None:
        if self.clock() >= self.at:
            raise self.exceeded()


class SessionSlots:
    """Counts open 'Play yourself' games against ``max_sessions``."""

    def __init__(self) -> None:
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        return self._open

    def acquire(self, limit: int) -> None:
        with self._lock:
            if self._open >= limit:
                raise SpaceError(
                    f"All {limit} play sessions of this Space are in use (max_sessions, set by its operator); "
                    "try again in a few minutes."
                )
            self._open += 1

    def release(self) -> None:
        with self._lock:
            self._open = max(0, self._open - 1)


SESSIONS = SessionSlots()
_ACTIVE: list[HostPolicy] = []


def configure(policy: HostPolicy) -> HostPolicy:
    """Install the policy every request of this process is checked against."""
    _ACTIVE[:] = [policy]
    return policy


def active_policy() -> HostPolicy:
    """The installed policy; the environment variables' (else the defaults) until :func:`configure` is called."""
    if not _ACTIVE:
        configure(HostPolicy.from_env())
    return _ACTIVE[0]


def check_text(value: Any, what: str) -> str:
    """A visitor's free text, bounded in length."""
    text = "" if value is None else str(value)
    if len(text) > MAX_TEXT_LENGTH:
        raise SpaceError(f"{what} is too long: at most {MAX_TEXT_LENGTH} characters.")
    return text


def policy_flags() -> Sequence[tuple[str, Any, str]]:
    """(field name, default, help) of every operator setting, for the command line."""
    return [(item.name, item.default, str(item.metadata["help"])) for item in fields(HostPolicy)]
