"""A fault-tolerant pool of environments, one per episode slot, stepped in parallel worker processes.

The rollout keeps one slot per episode of a generation batch and, every turn, sends all the slots' actions at once:
each worker receives its share of the requests before any answer is collected, so the workers run concurrently while
each handles its own slots in order. Slot ``s`` lives on worker ``s % num_workers``; its environment is built there
lazily with :func:`trl_empg.envs.make` and reused across resets.

A failing environment must not take the batch down. An exception inside an env becomes an error result for that slot
(its env is discarded and rebuilt on its next reset). A request that does not answer in time, or whose worker died,
becomes an error result too; the worker is then killed and restarted, and each other slot that lived on it is
restored, right before its next step, by replaying its (seed, split, actions) history, which reproduces it because
environments are deterministic (see :mod:`trl_empg.envs.base`). Restoring on demand means a slot whose episode the
caller has stopped (turn limit, token budget) is never replayed, so no fault can happen on behalf of an episode that
is over. A slot whose restore fails or diverges is marked failed and that step gets an error result. Error results
always have ``done=True``, so the rollout ends that episode and records it as a failure.

Fault accounting (:class:`FaultCounts`, ``EnvPool.faults``). A *fault* is an env exception, a request not answered
within its timeout, a worker that died, a result that cannot be sent back, or a restore that diverged. Every fault
belongs to exactly one request, hence to one episode slot, and is counted exactly once, by what the request was:

- ``errors``: the caller's own reset or step of that slot faulted; its episode ends with that error.
- ``replay_errors``: restoring the slot after its worker restarted faulted or diverged; the episode ends with an
  error on the step that needed the restore.
- ``branch_errors``: the caller's own :meth:`~EnvPool.replay` of the slot faulted (AEPO restoring a branch's start);
  the caller decides what that costs (AEPO drops the branch and gives its budget back).

Two more counters say what the faults caused and lose nothing: ``restarts`` counts worker restarts (one per hang or
death counted above, plus one per worker found dead between calls, e.g. killed from outside), ``restored`` the
slots brought back by replay after a restart, which then go on unchanged. Refused steps (a slot that was never reset,
is over or failed) are error results but not faults: the fault that failed the slot was counted when it happened.
So, for any stretch of calls, ``errors + replay_errors + branch_errors`` is the number of faults, and episodes ended
by a fault number ``errors + replay_errors``. Training logs the counters per step as ``env/<name>``.

Workers are fresh interpreters (the "spawn" model: the parent may hold torch threads or a JVM, which do not survive
``fork``), started directly rather than through :mod:`multiprocessing`, whose "spawn" re-runs the caller's
``__main__`` module in every worker: a training script would load torch and TRL again in each one, and a script
without an ``if __name__ == "__main__":`` guard would fail. Workers import only :mod:`trl_empg.envs` (the package
``__init__`` is lazy), never torch. Each runs in its own session, so a restart kills the JVMs it started with it, and
exits on its own if the parent dies. Timeouts count from the moment the worker could start the request: requests of
one worker run one after another. Linux and other POSIX systems with ``os.waitid``.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass, fields
from multiprocessing.connection import wait
from typing import Any

from .base import check_split
from .worker import Request, SlotRunner, StepResult, WorkerProcess, error_result, shut_down

__all__ = ["EnvPool", "FaultCounts", "StepResult"]


@dataclass
class FaultCounts:
    """Faults by what they hit, and what they caused; see the module docstring for the rule."""

    errors: int = 0
    replay_errors: int = 0
    branch_errors: int = 0
    restarts: int = 0
    restored: int = 0

    @property
    def faults(self) -> int:
        """All faults: each one is in exactly one of ``errors``, ``replay_errors`` and ``branch_errors``."""
        return self.errors + self.replay_errors + self.branch_errors

    def copy(self) -> FaultCounts:
        return FaultCounts(**asdict(self))

    def __sub__(self, other: FaultCounts) -> FaultCounts:
        return FaultCounts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Slot:
    """The parent's record of one slot: enough to replay it and to refuse steps it cannot take."""

    seed: int
    split: str
    actions: list[str]
    last_observation: str
    state: str  # "running", "done" or "failed"
    reason: str = ""  # why a failed slot failed
    lost: bool = False  # running, but its worker restarted since: restore it by replay before its next step


