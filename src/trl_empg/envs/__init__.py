"""Environment registry: the only module that knows every adapter.

``make("twx:coin")``, ``make("scienceworld:boil")``, ``make("alfworld")``, ``make("textworld:cooking")`` or
``make("my_pkg.my_module:MyEnv", **kwargs)`` for a user environment class (or factory) following the protocol in
:mod:`trl_empg.envs.base`.

An env id and its kwargs are code to run, like a recipe: a ``package.module:Class`` id imports that module and calls
that class with the kwargs. Programs and recipes pass ids from the person launching them; a service taking ids from
strangers (the demo Space) must check them against its own allowlist before calling :func:`make`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import SPLITS, EnvDataError, EnvError, Info, TextEnv, check_split, make_info

__all__ = [
    "SPLITS",
    "EnvError",
    "EnvDataError",
    "Info",
    "TextEnv",
    "check_split",
    "make",
    "check_env_name",
    "make_info",
    "known_env_ids",
    "ENV_FAMILIES",
]

# family -> (adapter module, class name, extra that installs the package, whether the id takes a ":<name>" suffix)
ENV_FAMILIES: dict[str, tuple[str, str, str, bool]] = {
    "twx": ("trl_empg.envs.twx", "TextWorldExpressEnv", "textworld-express", True),
    "scienceworld": ("trl_empg.envs.scienceworld", "ScienceWorldEnv", "scienceworld", True),
    "alfworld": ("trl_empg.envs.alfworld", "ALFWorldEnv", "alfworld", False),
    "textworld": ("trl_empg.envs.textworld", "TextWorldEnv", "textworld", True),
    "webshop": ("trl_empg.envs.webshop", "WebShopEnv", "webshop", False),
    "search": ("trl_empg.envs.search", "SearchEnv", "search", False),
}


def known_env_ids() -> list[str]:
    """Every env id the registry accepts, with ``<name>`` placeholders for families that take one."""
    return [f"{family}:<name>" if takes_name else family for family, (*_, takes_name) in ENV_FAMILIES.items()] + [
        "package.module:Class"
    ]


def _load_adapter(family: str) -> type[TextEnv]:
    module_name, class_name, package, _ = ENV_FAMILIES[family]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"Environment family {family!r} needs the {package!r} package: pip install 'trl-empg[envs]' "
            f"(or pip install {package}). Import failed with: {error}"
        ) from error
    return getattr(module, class_name)


def _load_user_env(env_id: str) -> Callable[..., Any]:
    module_name, _, attr = env_id.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"Unknown env id {env_id!r}: module {module_name!r} cannot be imported ({error}). "
            f"Known env ids: {known_env_ids()}"
        ) from error
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"Unknown env id {env_id!r}: module {module_name!r} has no attribute {attr!r}.") from None


def check_env_name(env_id: str, where: str | None = None) -> None:
    """Check the ``:<name>`` part of a built-in env id (a ScienceWorld task, a TextWorld challenge, an ALFWorld task
    type) without building the env, so that a mistyped name fails before a model is loaded, naming the valid ones;
    ``where`` (e.g. ``"recipe.yaml line 15"``) starts the message. TextWorldExpress games (listed by its JVM), user
    classes and families whose package is not installed are left to :func:`make`."""
    family, _, name = env_id.partition(":") if isinstance(env_id, str) else ("", "", "")
    try:
        if family == "scienceworld" and name:
            importlib.import_module("trl_empg.envs.scienceworld").resolve_task(name)
        elif family == "textworld" and name:
            importlib.import_module("trl_empg.envs.textworld")._canonical_challenge(name)
        elif family == "alfworld" and name:
            task_types = importlib.import_module("trl_empg.envs.alfworld.env").TASK_TYPES
            if name not in task_types:
                raise ValueError(f"Unknown ALFWorld task type {name!r}; expected one of {list(task_types)}.")
    except ImportError:
        return
    except ValueError as error:
        if where is None:
            raise
        raise ValueError(f"{where}: env_id {env_id!r}: {error}") from None


def make(env_id: str, **kwargs: Any) -> TextEnv:
    """Build the environment named by ``env_id`` (see the module docstring); unknown ids list the known ones."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env id must be a non-empty string, got {env_id!r}. Known env ids: {known_env_ids()}")
    family, sep, name = env_id.partition(":")
    if family in ENV_FAMILIES:
        *_, takes_name = ENV_FAMILIES[family]
        if takes_name and not name:
            raise ValueError(f"Env id {env_id!r} needs a name: {family}:<name>.")
        if not takes_name and name:
            kwargs.setdefault("task_type", name)
        adapter = _load_adapter(family)
        env = adapter(name, **kwargs) if takes_name else adapter(**kwargs)
    elif sep and "." in family or (sep and name and name[:1].isupper()):
        env = _load_user_env(env_id)(**kwargs)
    else:
        raise ValueError(f"Unknown env id {env_id!r}. Known env ids: {known_env_ids()}")
    if not getattr(env, "env_id", ""):
        try:
            env.env_id = env_id
        except AttributeError:
            pass
    return env
