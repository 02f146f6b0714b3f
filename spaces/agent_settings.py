"""The page's "Agent settings": which existing setting each widget edits, and the validated settings of one request.

Nothing here defines a setting. Every widget names the dataclass field it stands for (:class:`Setting`): the rollout
settings are :class:`trl_empg.rollout.RolloutArguments` fields, the environment options are
:class:`~trl_empg.rollout.EnvArguments`' ``env_kwargs`` (parsed by :func:`~trl_empg.rollout.parse_env_kwargs`), the
decoding is ``trl-empg eval``'s (:class:`~trl_empg.workflows.evaluation.EvalArguments`) and EMPG's constants are
:class:`~trl_empg.EMPGConfig`'s. Names, defaults and help texts are read from those fields, so a recipe, a
checkpoint's ``run_config.json`` and the page use the same names, and the checks are the dataclasses' own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, fields
from functools import cached_property
from typing import Any

from trl_empg.rollout import PROMPT_STYLES, EnvArguments, RolloutArguments, parse_env_kwargs
from trl_empg.rollout.policy import SamplingSettings
from trl_empg.training.config import EMPGConfig
from trl_empg.workflows.evaluation import EvalArguments


class SpaceError(Exception):
    """A problem the page reports as a message (bad checkpoint, unknown environment, bad seed) instead of failing."""


def first_line(text: str) -> str:
    """The first non-empty line of an error message (tracebacks and long JSON stay out of the page)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def plural(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@dataclass(frozen=True)
class Setting:
    """One widget of the settings panel: the field ``name`` of the dataclass ``source`` that defines it."""

    name: str
    source: type
    label: str
    #: Also read from a checkpoint's recorded training settings (decoding choices of the page are not).
    trained: bool = True

    @cached_property
    def definition(self) -> Field:
        return next(item for item in fields(self.source) if item.name == self.name)

    @property
    def default(self) -> Any:
        item = self.definition
        return item.default_factory() if item.default is MISSING else item.default  # type: ignore[misc]

    @property
    def help(self) -> str:
        return str(self.definition.metadata.get("help", ""))

    @property
    def kind(self) -> str:
        """ "int", "float", "bool", "str" or "json" (the env kwargs, edited as a JSON object)."""
        # Read off the default, not the annotation: HfArgumentParser (TrlParser) rewrites the annotations of the
        # dataclasses it parses in place (e.g. env_kwargs' `dict | str | None` becomes `str`).
        if self.name == "env_kwargs":
            return "json"
        return type(self.default).__name__

    @property
    def choices(self) -> tuple[str, ...] | None:
        return PROMPT_STYLES if self.name == "prompt_style" else None


#: The settings panel, in widget order (a handler gets the values in this order).
SETTINGS: tuple[Setting, ...] = (
    Setting("prompt_style", RolloutArguments, "prompt style"),
    Setting("show_admissible_actions", RolloutArguments, "show admissible actions"),
    Setting("max_turns", RolloutArguments, "max turns"),
    Setting("max_turn_tokens", RolloutArguments, "tokens/turn"),
    Setting("max_completion_length", RolloutArguments, "episode token budget"),
    Setting("greedy", EvalArguments, "greedy decoding", trained=False),
    Setting("temperature", EvalArguments, "temperature"),
    Setting("seed", EvalArguments, "sampling seed", trained=False),
    Setting("empg_k", EMPGConfig, "EMPG k"),
    Setting("empg_k_future", EMPGConfig, "EMPG k'"),
    Setting("empg_zeta", EMPGConfig, "EMPG zeta"),
    Setting("env_kwargs", EnvArguments, "environment options (JSON keyword arguments, e.g. TWX game parameters)"),
)
SETTING_NAMES = tuple(setting.name for setting in SETTINGS)
_BY_NAME = {setting.name: setting for setting in SETTINGS}

_NOUNS = {"int": "an integer", "float": "a number", "bool": "a boolean", "str": "text"}


def _coerce(setting: Setting, value: Any) -> Any:
    """A widget value as the field's type; Gradio numbers arrive as floats, or None when a box is cleared."""
    if setting.kind == "json":
        try:
            return parse_env_kwargs(value, "The environment options")
        except ValueError as error:
            raise SpaceError(str(error)) from None
    try:
        if setting.kind == "int":
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        return {"float": float, "bool": bool, "str": str}[setting.kind](value)
    except (TypeError, ValueError):
        raise SpaceError(f"Setting {setting.name} must be {_NOUNS[setting.kind]}, got {value!r}.") from None


@dataclass(frozen=True)
class DemoSettings:
    """The checked settings of one request: how the agent is prompted, sampled and scored, and EMPG's constants."""

    rollout: RolloutArguments
    env_kwargs: dict[str, Any]
    greedy: bool
    temperature: float
    seed: int
    empg_k: float
    empg_k_future: float
    empg_zeta: float

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> DemoSettings:
        """From the widget values, in :data:`SETTINGS` order."""
        if len(values) != len(SETTINGS):
            raise SpaceError(f"Expected {len(SETTINGS)} settings ({', '.join(SETTING_NAMES)}), got {len(values)}.")
        return cls.from_mapping(dict(zip(SETTING_NAMES, values)))

    @classmethod
    def from_mapping(cls, named: Mapping[str, Any] | None = None, **overrides: Any) -> DemoSettings:
        """From settings by field name (a recipe, ``run_config.json``'s training settings); the rest default."""
        named = {**(named or {}), **overrides}
        unknown = sorted(set(named) - set(SETTING_NAMES))
        if unknown:
            raise SpaceError(f"Unknown settings {unknown}; the page has {list(SETTING_NAMES)}.")
        values = {s.name: _coerce(s, named[s.name] if s.name in named else s.default) for s in SETTINGS}
        if not values["greedy"] and values["temperature"] <= 0:
            raise SpaceError("The temperature must be > 0 (or tick greedy decoding).")
        rollout_names = [s.name for s in SETTINGS if s.source is RolloutArguments]
        try:
            rollout = RolloutArguments(**{name: values.pop(name) for name in rollout_names})
        except ValueError as error:
            raise SpaceError(str(error)) from None
        return cls(rollout=rollout, **values)

    @classmethod
    def from_training(cls, training: Mapping[str, Any]) -> DemoSettings:
        """The settings a run was trained with: its recipe or ``run_config.json``'s ``training`` (same names)."""
        trained = {s.name: training[s.name] for s in SETTINGS if s.trained and training.get(s.name) is not None}
        return cls.from_mapping(trained)

    def value(self, name: str) -> Any:
        setting = _BY_NAME[name]
        if setting.source is RolloutArguments:
            return getattr(self.rollout, name)
        return getattr(self, name)

    def values(self) -> list[Any]:
        """The widget values, in :data:`SETTINGS` order (the inverse of :meth:`from_values`)."""
        return [json.dumps(self.env_kwargs) if s.kind == "json" else self.value(s.name) for s in SETTINGS]

    def replace(self, **changes: Any) -> DemoSettings:
        """A copy with some settings changed, by field name, checked again."""
        return DemoSettings.from_mapping({**dict(zip(SETTING_NAMES, self.values())), **changes})

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(do_sample=not self.greedy, temperature=1.0 if self.greedy else self.temperature)
