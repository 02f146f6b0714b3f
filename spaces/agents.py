"""Which agents the page offers, loading them once, and what settings each was trained with.

An agent is a local checkpoint directory, a Hub model id, or the built-in tiny agent (randomly initialised, built
offline on first use), loaded through :meth:`trl_empg.rollout.policy.HFPolicy.from_pretrained` without
``trust_remote_code``. Its settings come from its ``run_config.json`` (``trl-empg push`` uploads it), whose
``training`` section uses the recipe's field names, so it is read with no renaming; the tiny agent takes the
quickstart recipe's.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from agent_settings import DemoSettings, SpaceError, first_line
from environments import DEFAULT_ENV
from hosting import Deadline, active_policy, check_text
from huggingface_hub.utils import HFValidationError, validate_repo_id

from trl_empg.bundled import bundled_agent, installed_agents
from trl_empg.hub.push import RUN_CONFIG_NAME
from trl_empg.rollout import EpisodeEngine, EpisodeState, GenerateFn
from trl_empg.rollout.policy import HFPolicy, SamplingSettings
from trl_empg.workflows.gguf import PROVENANCE_NAME
from trl_empg.workflows.quickstart import DEFAULT_RECIPE
from trl_empg.workflows.tiny import build_tiny_agent

#: The checkpoint the page offers when nothing else is around: a tiny agent built offline on first use.
BUILTIN_TINY = "builtin:tiny-twx-coin"
#: Where the quickstart leaves its agents, relative to the repository (or the working directory).
QUICKSTART_CHECKPOINTS = {"EMPG agent": "runs/quickstart/empg", "warm start (SFT)": "runs/quickstart/sft"}
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Menu entries for the package's bundled agents: ``bundled:<name>``.
BUNDLED_PREFIX = "bundled:"
#: Most agents found under runs/ that the menu lists.
MAX_LOCAL_AGENTS = 20
#: Loaded checkpoints kept in memory (two, so a comparison or a switch back does not reload).
MAX_LOADED_AGENTS = 2


def available_checkpoints(extra: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(label, value) menu entries: the operator's checkpoints (its policy's, then ``extra``), the agents shipped with
    the package, the agents found under ``runs/`` (:func:`local_agents`), the tiny agent. These are all a visitor may
    pick (see :func:`check_checkpoint`)."""
    entries = [(name, name) for name in dict.fromkeys([*active_policy().checkpoints, *extra])]
    entries += [(about, BUNDLED_PREFIX + name) for name, about in installed_agents().items()]
    entries += local_agents()
    entries.append(("tiny random agent, built offline (twx:coin tokenizer)", BUILTIN_TINY))
    return entries


def local_agents() -> list[tuple[str, str]]:
    """Agents under ``runs/`` (of the working directory, then of the repository): the quickstart's, models converted
    by ``trl-empg convert-gguf`` (``gguf_provenance.json``) and finished training runs (``run_config.json``), at most
    :data:`MAX_LOCAL_AGENTS`, never checkpoint folders."""
    entries: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for base in (Path.cwd(), REPO_ROOT):
        found = [base / relative for relative in QUICKSTART_CHECKPOINTS.values()]
        for depth in ("*", "*/*", "*/*/*"):
            found += sorted((base / "runs").glob(f"{depth}/config.json"), key=str)
        for path in (item.parent if item.name == "config.json" else item for item in found):
            if path.resolve() in seen or not (path / "config.json").is_file() or path.name.startswith("checkpoint-"):
                continue
            shown = str(path.relative_to(base)) if base == Path.cwd() else str(path)
            quickstart = next((name for name, rel in QUICKSTART_CHECKPOINTS.items() if Path(rel) == Path(shown)), None)
            if quickstart:
                label = f"{quickstart} ({shown})"
            elif (path / PROVENANCE_NAME).is_file():
                label = f"converted from GGUF ({shown})"
            elif (path / RUN_CONFIG_NAME).is_file():
                label = f"trained run ({shown})"
            else:
                continue
            seen.add(path.resolve())
            entries.append((label, shown))
    return entries[:MAX_LOCAL_AGENTS]


