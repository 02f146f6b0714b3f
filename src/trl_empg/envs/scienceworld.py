"""ScienceWorld adapter: the official 30-task benchmark behind the :class:`~trl_empg.envs.base.TextEnv` protocol.

One :class:`ScienceWorldEnv` plays one task (``"boil"``, ``"find-living-thing"``, ... or its id ``"1-1"``, ``"4-1"``)
in its own JVM. The task seeds are the benchmark's own variation indices, so ``reset(seed=v, split="test")`` plays
exactly the official test variation ``v`` and results compare with published numbers.

Why the adapter talks to the simulator below the package's ``step``/``reset``: the package's ``step`` fetches the full
valid-action list, the room text, the inventory and the task text on every call, which is most of a step's cost. Here
the valid-action list is fetched only when asked for (``admissible_actions=True``), through the simulator's JSON call
(one transfer instead of one round trip per action), and the rest not at all.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

from py4j.protocol import Py4JError
from scienceworld import ScienceWorldEnv as _SimulatorClient
from scienceworld.constants import ID2TASK
from scienceworld.utils import infer_task

from .base import EnvError, Info, TextEnv, check_split, make_info

__all__ = ["TASK_IDS", "TASK_NAMES", "ScienceWorldEnv", "resolve_task"]

#: The 30 official task names, in benchmark order ("boil", "melt", ...).
TASK_NAMES: tuple[str, ...] = tuple(ID2TASK.values())
#: Official task id ("1-1") -> task name ("boil").
TASK_IDS: dict[str, str] = dict(ID2TASK)

# The two texts the simulator answers with when it did not understand the input: the parser's reply when no action
# template matches, and the interface's reply when the input could not be turned into an action (e.g. a reply to an
# ambiguity prompt that is not one of the offered numbers).
_INVALID_REPLIES = ("No known action matches that input.", "Unknown action.")
# When an input matches several actions the simulator lists them as "<n>:\t<action>" lines and waits for the number;
# the official gold paths answer such prompts with "0", so the prompt is passed through and the numbers are admissible.
_AMBIGUOUS_REPLY = "Ambiguous request: Please enter the number"
_AMBIGUOUS_OPTION = re.compile(r"^(\d+):\t", re.MULTILINE)
_HEAP_SIZE = re.compile(r"\d+[kKmMgG]?")
# JAVA_TOOL_OPTIONS is process-wide: envs built from several threads must not see each other's temporary value.
_JAVA_OPTIONS_LOCK = threading.Lock()
_JVM_EXIT_TIMEOUT_S = 10.0


def resolve_task(task: str) -> str:
    """The official task name for ``task`` (a name, an id like ``"1-1"`` or the paper's "Topic Task" title, any case).

    An unknown task raises ``ValueError`` with the closest names and every valid one.
    """
    for candidate in (task.strip(), task.strip().lower()) if isinstance(task, str) else ():
        name = infer_task(candidate)
        if name in TASK_NAMES:
            return name
    close = difflib.get_close_matches(str(task).strip().lower(), TASK_NAMES, n=3, cutoff=0.6)
    suggestion = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"Unknown ScienceWorld task {task!r}.{suggestion} Valid task names: {list(TASK_NAMES)}; "
        f"or their ids: {list(TASK_IDS)}."
    )


@contextlib.contextmanager
def _java_tool_options(option: str | None) -> Iterator[None]:
    """Add ``option`` to JAVA_TOOL_OPTIONS while a JVM is launched, so only that JVM gets it, then restore the parent's
    value: a permanent change would cap the heap of every other JVM this process starts later."""
    if option is None:
        yield
        return
    with _JAVA_OPTIONS_LOCK:
        previous = os.environ.get("JAVA_TOOL_OPTIONS")
        os.environ["JAVA_TOOL_OPTIONS"] = f"{previous} {option}" if previous else option
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("JAVA_TOOL_OPTIONS", None)
            else:
                os.environ["JAVA_TOOL_OPTIONS"] = previous


class ScienceWorldEnv(TextEnv):
    """One ScienceWorld task; seeds are the task's official variation indices of each split.

    Besides the protocol keys, ``info`` carries ``done`` and ``raw_score``: the benchmark's own integer score (0-100,
    -100 once the task is failed), for reporting numbers comparable with the literature.

    Args:
        task: official task name (``"boil"``) or id (``"1-1"``); see :data:`TASK_NAMES`.
        simplification: the simulator's simplification string: ``"easy"`` (all of them, the common benchmark setting),
            ``""`` (none) or a comma-separated subset of ``teleportAction``, ``selfWateringFlowerPots``,
            ``openContainers``, ``openDoors``, ``noElectricalAction``.
        jvm_heap: maximum JVM heap (``-Xmx``), e.g. ``"256m"``; ``None`` leaves the JVM's default (a quarter of RAM).
        max_steps: the episode ends (not won) after this many ``step`` calls. Some official gold paths are longer
            than 100 steps (e.g. ``inclined-plane-friction-unnamed-surfaces``, the ``mendelian-genetics`` tasks).
        admissible_actions: list the valid actions in ``info`` after every step. Listing them is most of a step's
            cost (a few hundred to a thousand actions per room), so turn it off when the agent does not read them.
        gold_actions: generate the official gold path on the first reset of each variation (cached afterwards).
            Generating it replays the task inside the simulator (0.1-6 s per variation), so turn it off for RL.
    """

    def __init__(
        self,
        task: str,
        *,
        simplification: str = "easy",
        jvm_heap: str | None = "256m",
        max_steps: int = 100,
        admissible_actions: bool = True,
        gold_actions: bool = True,
    ) -> None:
        self.task = resolve_task(task)
        self.task_id = next(task_id for task_id, name in TASK_IDS.items() if name == self.task)
        if jvm_heap is not None and not _HEAP_SIZE.fullmatch(jvm_heap):
            raise ValueError(f"jvm_heap must look like '256m', '1g' or '524288k', got {jvm_heap!r}.")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}.")
        self.env_id = f"scienceworld:{self.task}"
        self.simplification = simplification
        self.max_steps = max_steps
        self.admissible_actions = admissible_actions
        self.gold_actions = gold_actions
        self._seeds: dict[str, list[int]] = {}
        self._gold_cache: dict[int, list[str]] = {}
        self._steps = 0
        self._score = 0.0
        self._done: bool | None = None  # None until the first reset

        with _java_tool_options(None if jvm_heap is None else f"-Xmx{jvm_heap}"):
            self._client: _SimulatorClient | None = _SimulatorClient()
        self._server = self._client.server
        try:
            # The package's load validates the simplification string (and its clash with electrical tasks). Variation
            # 0 (the first train variation of every task) gives the task's description until a reset picks the
            # variation actually played; the simulator can list the splits only once a task is loaded.
            self._client.load(self.task, 0, simplification, generateGoldPath=False)
            self.task_description: str = self._server.getTaskDescription()
        except BaseException:
            self.close()
            raise

    @property
    def jvm_pid(self) -> int | None:
        """Process id of this env's JVM (None once closed), for measuring its memory or checking it has exited."""
        return None if self._client is None else self._client._gateway.java_process.pid

    def task_seeds(self, split: str = "train") -> list[int]:
        """The official variation indices of ``split`` (disjoint across train, dev and test)."""
        check_split(split)
        if split not in self._seeds:
            client = self._live_client()
            getter = {
                "train": client.get_variations_train,
                "dev": client.get_variations_dev,
                "test": client.get_variations_test,
            }[split]
            self._seeds[split] = sorted(int(seed) for seed in self._call(getter))
        return list(self._seeds[split])

    def reset(self, seed: int = 0, split: str = "train") -> tuple[str, Info]:
        """Load variation ``seed`` of ``split``; the observation is the task's text followed by the first room."""
        if seed not in self.task_seeds(split):
            seeds = self._seeds[split]
            raise ValueError(
                f"Variation {seed!r} is not in the {split} split of ScienceWorld task {self.task!r} "
                f"({len(seeds)} variations, {seeds[0]}..{seeds[-1]})."
            )
        self._live_client()
        seed = int(seed)  # py4j cannot pass numpy integers (e.g. seeds read back from a datasets column)
        generate_gold = self.gold_actions and seed not in self._gold_cache
        self._call(self._server.load, self.task, seed, self.simplification, generate_gold)
        if generate_gold:
            self._gold_cache[seed] = [str(action) for action in self._call(self._server.getGoldActionSequence)]
        # "look around" takes no simulated time: it is how the package's own reset shows the first room.
        room = self._call(self._server.step, "look around")
        self.task_description = self._call(self._server.getTaskDescription)
        observation = f"{self._call(self._server.freeActionTaskDesc)}\n\n{room}"
        raw = float(self._call(self._server.getScore))
        self._steps = 0
        self._score = min(max(raw, 0.0), 1.0)
        self._done = False
        info = make_info(
            admissible_actions=self._admissible(room),
            gold_actions=self._gold_cache.get(seed, []),
            score=self._score,
            done=False,
            raw_score=round(100 * raw),
        )
        return observation, info

    def step(self, action: str) -> tuple[str, float, bool, Info]:
        """Play ``action``; reward is the change of the [0, 1] score, so an episode's rewards sum to its final score
        minus its initial one (some tasks start above 0)."""
        if self._done is None:
            raise RuntimeError("Call reset() before step().")
        if self._done:
            raise RuntimeError("The episode is over; call reset() to start another.")
        self._live_client()
        observation = str(self._call(self._server.step, action))
        raw = float(self._call(self._server.getScore))
        completed = bool(self._call(self._server.getCompleted))
        self._steps += 1
        # The simulator marks a failed task (e.g. focusing on the wrong object) by a negative score and does not set
        # "completed"; the package's own step ends the episode on it, and so does this one, as lost.
        failed = raw < 0
        won = completed and not failed
        score = 1.0 if won else min(max(raw, 0.0), 1.0)
        reward = score - self._score
        self._score = score
        self._done = won or failed or completed or self._steps >= self.max_steps
        info = make_info(
            admissible_actions=[] if self._done else self._admissible(observation),
            won=won,
            score=score,
            invalid_action=observation.startswith(_INVALID_REPLIES),
            done=self._done,
            raw_score=round(100 * raw),
        )
        return observation, reward, self._done, info

    def close(self) -> None:
        """Shut the JVM down and wait for it to exit (killing it if it does not), so no JVM outlives the env."""
        client, self._client = self._client, None
        if client is None:
            return
        process = client._gateway.java_process
        with contextlib.suppress(Py4JError, OSError):
            client.close()
        try:
            process.wait(timeout=_JVM_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _admissible(self, observation: str) -> list[str]:
        """Valid actions now: the offered numbers while an ambiguity prompt waits, else the simulator's list (sorted,
        since its order is not stable across runs and replays must see the same list)."""
        if observation.startswith(_AMBIGUOUS_REPLY):
            return _AMBIGUOUS_OPTION.findall(observation)
        if not self.admissible_actions:
            return []
        payload = json.loads(self._call(self._server.getValidActionObjectCombinationsJSON))
        return sorted(entry["action"] for entry in payload["validActions"])

    def _live_client(self) -> _SimulatorClient:
        if self._client is None:
            raise RuntimeError("This ScienceWorldEnv is closed.")
        return self._client

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        """Call the JVM, turning a dead or failing simulator into :class:`EnvError` so the rollout records a lost
        episode and restarts the worker instead of crashing."""
        try:
            return method(*args)
        except Py4JError as error:
            raise EnvError(f"ScienceWorld ({self.task}) failed: {error}") from error
