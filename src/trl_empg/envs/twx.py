"""TextWorldExpress adapter: the default and CI environment (``make("twx:coin")``).

TextWorldExpress (TWX) simulates eight small text games in a JVM, with sub-millisecond steps, expert (gold) plans and
official train/dev/test seed lists of 1000 seeds each. Behaviours of TWX 1.1 this adapter is built around:

- An action is understood only if it equals one of the current valid actions up to surrounding whitespace (it is case
  and inner-space sensitive). Anything else leaves the state unchanged, still counts as a move, and TWX answers
  ``"Unknown action: I'm not sure what you mean."``; the adapter flags it with ``info["invalid_action"]``. The Python
  package answers ``"help"`` itself with the task description without moving the game; that is flagged invalid too
  (and, like every call, counts towards ``max_steps``).
- TWX scores are already normalised to 1.0 on success but go negative (-1.0) when a game is lost (wrong answer in
  arithmetic, sorting, simonsays, peckingorder); the adapter clips them to [0, 1] and rewards score increments.
- Most gold plans start with ``"look around"``, which only repeats the first observation; the adapter drops it.
  Gold plans are not always tidy: coin's is a random walk drawn afresh (unseeded) on every reset, so it varies
  between resets of one seed and often wanders back and forth (a 2-move task can get a 20-move plan); twc's has one
  action after the win; a few cookingworld plans repeat an action that is no longer valid; peckingorder's fails on
  ~2% of seeds where two objects share a name. The games themselves are deterministic.
- ``gold_plan_draws=N`` (N > 1) draws N plans on a task's first reset and reports the shortest (ties broken
  alphabetically) on every reset of that task: on coin, 16 draws give each task one fixed plan, in practice the
  shortest route to the coin, for reproducible demonstrations. The default (1) reports TWX's own draw.
- TWX plays any seed in any fold (the fold changes the generated game), so the adapter rejects seeds outside the split.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from textworld_express import TextWorldExpressEnv as _TWXClient

from .base import SPLITS, Info, TextEnv, check_split, make_info

#: Game parameters applied unless overridden: small maps whose gold plans stay well under the default 50-step cap
#: (coin: 1-30 steps, cookingworld: 10-25, twc: 7-12, mapreader: 6-10), so that tiny agents can learn them. Games
#: not listed take no parameters or keep TWX's defaults.
DEFAULT_GAME_PARAMS: dict[str, dict[str, int]] = {
    "coin": {"numLocations": 4, "includeDoors": 1, "numDistractorItems": 0},
    "cookingworld": {"numLocations": 3, "numIngredients": 2, "numDistractorItems": 2, "includeDoors": 1},
    "twc": {"numLocations": 2, "numItemsToPutAway": 3},
    "mapreader": {"numLocations": 8, "maxDistanceApart": 3, "maxDistractorItemsPerLocation": 1, "includeDoors": 0},
}

#: One line per game for the agent's system prompt (TWX's own descriptions name seed-specific rooms in mapreader).
GAME_DESCRIPTIONS: dict[str, str] = {
    "coin": "Explore the house, opening doors where needed, until you find the coin, then take it.",
    "cookingworld": (
        "Find and read the cookbook, gather the ingredients it lists, prepare them as it says, then prepare the meal "
        "and eat it."
    ),
    "twc": "Tidy up the house: pick up the misplaced objects and put each one in its usual place.",
    "mapreader": "Use the map to find the room holding the coin, take the coin and put it in the box the task names.",
    "arithmetic": "Read and solve the math problem, then put the item whose quantity equals the answer in the box.",
    "sorting": "Put every object in the box, one at a time, from the smallest quantity to the largest.",
    "simonsays": "Do exactly what Simon says, one action per turn.",
    "peckingorder": "Read the instructions book and do what it says; repeat until the game is completed.",
}

_LOOK = "look around"


def _parse_params(game_params: str | Mapping[str, Any] | None) -> dict[str, int]:
    """Accept ``"k=v,k=v"`` (TWX's own format) or a mapping; TWX silently breaks on non-integer values, so check."""
    if game_params is None:
        return {}
    if isinstance(game_params, str):
        items: list[tuple[str, Any]] = []
        for part in game_params.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"Bad TextWorldExpress game parameter {part.strip()!r}: expected 'name=value'.")
            items.append((key.strip(), value.strip()))
    else:
        items = list(game_params.items())
    params = {}
    for key, value in items:
        try:
            params[key] = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"TextWorldExpress game parameter {key}={value!r} must be an integer.") from None
    return params


def _clip_score(score: float) -> float:
    return min(1.0, max(0.0, float(score)))