def hub_model_size_mb(repo_id: str) -> float:
    """The summed size of a Hub model's files, read from the Hub's metadata before anything is downloaded."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, files_metadata=True)
    return sum(sibling.size or 0 for sibling in info.siblings or ()) / 1e6


def is_hub_id(name: str) -> bool:
    """``namespace/name`` as the Hub spells a model id (which no path starting with ``/``, ``.`` or ``~`` is)."""
    if name.count("/") != 1 or name.startswith((".", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def check_checkpoint(checkpoint: Any) -> str:
    """The checkpoint of a request if the Space offers it: one of its menu's, or, when the operator allows typed Hub
    ids, a Hub model id (never a local path) within the size cap. Nothing is read or loaded before this passes."""
    checkpoint = check_text(checkpoint, "The checkpoint").strip()
    if not checkpoint:
        raise SpaceError("Choose a checkpoint from the menu.")
    menu = [value for _, value in available_checkpoints()]
    if checkpoint in menu:
        return checkpoint
    policy = active_policy()
    if not policy.allow_hub_ids:
        raise SpaceError(f"The checkpoint {checkpoint!r} is not offered here; choose one of {menu}.")
    if not is_hub_id(checkpoint) or Path(checkpoint).expanduser().exists():
        raise SpaceError(f"{checkpoint!r} is not a Hub model id (namespace/name); local paths cannot be typed here.")
    try:
        size = hub_model_size_mb(checkpoint)
    except Exception as error:  # Offline, no such repo, gated: all mean "cannot offer it".
        raise SpaceError(f"Cannot load the agent {checkpoint!r}: {first_line(str(error))}") from error
    if size > policy.max_hub_model_mb:
        raise SpaceError(
            f"The Hub model {checkpoint!r} is {size:.0f} MB; this Space loads at most {policy.max_hub_model_mb} MB "
            "(max_hub_model_mb, set by its operator)."
        )
    return checkpoint


def cache_dir() -> Path:
    """Where the built-in tiny agent is built: ``$TRL_EMPG_SPACE_CACHE``, else ``~/.cache/trl-empg/space``."""
    return Path(os.environ.get("TRL_EMPG_SPACE_CACHE", Path.home() / ".cache" / "trl-empg" / "space"))


_BUILD_LOCK = threading.Lock()


def resolve_checkpoint(checkpoint: str) -> str:
    """A local directory or Hub id for an offered ``checkpoint`` (:func:`check_checkpoint`); the built-in tiny agent
    is built into the cache once.

    Built into a temporary directory and renamed, so a half-written agent never looks like a checkpoint.
    """
    checkpoint = check_checkpoint(checkpoint)
    if checkpoint.startswith(BUNDLED_PREFIX):
        return str(bundled_agent(checkpoint.removeprefix(BUNDLED_PREFIX)))
    if checkpoint != BUILTIN_TINY:
        if not Path(checkpoint).expanduser().exists() and not is_hub_id(checkpoint):
            raise SpaceError(f"Cannot load the agent {checkpoint!r}: no such local directory (and not a Hub id).")
        return checkpoint
    target = cache_dir() / "tiny-twx-coin"
    with _BUILD_LOCK:
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix="tiny-", dir=target.parent))
            try:
                build_tiny_agent(DEFAULT_ENV, staging)
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            except Exception as error:
                shutil.rmtree(staging, ignore_errors=True)
                raise SpaceError(f"Cannot build the tiny agent (it needs {DEFAULT_ENV}): {error}") from error
    return str(target)


# -- settings a checkpoint was trained with ---------------------------------------------------------------------------


@dataclass
class CheckpointDefaults:
    """What the page presets when a checkpoint is chosen: its training's settings and environment, and why."""

    settings: DemoSettings
    env_id: str | None
    note: str


def read_run_config(checkpoint: str) -> dict[str, Any] | None:
    """The checkpoint's ``run_config.json`` (local or on the Hub), or None when it has none or cannot be fetched."""
    path = Path(checkpoint).expanduser() / RUN_CONFIG_NAME
    try:
        if Path(checkpoint).expanduser().is_dir():
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(checkpoint, RUN_CONFIG_NAME)).read_text(encoding="utf-8"))
    except Exception:  # Offline, no such repo or file, malformed JSON: all mean "no recorded settings".
        return None


def quickstart_recipe() -> dict[str, Any]:
    """The packaged quickstart recipe (``trl_empg/recipes/quickstart.yaml``), whose settings the tiny agent shares."""
    return yaml.safe_load(DEFAULT_RECIPE.read_text(encoding="utf-8"))


