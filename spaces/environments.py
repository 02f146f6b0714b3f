"""The environments the page plays: the menu, an environment's held-out seeds, the worker pool an episode runs in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from agent_settings import SpaceError, first_line
from hosting import active_policy

from trl_empg.envs import ENV_FAMILIES, make
from trl_empg.envs.pool import EnvPool
from trl_empg.rollout import EnvArguments

DEFAULT_ENV = "twx:coin"
#: The split the page plays: held-out tasks, never seen in training.
SPLIT = "test"
#: Example names per registered family for the environment menu (a family without a name, e.g. webshop, is listed
#: as itself); any other id can be typed in.
ENV_EXAMPLES: dict[str, tuple[str, ...]] = {
    "twx": ("coin", "cookingworld", "twc", "mapreader", "arithmetic", "sorting", "simonsays", "peckingorder"),
    "scienceworld": ("boil", "melt", "freeze", "find-living-thing"),
    "alfworld": ("", "pick_and_place_simple", "pick_heat_then_place_in_recep"),
    "textworld": ("cooking", "coin_collector", "treasure_hunter", "simple"),
}
#: How many test seeds the seed menu lists (any other test seed can be typed in).
MENU_SEEDS = 100
#: Seconds a reset may take (it may start a JVM first); steps get EnvArguments' env_step_timeout.
RESET_TIMEOUT = 120.0


def env_choices() -> list[str]:
    """Env ids for the menu: examples of every registered family, then the operator's own (any other name of a
    built-in family can be typed too)."""
    choices = []
    for family, (*_, takes_name) in ENV_FAMILIES.items():
        for name in ENV_EXAMPLES.get(family, ("",)):
            if name or not takes_name:
                choices.append(f"{family}:{name}" if name else family)
    return [*choices, *(env_id for env_id in active_policy().envs if env_id not in choices)]


@dataclass(frozen=True)
class EnvInfo:
    """An environment's held-out seeds and the task description the agent's system prompt carries."""

    seeds: tuple[int, ...]
    description: str


def env_info(env_id: str, env_kwargs: dict[str, Any] | None = None) -> EnvInfo:
    """Build ``env_id`` once per set of options to list its test seeds, once the Space's policy allows both; a
    refused request, a missing package or an unknown id becomes a :class:`SpaceError`."""
    env_id, env_kwargs = active_policy().check_env(env_id, env_kwargs)
    return cached_env_info(env_id, json.dumps(env_kwargs, sort_keys=True))


@lru_cache(maxsize=32)
def cached_env_info(env_id: str, env_kwargs_json: str) -> EnvInfo:
    """:func:`env_info` of the options as sorted JSON (hashable, so one build per environment and options)."""
    try:
        env = make(env_id, **json.loads(env_kwargs_json))
    except ImportError as error:
        raise SpaceError(f"Missing environment package for {env_id!r}: {first_line(str(error))}") from error
    except Exception as error:
        raise SpaceError(f"Cannot create the environment {env_id!r}: {first_line(str(error))}") from error
    try:
        seeds = tuple(int(seed) for seed in env.task_seeds(SPLIT))
        description = getattr(env, "task_description", "") or ""
    except Exception as error:
        raise SpaceError(f"The environment {env_id!r} cannot list its {SPLIT} tasks: {error}") from error
    finally:
        env.close()
    if not seeds:
        raise SpaceError(f"The environment {env_id!r} has no {SPLIT} tasks.")
    return EnvInfo(seeds, description)


def check_seed(env_id: str, seed: int | str | None, env_kwargs: dict[str, Any] | None = None) -> tuple[EnvInfo, int]:
    """The environment's info and the task seed to play (its first test seed when none is given)."""
    info = env_info(env_id, env_kwargs)
    if seed is None or str(seed).strip() == "":
        return info, info.seeds[0]
    try:
        value = int(float(str(seed).strip()))
    except ValueError:
        raise SpaceError(f"The task seed must be an integer, got {seed!r}.") from None
    if value not in info.seeds:
        raise SpaceError(
            f"{value} is not a {SPLIT} seed of {env_id}: its {len(info.seeds)} {SPLIT} seeds run from "
            f"{min(info.seeds)} to {max(info.seeds)}."
        )
    return info, value


def open_pool(env_id: str, env_kwargs: dict[str, Any] | None = None) -> EnvPool:
    """One env in a worker process, once the Space's policy allows it: a crash or hang there ends the episode with an
    error, not the app."""
    env_id, env_kwargs = active_policy().check_env(env_id, env_kwargs)
    return EnvPool(
        env_id,
        env_kwargs,
        num_workers=1,
        step_timeout=EnvArguments().env_step_timeout,
        reset_timeout=RESET_TIMEOUT,
    )
