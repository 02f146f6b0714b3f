"""The text-environment protocol every adapter implements.

An environment is one playable task family. ``reset(seed, split)`` starts the task with that seed from that split
and returns ``(observation, info)``; ``step(action)`` returns ``(observation, reward, done, info)``. ``info`` always
carries:

- ``admissible_actions``: list of str, the actions the env accepts now (empty list when the env does not say);
- ``gold_actions``: list of str, an expert plan for the task (only from ``reset``, empty when the env has none);
- ``won``: bool, the task was completed successfully;
- ``score``: float in [0, 1], the task progress as the env measures it (1.0 on success);
- ``invalid_action``: bool, only from ``step``, the env did not understand or could not execute the action.

Environments are deterministic given (seed, split, action history): replaying the actions of an episode after a
``reset`` reproduces it. The rollout relies on this to restore episodes after a worker restart.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

SPLITS = ("train", "dev", "test")

Info = dict[str, Any]


class EnvError(RuntimeError):
    """An environment failed (raised, hung past its timeout or died); the episode is recorded as a failure."""


class EnvDataError(EnvError, ValueError):
    """A file an environment reads (a game, a task list, a data or cache file) is missing or not what it should be.

    The message starts with the file and where in it (``path:line:column`` for text and JSON syntax, the JSON key or
    element otherwise) and says what was expected. Raised while an env is built it stops the run before any work, as
    a ``ValueError``; raised from ``reset`` (one bad game among many) it is an :class:`EnvError`, so the rollout
    records that episode as a failure and goes on.
    """


def read_json_file(path: str | os.PathLike[str], what: str, expected: type = dict) -> Any:
    """Parse the JSON file ``path`` (described as ``what`` in errors) whose top level must be an ``expected``.

    Raises :class:`EnvDataError` naming the file, and the line and column of a syntax error.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EnvDataError(f"{path}: {what} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise EnvDataError(f"{path}: {what} is not readable as UTF-8 text ({error}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise EnvDataError(
            f"{path}:{error.lineno}: {what} is not valid JSON at column {error.colno} ({error.msg})."
        ) from None
    if not isinstance(data, expected):
        kind = {dict: "object", list: "array"}.get(expected, expected.__name__)
        raise EnvDataError(f"{path}: {what} must be a JSON {kind} at the top level, got {type(data).__name__}.")
    return data


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {list(SPLITS)}.")
    return split


def make_info(
    *,
    admissible_actions: list[str] | None = None,
    gold_actions: list[str] | None = None,
    won: bool = False,
    score: float = 0.0,
    **extra: Any,
) -> Info:
    """Build an ``info`` dict with every protocol key present."""
    return {
        "admissible_actions": list(admissible_actions or []),
        "gold_actions": list(gold_actions or []),
        "won": bool(won),
        "score": float(score),
        **extra,
    }


class TextEnv(ABC):
    """Base class of the adapters; user environments may subclass it or just follow the same protocol."""

    #: The id the registry built this env from, e.g. ``"twx:coin"``.
    env_id: str = ""
    #: A short natural-language description of the task family, used in the agent's system prompt.
    task_description: str = ""

    @abstractmethod
    def reset(self, seed: int = 0, split: str = "train") -> tuple[str, Info]:
        """Start the task ``seed`` of ``split``; returns the first observation and the info dict."""

    @abstractmethod
    def step(self, action: str) -> tuple[str, float, bool, Info]:
        """Play ``action``; returns (observation, reward, done, info)."""

    @abstractmethod
    def task_seeds(self, split: str = "train") -> list[int]:
        """The task seeds of ``split``: train, dev and test seeds are disjoint."""

    def close(self) -> None:  # noqa: B027 - optional hook: most adapters own a JVM or process, some own nothing
        """Release external resources (JVMs, processes)."""

    def __enter__(self) -> TextEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
