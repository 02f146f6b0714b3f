"""Fault injection: any environment, made to raise, hang or kill its own process at known places or known rates.

``make("trl_empg.envs.faults:FaultyEnv", inner_env="twx:coin", state_dir=..., rates={"raise": 0.01})`` wraps the inner
env and, before each reset or step runs, decides whether this call faults. Soak runs and the fault-accounting tests
use it to check that every fault the pool sees is counted (see :mod:`trl_empg.envs.pool`), against the record of
what was injected.

A *place* is ``(split, seed, position, occurrence)``: position 0 is the reset, position n the n-th step after it, and
occurrence counts the earlier calls at the same ``(split, seed, position)`` by any FaultyEnv sharing ``state_dir``
(the other episodes of a GRPO group, which play the same task, and replays, which play an episode's positions
again, get later occurrences). Occurrences are counted in one small file per ``(split, seed, position)`` under a
file lock, so they are exact across worker processes. A fault happens where ``schedule`` names the place, or else
with the ``rates`` probabilities, drawn from a hash of ``(salt, place)``: the same place always decides the same.

Every injected fault is appended to ``state_dir/injected.jsonl`` (kind and place) before it happens, so the record
survives the process it kills. ``"hang"`` sleeps ``hang_seconds`` and ``"exit"`` ends the process with
``os._exit``: both need the pool's worker processes (``env_workers > 0``), as a real hang or crash would.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from . import make
from .base import Info, TextEnv

__all__ = ["FAULT_KINDS", "FaultyEnv", "InjectedFault", "read_injected"]

#: The ways a FaultyEnv fails: raise an exception, hang past any timeout, kill its own process.
FAULT_KINDS = ("raise", "hang", "exit")
INJECTED_LOG = "injected.jsonl"


class InjectedFault(RuntimeError):
    """The exception a ``"raise"`` fault raises."""


def _place_key(split: str, seed: int, position: int, occurrence: int) -> str:
    return f"{split}/{seed}/{position}/{occurrence}"


def read_injected(state_dir: str | Path) -> list[dict[str, Any]]:
    """The faults injected so far under ``state_dir``, in order: ``{"kind", "split", "seed", "position",
    "occurrence", "pid"}`` each."""
    path = Path(state_dir) / INJECTED_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FaultyEnv(TextEnv):
    """``inner_env`` (built with ``inner_kwargs``) with faults at the places ``schedule`` names and at ``rates``.

    Args:
        inner_env: the inner environment's registry id (not ``env_id``: :func:`make` takes that name itself).
        inner_kwargs: its constructor arguments.
        state_dir: a folder shared by every FaultyEnv of one run (occurrence counters and the injected record).
        schedule: ``{"split/seed/position/occurrence": kind}``, faults at exact places.
        rates: ``{kind: probability}`` per call, for places the schedule does not name; they must sum to <= 1.
        salt: changes which places the rates pick, for independent runs.
        hang_seconds: how long a ``"hang"`` sleeps (longer than the pool's timeouts).
    """

    def __init__(
        self,
        inner_env: str,
        state_dir: str,
        inner_kwargs: dict[str, Any] | None = None,
        schedule: dict[str, str] | None = None,
        rates: dict[str, float] | None = None,
        salt: int = 0,
        hang_seconds: float = 3600.0,
    ) -> None:
        self.schedule = dict(schedule or {})
        self.rates = {kind: float(rate) for kind, rate in (rates or {}).items()}
        for kind in [*self.schedule.values(), *self.rates]:
            if kind not in FAULT_KINDS:
                raise ValueError(f"Unknown fault kind {kind!r}; expected one of {list(FAULT_KINDS)}.")
        if any(rate < 0 for rate in self.rates.values()) or sum(self.rates.values()) > 1.0:
            raise ValueError(f"Fault rates are probabilities summing to at most 1, got {self.rates}.")
        self.state_dir = Path(state_dir)
        (self.state_dir / "counters").mkdir(parents=True, exist_ok=True)
        self.salt = int(salt)
        self.hang_seconds = float(hang_seconds)
        self.inner = make(inner_env, **(inner_kwargs or {}))
        self.task_description = getattr(self.inner, "task_description", "")
        self._task: tuple[str, int] | None = None
        self._position = 0

    def task_seeds(self, split: str = "train") -> list[int]:
        return list(self.inner.task_seeds(split))

    def reset(self, seed: int = 0, split: str = "train") -> tuple[str, Info]:
        self._task, self._position = (split, int(seed)), 0
        self._maybe_fail()
        return self.inner.reset(seed=seed, split=split)

    def step(self, action: str) -> tuple[str, float, bool, Info]:
        if self._task is None:
            raise RuntimeError("FaultyEnv.step before reset.")
        self._position += 1
        self._maybe_fail()
        return self.inner.step(action)

    def close(self) -> None:
        self.inner.close()

    # ----------------------------------------------------------------------------------------------------------------

    def _next_occurrence(self, split: str, seed: int, position: int) -> int:
        path = self.state_dir / "counters" / f"{split}-{seed}-{position}"
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # workers claim occurrences concurrently: one at a time per place
            handle.seek(0)
            text = handle.read().strip()
            occurrence = int(text) if text else 0
            handle.seek(0)
            handle.truncate()
            handle.write(str(occurrence + 1))
        return occurrence

    def _decide(self, key: str) -> str | None:
        if key in self.schedule:
            return self.schedule[key]
        if not self.rates:
            return None
        digest = hashlib.sha256(f"{self.salt}|{key}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        for kind in FAULT_KINDS:
            draw -= self.rates.get(kind, 0.0)
            if draw < 0:
                return kind
        return None

    def _maybe_fail(self) -> None:
        assert self._task is not None
        split, seed = self._task
        occurrence = self._next_occurrence(split, seed, self._position)
        place = dict(split=split, seed=seed, position=self._position, occurrence=occurrence)
        kind = self._decide(_place_key(split, seed, self._position, occurrence))
        if kind is None:
            return
        record = json.dumps({"kind": kind, **place, "pid": os.getpid()}) + "\n"
        # One O_APPEND write per fault: concurrent workers never interleave lines, and it is in the file before a
        # hang is killed or an exit ends the process.
        fd = os.open(self.state_dir / INJECTED_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, record.encode())
        finally:
            os.close(fd)
        if kind == "raise":
            raise InjectedFault(f"injected fault at {_place_key(split, seed, self._position, occurrence)}")
        if kind == "hang":
            time.sleep(self.hang_seconds)
        else:
            os._exit(70)