@dataclass
class _Pending:
    """A request sent to a worker and not answered yet; ``index`` is its position in the caller's list."""

    index: int | None  # None for restores, which the pool issues itself
    request: Request
    timeout: float


class EnvPool:
    """Environments for numbered episode slots, reset and stepped in batches, in parallel when ``num_workers > 0``.

    Args:
        env_id: the registry id of the environment (``"twx:coin"``, ``"pkg.module:Class"``, ...).
        env_kwargs: keyword arguments for :func:`trl_empg.envs.make`; must pickle when workers are used.
        num_workers: worker processes; 0 runs every env in this process, where env exceptions are still returned as
            error results but a hanging env cannot be interrupted (timeouts need workers).
        step_timeout: seconds a step may take before it is reported as an error and its worker restarted.
        reset_timeout: the same for resets, which may build the environment (start a JVM) first.

    Not thread-safe: one caller at a time.
    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        num_workers: int = 0,
        step_timeout: float = 30.0,
        reset_timeout: float = 120.0,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        if step_timeout <= 0 or reset_timeout <= 0:
            raise ValueError("step_timeout and reset_timeout must be positive.")
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.num_workers = num_workers
        self.step_timeout = float(step_timeout)
        self.reset_timeout = float(reset_timeout)
        self._slots: dict[int, _Slot] = {}
        self._faults = FaultCounts()
        self._closed = False
        self._runner = SlotRunner(env_id, self.env_kwargs) if num_workers == 0 else None
        self._workers: list[WorkerProcess | None] = [None] * num_workers
        # Runs on close(), garbage collection or interpreter exit; holds the runner and the list, not the pool.
        self._finalizer = weakref.finalize(self, shut_down, self._runner, self._workers, 2.0)
        for index in range(num_workers):
            self._workers[index] = WorkerProcess(env_id, self.env_kwargs)

    @property
    def faults(self) -> FaultCounts:
        """A copy of the fault counters since the pool started (subtract two copies for a stretch of calls)."""
        return self._faults.copy()

    @property
    def num_errors(self) -> int:
        """Faults recorded so far: exceptions, timeouts, worker deaths, unsendable results and failed restores."""
        return self._faults.faults

    def reset(self, requests: list[tuple[int, int, str]]) -> list[StepResult]:
        """Start episode ``seed`` of ``split`` in each ``slot``; returns one result per request, in order."""
        self._check_open([slot for slot, _, _ in requests])
        for _, _, split in requests:
            check_split(split)
        return self._execute([("reset", slot, seed, split) for slot, seed, split in requests])

    def step(self, requests: list[tuple[int, str]]) -> list[StepResult]:
        """Play ``action`` in each ``slot``; a slot that is done or failed gets an error result until reset."""
        self._check_open([slot for slot, _ in requests])
        return self._execute([("step", slot, action) for slot, action in requests])

    def replay(self, requests: list[tuple[int, int, str, list[str]]]) -> list[StepResult]:
        """Restore an episode in each ``slot``: reset task ``seed`` of ``split`` and play ``actions`` in order.

        Returns, per request, the result of the last action (the reset's when there are none); an env error on the
        way, or an action that ends the episode before the last one, is an error result and the slot is failed.
        Environments are deterministic, so the slot then continues exactly like the episode the actions came from:
        AEPO's branches start from a parent's state this way.
        """
        self._check_open([slot for slot, *_ in requests])
        for _, _, split, _ in requests:
            check_split(split)
        return self._execute([("replay", slot, seed, split, list(actions)) for slot, seed, split, actions in requests])

    def close(self) -> None:
        """Stop the workers (closing their envs) or close the in-process envs; safe to call twice."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------------------------

    def _check_open(self, slots: list[int]) -> None:
        if self._closed:
            raise RuntimeError("The EnvPool is closed.")
        for slot in slots:
            if not isinstance(slot, int) or slot < 0:
                raise ValueError(f"Slots are non-negative integers, got {slot!r}.")
        if len(set(slots)) != len(slots):
            raise ValueError(f"Each slot may appear once per call, got {slots}.")

    def _execute(self, requests: list[Request]) -> list[StepResult]:
        results: list[StepResult | None] = [None] * len(requests)
        runnable: list[tuple[int, Request]] = []
        for index, request in enumerate(requests):
            refusal = self._refusal(request)
            if refusal is None:
                runnable.append((index, request))
            else:
                results[index] = error_result(refusal)
        if self._runner is not None:
            for index, request in runnable:
                results[index] = self._record(request, self._runner.run(request))
        else:
            self._execute_in_workers(runnable, results)
        assert all(result is not None for result in results)
        return results  # type: ignore[return-value]

    def _timeout(self, request: Request) -> float:
        if request[0] == "step":
            return self.step_timeout
        return self.reset_timeout + (self.step_timeout * len(request[4]) if request[0] == "replay" else 0.0)

    def _refusal(self, request: Request) -> str | None:
        """Why a step cannot be sent to the env (the slot's episode is not running), or None."""
        if request[0] != "step":
            return None
        slot = self._slots.get(request[1])
        if slot is None:
            return f"slot {request[1]} was never reset"
        if slot.state == "done":
            return f"slot {request[1]}: the episode is over; reset the slot first"
        if slot.state == "failed":
            return f"slot {request[1]} failed; reset it first. {slot.reason}"
        return None

    def _record(self, request: Request, result: StepResult) -> StepResult:
        """Update the slot's history from an answered reset or step, counting errors."""
        kind, slot_id = request[0], request[1]
        slot = self._slots.get(slot_id)
        if kind == "step" and slot is not None and slot.state == "failed":
            # The slot failed while this step was queued behind its replay: its answer is meaningless.
            return error_result(f"slot {slot_id} failed; reset it first. {slot.reason}")
        if result.error is not None:
            self._fail_slot(request, result.error, "branch_errors" if kind == "replay" else "errors")
            return result
        if kind in ("reset", "replay"):
            actions = list(request[4]) if kind == "replay" else []
            self._slots[slot_id] = _Slot(request[2], request[3], actions, result.observation, "running")
            if result.done:
                self._slots[slot_id].state = "done"
        elif slot is not None:
            slot.actions.append(request[2])
            slot.last_observation = result.observation
            if result.done:
                slot.state = "done"
        return result

    def _fail_slot(self, request: Request, reason: str, counter: str) -> None:
        """Count a fault under ``counter`` and mark the request's slot failed until its next reset."""
        setattr(self._faults, counter, getattr(self._faults, counter) + 1)
        kind, slot_id = request[0], request[1]
        if kind in ("reset", "replay"):
            self._slots[slot_id] = _Slot(request[2], request[3], [], "", "failed", reason)
        elif slot_id in self._slots:
            self._slots[slot_id].state = "failed"
            self._slots[slot_id].reason = reason

    def _execute_in_workers(self, runnable: list[tuple[int, Request]], results: list[StepResult | None]) -> None:
        queues: dict[int, deque[_Pending]] = {}
        for index, request in runnable:
            timeout = self._timeout(request)
            queues.setdefault(request[1] % self.num_workers, deque()).append(_Pending(index, request, timeout))
        deadlines: dict[int, float] = {}
        # Send every worker its share before collecting anything, so that all workers run at once.
        for worker_id in list(queues):
            worker = self._workers[worker_id]
            if worker is None or not worker.alive():
                self._restart(worker_id, queues[worker_id], deadlines)
            else:
                queues[worker_id] = self._with_restores(queues[worker_id])
                self._send(worker_id, queues[worker_id], deadlines)
        while any(queues.values()):
            busy = {worker_id for worker_id, queue in queues.items() if queue}
            # A dead worker's socket reads as EOF, so waiting on the sockets also notices deaths.
            conns = [worker.conn for worker_id in busy if (worker := self._workers[worker_id]) is not None]
            wait(conns, timeout=max(0.0, min(deadlines[worker_id] for worker_id in busy) - time.monotonic()))
            for worker_id in busy:
                self._collect(worker_id, queues[worker_id], deadlines, results)

    def _collect(
        self, worker_id: int, queue: deque[_Pending], deadlines: dict[int, float], results: list[StepResult | None]
    ) -> None:
        """Take every answer the worker has ready; restart it if it died or its current request is overdue."""
        worker = self._workers[worker_id]
        assert worker is not None
        try:
            while queue and worker.conn.poll():
                result = worker.conn.recv()
                worker.fresh = False
                self._answer(queue.popleft(), result, results)
                if queue:
                    deadlines[worker_id] = time.monotonic() + queue[0].timeout
            if not queue:
                return
            if not worker.alive():
                problem = worker.death()
            elif time.monotonic() > deadlines[worker_id]:
                problem = f"no answer within {queue[0].timeout:g} s"
            else:
                return
        except (EOFError, OSError):
            problem = worker.death()
        failed = queue.popleft()
        message = f"{self.env_id} slot {failed.request[1]}: {failed.request[0]} failed: {problem}"
        if failed.index is None:
            self._fail_slot(failed.request, f"Replay after a worker restart failed: {message}", "replay_errors")
        else:
            results[failed.index] = error_result(message)
            self._fail_slot(failed.request, message, "branch_errors" if failed.request[0] == "replay" else "errors")
        self._restart(worker_id, queue, deadlines)

    def _answer(self, pending: _Pending, result: StepResult, results: list[StepResult | None]) -> None:
        slot_id = pending.request[1]
        if pending.index is not None:
            results[pending.index] = self._record(pending.request, result)
            return
        # A restore: the slot is restored only if it ends where it was.
        if result.error is not None:
            self._fail_slot(pending.request, f"Replay after a worker restart failed: {result.error}", "replay_errors")
        elif result.observation != self._slots[slot_id].last_observation:
            reason = "Replay after a worker restart diverged from the original episode."
            self._fail_slot(pending.request, reason, "replay_errors")
        else:
            self._faults.restored += 1

    def _restart(self, worker_id: int, queue: deque[_Pending], deadlines: dict[int, float]) -> None:
        """Replace the worker, mark the running slots it held lost, then resend the requests it had not answered,
        each step of a lost slot preceded by its restore."""
        old = self._workers[worker_id]
        if old is not None:
            old.stop(0.0)
        self._workers[worker_id] = WorkerProcess(self.env_id, self.env_kwargs)
        self._faults.restarts += 1
        for slot_id, slot in self._slots.items():
            if slot_id % self.num_workers == worker_id and slot.state == "running":
                slot.lost = True
        # Restores the dead worker had not finished are issued afresh, before the steps that need them.
        remaining = deque(pending for pending in queue if pending.index is not None)
        queue.clear()
        queue.extend(self._with_restores(remaining))
        if queue:
            self._send(worker_id, queue, deadlines)

    def _with_restores(self, queue: deque[_Pending]) -> deque[_Pending]:
        """The queue with a restore (a replay of the slot's history) before each step of a lost slot."""
        ordered: deque[_Pending] = deque()
        for pending in queue:
            slot_id = pending.request[1]
            slot = self._slots.get(slot_id)
            if pending.request[0] == "step" and slot is not None and slot.state == "running" and slot.lost:
                replay = ("replay", slot_id, slot.seed, slot.split, list(slot.actions))
                ordered.append(_Pending(None, replay, self._timeout(replay)))
                slot.lost = False  # set again if this worker restarts before the restore is answered
            ordered.append(pending)
        return ordered

    def _send(self, worker_id: int, queue: deque[_Pending], deadlines: dict[int, float]) -> None:
        worker = self._workers[worker_id]
        assert worker is not None
        # A fresh worker must start its interpreter and import the env package before it answers anything.
        startup = self.reset_timeout if worker.fresh else 0.0
        deadlines[worker_id] = time.monotonic() + startup + queue[0].timeout
        try:
            worker.conn.send([pending.request for pending in queue])
        except (OSError, ValueError):
            pass  # A worker that died meanwhile is noticed by the collection loop, which restarts it.