def checkpoint_defaults(checkpoint: str) -> CheckpointDefaults:
    """The settings the checkpoint was trained with (from its ``run_config.json``), else the settings' defaults."""
    if checkpoint == BUILTIN_TINY:
        recipe = quickstart_recipe()
        return CheckpointDefaults(
            DemoSettings.from_training(recipe),
            recipe.get("env_id") or DEFAULT_ENV,
            "Built-in tiny agent: randomly initialised, so expect random actions and near-maximal entropy. "
            "Settings: the quickstart recipe's.",
        )
    try:
        checked = check_checkpoint(checkpoint)
        config = read_run_config(resolve_checkpoint(checked) if checked.startswith(BUNDLED_PREFIX) else checked)
    except SpaceError as error:
        return CheckpointDefaults(DemoSettings.from_mapping(), None, f"Error: {error}")
    training = (config or {}).get("training") or {}
    if not training:
        return CheckpointDefaults(
            DemoSettings.from_mapping(),
            None,
            f"No {RUN_CONFIG_NAME} found: using EMPGConfig's defaults. Set them to the agent's training values.",
        )
    try:
        settings = DemoSettings.from_training(training)
    except SpaceError as error:
        note = f"Ignored the settings in {RUN_CONFIG_NAME}: {error}"
        return CheckpointDefaults(DemoSettings.from_mapping(), None, note)
    return CheckpointDefaults(
        settings, training.get("env_id") or None, f"Settings read from the checkpoint's {RUN_CONFIG_NAME}."
    )


# -- loaded agents ----------------------------------------------------------------------------------------------------


@dataclass
class Suggestion:
    """The agent's reply for a position, its parsed action and its step entropy (mean over the reply's tokens)."""

    reply: str
    action: str | None
    entropy: float | None


def mean(values: Sequence[float] | None) -> float | None:
    return math.fsum(values) / len(values) if values else None


class LoadedAgent:
    """A loaded checkpoint shared by every session.

    Generation records entropies through a forward hook on the model, so two generations on one model at the same
    time would mix their entropies: every generation holds the agent's lock.
    """

    def __init__(self, name: str, policy: HFPolicy) -> None:
        self.name = name
        self.model = policy.model
        self.tokenizer = policy.tokenizer
        self.lock = threading.Lock()
        #: ln |V|: the entropy of a uniformly random token, for reference next to the step entropies.
        self.max_entropy = math.log(int(self.model.config.get_text_config().vocab_size))

    def generate_fn(self, sampling: SamplingSettings, deadline: Deadline) -> GenerateFn:
        """Generation with ``sampling`` that refuses to start once the request's ``deadline`` has passed."""
        policy = HFPolicy(self.model, self.tokenizer, sampling)

        def generate(prompts: list[list[int]], max_new_tokens: int) -> tuple[list[list[int]], list[list[float]]]:
            with self.lock:
                deadline.check()
                return policy(prompts, max_new_tokens)

        return generate

    def suggest(
        self, engine: EpisodeEngine, state: EpisodeState, sampling: SamplingSettings, deadline: Deadline
    ) -> Suggestion:
        """The reply the agent would give in this position: generated on ``engine.context(state)`` within the turn's
        limit and read by the engine itself, on a copy of the state (the episode is not changed)."""
        generate = self.generate_fn(sampling, deadline)
        (ids,), entropies = generate([engine.context(state)], engine.turn_limit(state))
        record = engine.apply_reply(copy.deepcopy(state), ids, None if entropies is None else entropies[0])
        return Suggestion(record.reply, record.action, mean(record.entropies))


_AGENTS: OrderedDict[str, LoadedAgent] = OrderedDict()
_AGENTS_LOCK = threading.Lock()


def load_agent(checkpoint: str) -> LoadedAgent:
    """The agent of ``checkpoint``, loaded once and kept among the most recently used ones."""
    name = resolve_checkpoint(checkpoint)
    with _AGENTS_LOCK:
        if name in _AGENTS:
            _AGENTS.move_to_end(name)
            return _AGENTS[name]
        try:
            agent = LoadedAgent(name, HFPolicy.from_pretrained(name))
        except Exception as error:
            raise SpaceError(first_line(str(error)) or f"Cannot load the agent {checkpoint!r}.") from error
        _AGENTS[name] = agent
        while len(_AGENTS) > MAX_LOADED_AGENTS:
            _AGENTS.popitem(last=False)
        return agent