class TextWorldExpressEnv(TextEnv):
    """One TextWorldExpress game, in its own JVM (``close()`` stops it).

    Args:
        game: a TWX game name: coin, cookingworld, twc, mapreader, arithmetic, sorting, simonsays, peckingorder.
        game_params: TWX generation parameters as ``"numLocations=5,includeDoors=0"`` or a dict; they override
            :data:`DEFAULT_GAME_PARAMS` key by key (pass TWX's own value explicitly to get TWX's default).
        max_steps: the episode ends (``done=True``) after this many ``step`` calls.
        env_step_limit: TWX's own move limit (its episode ends after more moves than this); defaults to
            ``max_steps`` so that the adapter's cap is the one that applies.
        gold_plan_draws: 1 reports TWX's gold plan as drawn on each reset (only coin's varies: a random walk). N > 1
            draws N plans on a task's first reset (~2 ms each) and reports the shortest, cached, on every reset of
            that task. On doorless coin's first 20 train seeds the shortest plan came up in 1 to 16 of 16 draws.
        hide_actions: action prefixes (e.g. ``["examine ", "look around", "inventory"]``) left out of
            ``admissible_actions``; they still play and are not flagged invalid. Long games list many actions no plan
            needs (cookingworld: 12 of 23 are ``examine``), and every listed action costs prompt tokens each turn.
    """

    task_description = (
        "A TextWorldExpress text game: read each observation and reply with exactly one of the valid actions."
    )

    def __init__(
        self,
        game: str,
        *,
        game_params: str | Mapping[str, Any] | None = None,
        max_steps: int = 50,
        env_step_limit: int | None = None,
        gold_plan_draws: int = 1,
        hide_actions: Sequence[str] = (),
    ) -> None:
        if isinstance(hide_actions, str) or not all(isinstance(p, str) and p.strip() for p in hide_actions):
            raise ValueError(f"hide_actions must be a list of non-empty action prefixes, got {hide_actions!r}.")
        self.hide_actions = tuple(hide_actions)
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
        if gold_plan_draws < 1:
            raise ValueError(f"gold_plan_draws must be >= 1, got {gold_plan_draws}.")
        self.game = game
        self.max_steps = int(max_steps)
        self.gold_plan_draws = int(gold_plan_draws)
        self._gold_plans: dict[tuple[str, int], list[str]] = {}
        self.game_params = {**DEFAULT_GAME_PARAMS.get(game, {}), **_parse_params(game_params)}
        self._client: _TWXClient | None = _TWXClient(
            envStepLimit=self.max_steps if env_step_limit is None else int(env_step_limit)
        )
        try:
            known = self._client.getGameNames()
            if game not in known:
                raise ValueError(f"Unknown TextWorldExpress game {game!r}; expected one of {sorted(known)}.")
            try:
                self._client.load(game, ",".join(f"{key}={value}" for key, value in self.game_params.items()))
            except ValueError as error:
                raise ValueError(f"TextWorldExpress rejected the parameters of {game!r}: {error}") from None
            self._seeds = {
                "train": list(self._client.getValidSeedsTrain()),
                "dev": list(self._client.getValidSeedsDev()),
                "test": list(self._client.getValidSeedsTest()),
            }
        except BaseException:
            self.close()
            raise
        self._seed_sets = {split: frozenset(self._seeds[split]) for split in SPLITS}
        self.task_description = f"{type(self).task_description} {GAME_DESCRIPTIONS.get(game, '')}".strip()
        self.env_id = f"twx:{game}"
        # Episode state; `_done is None` means no episode has started.
        self._done: bool | None = None
        self._steps = 0
        self._score = 0.0
        self._admissible: list[str] = []
        self._admissible_set: frozenset[str] = frozenset()

    def task_seeds(self, split: str = "train") -> list[int]:
        return list(self._seeds[check_split(split)])

    def reset(self, seed: int = 0, split: str = "train") -> tuple[str, Info]:
        client = self._require_client()
        if seed not in self._seed_sets[check_split(split)]:
            seeds = self._seeds[split]
            raise ValueError(
                f"Seed {seed!r} is not a {split} seed of {self.env_id}: {split} seeds are {len(seeds)} integers "
                f"from {min(seeds)} to {max(seeds)} (see task_seeds({split!r}))."
            )
        gold = self._gold_plans.get((split, seed))
        if gold is None:
            plans = []
            for _ in range(self.gold_plan_draws):
                observation, raw = client.reset(seed=int(seed), gameFold=split, generateGoldPath=True)
                plan = list(client.getGoldActionSequence())
                plans.append(plan[1:] if plan[:1] == [_LOOK] else plan)
            gold = min(plans, key=lambda plan: (len(plan), plan))
            if self.gold_plan_draws > 1:
                self._gold_plans[split, seed] = gold
        else:
            observation, raw = client.reset(seed=int(seed), gameFold=split, generateGoldPath=False)
        self._done = False
        self._steps = 0
        self._score = _clip_score(raw["score"])
        self._set_admissible(raw["validActions"])
        info = make_info(
            admissible_actions=self._admissible,
            gold_actions=gold,
            score=self._score,
            task_description=raw["taskDescription"],
        )
        return observation, info

    def step(self, action: str) -> tuple[str, float, bool, Info]:
        client = self._require_client()
        if self._done is None:
            raise RuntimeError(f"{self.env_id}: call reset() before step().")
        if self._done:
            raise RuntimeError(f"{self.env_id}: the episode is over; call reset() to start another.")
        if not isinstance(action, str):
            raise TypeError(f"Actions are strings, got {type(action).__name__}.")
        invalid = action.strip() not in self._admissible_set
        observation, _, twx_done, raw = client.step(action)
        won = bool(raw["tasksuccess"])
        lost = bool(raw["taskfailure"])
        score = 1.0 if won else _clip_score(raw["score"])
        reward = score - self._score
        self._score = score
        self._steps += 1
        self._done = bool(twx_done or won or lost or self._steps >= self.max_steps)
        self._set_admissible(raw["validActions"])
        info = make_info(admissible_actions=self._admissible, won=won, score=score, invalid_action=invalid, lost=lost)
        return observation, reward, self._done, info

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.close()
        # The wrapper only asks the JVM to exit; wait for it (a few ms) so that close() really frees it.
        process: subprocess.Popen | None = getattr(getattr(client, "_gateway", None), "java_process", None)
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _require_client(self) -> _TWXClient:
        if self._client is None:
            raise RuntimeError(f"{self.env_id or 'twx'}: the environment is closed.")
        return self._client

    def _set_admissible(self, actions: list[str]) -> None:
        # TWX lists valid actions in no documented order; sort so that prompts are reproducible. Hidden actions stay
        # valid (not flagged invalid when typed) but are not listed.
        self._admissible = sorted(a for a in actions if not a.startswith(self.hide_actions))
        self._admissible_set = frozenset(actions)
