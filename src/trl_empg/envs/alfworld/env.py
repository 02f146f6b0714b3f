"""ALFWorld adapter: household tasks played in ALFWorld's own TextWorld PDDL engine.

Games come from one of two sources, both played by the same engine (``textworld``'s ``PddlEnv`` with ALFWorld's
PDDL domain, text grammar and ``AlfredDemangler`` object naming), so observations and admissible actions are
ALFWorld's exact text:

- ``official``: the json_2.1.1 games that ``alfworld-download`` puts under ``$ALFWORLD_DATA`` (train, valid_seen as
  ``dev``, valid_unseen as ``test``).
- ``generated``: ALFWorld-style problems written offline by :mod:`trl_empg.envs.alfworld.gen` from the floor-plan
  layouts, PDDL domain, grammar and goal library that the alfworld wheel ships, because the official games cannot be
  downloaded everywhere. They are cached on disk.

ALFWorld's own ``AlfredTWEnv`` is never used: with zero games its reset loops forever, and it needs its YAML config.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import alfworld.info
import fast_downward
import textworld
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
from textworld.envs.pddl import PddlEnv, textgen
from textworld.logic import Rule

from ..base import EnvDataError, EnvError, Info, TextEnv, check_split, make_info, read_json_file
from .plans import search_plan

__all__ = ["ALFWorldEnv", "ALFWorldEngine", "TASK_TYPES", "search_plan"]

#: ALFWorld's six task types (its ``TASK_TYPES`` ids 1-6, in that order).
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
#: Where each split's official games live under ``json_2.1.1``.
OFFICIAL_SPLIT_DIRS = {"train": "train", "dev": "valid_seen", "test": "valid_unseen"}
#: Task seeds of split s are ``SEED_OFFSETS[s] + i``, so the splits' seeds never collide.
SEED_OFFSETS = {"train": 0, "dev": 100_000, "test": 200_000}
#: How many generated tasks ``task_seeds`` lists per split; dev and test match ALFWorld's valid_seen / valid_unseen.
GENERATED_TASKS = {"train": 1000, "dev": 140, "test": 134}
#: Bump when :mod:`trl_empg.envs.alfworld.gen` writes different games for the same (split, seed, task type).
CACHE_VERSION = 1
#: Where ``gold_actions`` comes from: the game's full-knowledge walkthrough, or an expert that searches (see
#: :func:`search_plan`).
GOLD_PLANS = ("expert", "search")
#: The engine's reply to a command it cannot execute.
INVALID_ACTION_FEEDBACK = "Nothing happens."

_BANNER = "-= Welcome to TextWorld, ALFRED! =-"
#: What a game file is, for error messages.
GAME_FILE = "ALFWorld game file (a JSON object with the keys pddl_domain, pddl_problem, grammar, solvable)"
#: The text keys the engine loads from a game file.
GAME_TEXT_KEYS = ("pddl_domain", "pddl_problem", "grammar")
_PDDL2SAS = fast_downward.pddl2sas
_PARSE_SYMBOLS = textgen._parse_and_convert
_ENGINE_LOCK = threading.RLock()


@functools.lru_cache(maxsize=16)
def _memoized_pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
    """``fast_downward.pddl2sas`` is a pure function of its text inputs, but ``PddlEnv`` calls it twice on every load
    and again twice on every reset (~0.4 s each); memoizing it makes repeated resets of a game cheap."""
    return _PDDL2SAS(domain, problem, verbose=verbose, optimize=optimize)


@functools.lru_cache(maxsize=8192)
def _parsed_symbols(text: str, rule_name: str, trace: bool) -> Any:
    return _PARSE_SYMBOLS(text, rule_name=rule_name, trace=trace)


def _memoized_parse_symbols(text: str, rule_name: str, trace: bool = False) -> Any:
    """The engine's text grammar re-parses (with TatSu) every command template and feedback rule on every step, which
    is most of a step's time; parse each text once and hand out copies (the engine mutates the symbols it gets)."""
    return copy.deepcopy(_parsed_symbols(text, rule_name, trace))


class _MemoizedQueryRule(Rule):
    """The grammar module's ``Rule``, whose ``parse_conjunctive_query`` (re-run for every rule condition on every
    step) is memoized; the parsed rules are only read."""

    parse_conjunctive_query = classmethod(functools.lru_cache(maxsize=4096)(Rule.parse_conjunctive_query.__func__))


@contextlib.contextmanager
def _engine_call() -> Iterator[None]:
    """Memoize the engine's pure but slow parsing and PDDL translation while it runs (about 3x faster steps, cheap
    repeated resets), and undo ``pddl2sas``'s overwrite of ``sys.argv`` (it sets it to ``["translate.py", "domain",
    "task"]`` for good, which would break any later argument parsing). The patches touch only modules that serve
    ``PddlEnv`` and are undone on exit; a lock keeps engines on other threads from undoing them mid-call."""
    with _ENGINE_LOCK:
        argv = sys.argv
        fast_downward.pddl2sas = _memoized_pddl2sas
        textgen._parse_and_convert = _memoized_parse_symbols
        textgen.Rule = _MemoizedQueryRule
        try:
            yield
        finally:
            fast_downward.pddl2sas = _PDDL2SAS
            textgen._parse_and_convert = _PARSE_SYMBOLS
            textgen.Rule = Rule
            sys.argv = argv


class ALFWorldEngine:
    """One ALFWorld game engine (``PddlEnv`` + ``AlfredDemangler``) reused across games.

    Each ``PddlEnv`` loads a private copy of Fast Downward's shared library, so one engine per env keeps that cost
    and the memory to one copy; ``load`` only re-reads a game when it changes. No walkthrough is requested from the
    engine: without one in the game file it would run Fast Downward's search, which can take minutes and gigabytes
    on two-object tasks; expert plans come from the game files instead.
    """

    def __init__(self) -> None:
        self._env = AlfredDemangler(shuffle=False)(PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True)))
        self._loaded: str | None = None

    def load(self, game: str | Mapping[str, Any]) -> None:
        """Load a game file (skipped if it is already loaded) or a game dict with the keys of a ``.tw-pddl`` file."""
        if isinstance(game, str) and game == self._loaded:
            return
        self._loaded = None
        with _engine_call():
            self._env.load(game)
        self._loaded = game if isinstance(game, str) else None

    def entity_names(self) -> dict[str, str]:
        """PDDL name (lower case) -> the name the player sees, e.g. "apple 1", as ALFWorld's demangler set it."""
        return {info.id: info.name for info in self._env._entity_infos.values()}

    def reset(self) -> textworld.GameState:
        with _engine_call():
            return self._env.reset()

    def step(self, command: str) -> textworld.GameState:
        with _engine_call():
            state, _, _ = self._env.step(command)
        return state

    def close(self) -> None:
        """Free this engine's Fast Downward state.

        The library copy is deliberately not dlclose'd (as ``fast_downward.close_lib`` would): its C++ static
        destructors are registered with the C runtime's exit handlers, and unmapping the code makes the process
        segfault when it exits.
        """
        if self._env is not None:
            self._env.unwrapped.downward_lib.cleanup()
            self._env = None
            self._loaded = None


def _official_root(data_dir: Path) -> Path:
    """Accept both ``$ALFWORLD_DATA`` and its ``json_2.1.1`` folder."""
    return data_dir / "json_2.1.1" if (data_dir / "json_2.1.1").is_dir() else data_dir


def _official_game_files(root: Path, split: str) -> Iterator[Path]:
    yield from sorted((root / OFFICIAL_SPLIT_DIRS[split]).glob("*/*/game.tw-pddl"))


def _official_task_type(game_file: Path) -> str:
    """ALFWorld names each task folder ``<task_type>-<object>-<mrecep>-<receptacle>-<scene>``."""
    return game_file.parent.parent.name.split("-", 1)[0]


def _official_games(root: Path, split: str, task_type: str | None) -> list[Path]:
    """The playable official games of a split, filtered like ALFWorld's ``AlfredTWEnv`` (no movable-receptacle or
    sliced tasks, only games marked solvable)."""
    games = []
    for game_file in _official_game_files(root, split):
        if "movable" in game_file.parent.parent.name or "Sliced" in game_file.parent.parent.name:
            continue
        kind = _official_task_type(game_file)
        if kind not in TASK_TYPES or (task_type is not None and kind != task_type):
            continue
        if not read_json_file(game_file, GAME_FILE).get("solvable", False):
            continue
        games.append(game_file)
    return games


def read_game(game_file: Path, generated: bool = False) -> dict[str, Any]:
    """A game file's contents, checked enough that the engine's own errors (a bare ``KeyError``, an
    ``AttributeError`` on a number) cannot happen: raises :class:`EnvDataError` naming the file and the key."""
    hint = "; delete the file to have it generated again" if generated else ""
    try:
        game = read_json_file(game_file, GAME_FILE)
    except EnvDataError as error:
        raise EnvDataError(f"{str(error).removesuffix('.')}{hint}.") from None

    def fail(problem: str) -> EnvDataError:
        return EnvDataError(f"{game_file}: {problem}{hint}.")

    for key in GAME_TEXT_KEYS:
        if key not in game:
            raise fail(f"missing key {key!r} (expected the game's {key.replace('_', ' ')} text)")
        if not isinstance(game[key], str) or not game[key].strip():
            raise fail(f"key {key!r} must be a non-empty string, got {type(game[key]).__name__}")
    walkthrough = game.get("walkthrough")
    if walkthrough is not None:
        if not isinstance(walkthrough, list):
            raise fail(f"key 'walkthrough' must be a list of commands, got {type(walkthrough).__name__}")
        for index, command in enumerate(walkthrough):
            if not isinstance(command, str):
                raise fail(f"key 'walkthrough' element #{index} must be a command string, got {command!r}")
    if generated:
        style = game.get("alfworld_style")
        task_type = style.get("task_type") if isinstance(style, dict) else None
        if task_type not in TASK_TYPES:
            raise fail(f"key 'alfworld_style.task_type' must be one of {list(TASK_TYPES)}, got {task_type!r}")
    return game


def _engine_error(game_file: Path, game: Mapping[str, Any], error: Exception) -> str:
    """Which part of a game file the engine could not load: the PDDL (Fast Downward's parser) or the grammar (TatSu's,
    which knows the line and column)."""
    frames = [frame.filename for frame in traceback.extract_tb(error.__traceback__)]
    if any("fast_downward" in name for name in frames):
        where = "its PDDL (keys 'pddl_domain' and 'pddl_problem') does not parse"
    elif any(f"{os.sep}tatsu{os.sep}" in name for name in frames) and isinstance(getattr(error, "pos", None), int):
        grammar = game["grammar"]
        line = grammar.count("\n", 0, error.pos) + 1
        column = error.pos - (grammar.rfind("\n", 0, error.pos) + 1) + 1
        where = f"key 'grammar' does not parse at its line {line}, column {column}"
    else:
        where = "the engine could not start it"
    message = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{game_file}: ALFWorld's engine rejected this game: {where} ({type(error).__name__}: {message})."


class ALFWorldEnv(TextEnv):
    """ALFWorld household tasks (heat, cool, clean, pick-and-place, two objects, look in the light).

    Built by ``make("alfworld")`` (all six task types) or ``make("alfworld:<task_type>")``.

    ``mode="auto"`` plays the official ALFWorld games when ``data_dir`` (default ``$ALFWORLD_DATA``, else
    ``~/.cache/alfworld``) holds them, and otherwise **ALFWorld-style** generated problems: real ALFWorld floor plans
    (receptacles and the poses they are used from), the rooms' object types and ALFWorld's goal templates, with
    objects placed at random, played in ALFWorld's engine so the text and admissible actions are ALFWorld's; they are
    not the official task set, and scores on them are not comparable with published ALFWorld numbers. Generated splits
    use disjoint floor plans (test: the plans ALFRED holds out, dev: three more per room type, train: the rest).

    ``gold_actions`` is the game file's walkthrough: for generated games a full-knowledge expert's plan, checked to
    win in the engine; official games without one get an empty list (ALFWorld's planner can run for minutes on them).
    The reset observation is ALFWorld's intro without its "-= Welcome to TextWorld, ALFRED! =-" banner. The reward
    is 1.0 on the winning step; ``max_steps`` steps end the episode.

    ``gold_plan="search"`` reports instead an expert that cannot see inside receptacles it has not visited
    (:func:`search_plan`): the full-knowledge plan walks straight to a hidden object, which an imitating agent cannot
    learn. ``generated_tasks`` (e.g. ``{"test": 200}``) lists more (or fewer) generated tasks per split than
    :data:`GENERATED_TASKS`. ``hide_actions`` (command prefixes, e.g. ``["examine ", "help", "look"]``) are left out
    of ``admissible_actions``; they still play and are not flagged invalid.

    ``task_seeds(split)`` lists ``SEED_OFFSETS[split] + i``. Official mode accepts only those seeds; generated mode
    accepts any integer seed (the game is a function of split, seed and task type) and writes its game the first
    time it is reset, in a subprocess stopped after ``generation_timeout`` seconds, to
    ``<cache_dir>/v<CACHE_VERSION>-alfworld<version>/<split>/<task type or "all">/<seed>.tw-pddl``.
    """

    task_description = (
        "You are an agent in a household. The first observation describes the room and ends with 'Your task is to: "
        "...'. Complete the task with the admissible actions: go to, take, move, open, close, heat, cool, clean, use, "
        "examine, look, inventory."
    )

    def __init__(
        self,
        task_type: str | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        mode: Literal["auto", "official", "generated"] = "auto",
        max_steps: int = 50,
        cache_dir: str | os.PathLike[str] | None = None,
        generation_timeout: float = 60.0,
        gold_plan: Literal["expert", "search"] = "expert",
        generated_tasks: Mapping[str, int] | None = None,
        hide_actions: Sequence[str] = (),
    ) -> None:
        if isinstance(hide_actions, str) or not all(isinstance(p, str) and p.strip() for p in hide_actions):
            raise ValueError(f"hide_actions must be a list of non-empty action prefixes, got {hide_actions!r}.")
        self.hide_actions = tuple(hide_actions)
        if gold_plan not in GOLD_PLANS:
            raise ValueError(f"gold_plan must be one of {list(GOLD_PLANS)}, got {gold_plan!r}.")
        counts = dict(GENERATED_TASKS)
        for split, count in (generated_tasks or {}).items():
            check_split(split)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"generated_tasks[{split!r}] must be an integer >= 1, got {count!r}.")
            counts[split] = count
        self.gold_plan = gold_plan
        self.generated_tasks = counts
        if task_type is not None and task_type not in TASK_TYPES:
            raise ValueError(f"Unknown ALFWorld task type {task_type!r}; expected one of {list(TASK_TYPES)}.")
        if mode not in ("auto", "official", "generated"):
            raise ValueError(f"mode must be 'auto', 'official' or 'generated', got {mode!r}.")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
        self.task_type = task_type
        self.max_steps = max_steps
        self.generation_timeout = generation_timeout
        data_dir = data_dir or os.environ.get("ALFWORLD_DATA") or Path.home() / ".cache" / "alfworld"
        self.data_dir = Path(data_dir).expanduser()
        self._official_root = _official_root(self.data_dir)
        if mode == "auto":
            mode = "official" if self._has_official_games() else "generated"
        elif mode == "official" and not self._has_official_games():
            raise FileNotFoundError(
                f"No official ALFWorld games (json_2.1.1/{{train,valid_seen,valid_unseen}}/*/*/game.tw-pddl) under "
                f"{self.data_dir}. Run `alfworld-download` (needs internet) and set ALFWORLD_DATA, or use "
                f"mode='generated' for offline ALFWorld-style problems."
            )
        self.mode = mode
        root = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "trl_empg" / "alfworld"
        self.cache_dir = root / f"v{CACHE_VERSION}-alfworld{alfworld.info.__version__}"
        self._official: dict[str, list[Path]] = {}
        self._facts: dict[str, tuple[str, list[str]]] = {}
        self._search_plans: dict[str, list[str]] = {}
        self._engine: ALFWorldEngine | None = None
        self._admissible: list[str] = []
        self._steps = 0
        self._done = True

    # ----------------------------------------------------------------------------------------------------- games
    def _has_official_games(self) -> bool:
        return any(next(_official_game_files(self._official_root, split), None) for split in OFFICIAL_SPLIT_DIRS)

    def _official_split(self, split: str) -> list[Path]:
        if split not in self._official:
            self._official[split] = _official_games(self._official_root, split, self.task_type)
        return self._official[split]

    def task_seeds(self, split: str = "train") -> list[int]:
        check_split(split)
        count = len(self._official_split(split)) if self.mode == "official" else self.generated_tasks[split]
        return list(range(SEED_OFFSETS[split], SEED_OFFSETS[split] + count))

    def _generated_dir(self, split: str) -> Path:
        return self.cache_dir / split / (self.task_type or "all")

    def generate(self, split: str, seeds: list[int]) -> list[Path]:
        """Write the generated games of ``seeds`` that are not cached yet (one subprocess for all of them, under
        ``generation_timeout`` seconds per game) and return every seed's game file. Call it to warm the cache."""
        check_split(split)
        out_dir = self._generated_dir(split)
        paths = [out_dir / f"{int(seed)}.tw-pddl" for seed in seeds]
        missing = [str(int(seed)) for seed, path in zip(seeds, paths) if not path.exists()]
        if not missing:
            return paths
        out_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "trl_empg.envs.alfworld.gen", "--split", split, "--out-dir", str(out_dir)]
        command += ["--task-type", self.task_type or "all", "--", *missing]  # "--": negative seeds are not options
        package_root = str(Path(__file__).resolve().parents[3])  # src/: so the child imports this very trl_empg
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        timeout = self.generation_timeout * len(missing)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise EnvError(
                f"Generating ALFWorld-style {split} games {missing} took longer than {timeout:.0f} s and was stopped."
            ) from None
        if result.returncode != 0:
            last = next((line for line in reversed(result.stderr.splitlines()) if line.strip()), "no error output")
            raise EnvError(
                f"Generating ALFWorld-style {split} games (seeds {missing}, task type {self.task_type or 'all'}) "
                f"into {out_dir} failed with exit code {result.returncode}: {last}\n{result.stderr[-3000:]}"
            )
        return paths

    def _game_file(self, split: str, seed: int) -> Path:
        if self.mode == "generated":
            return self.generate(split, [seed])[0]
        games = self._official_split(split)
        index = seed - SEED_OFFSETS[split]
        if not 0 <= index < len(games):
            raise ValueError(
                f"Seed {seed} is not an official ALFWorld {split} task seed: the split has {len(games)} games "
                f"(task type {self.task_type or 'any'}) under {self._official_root}, seeds "
                f"{SEED_OFFSETS[split]}..{SEED_OFFSETS[split] + len(games) - 1}."
            )
        return games[index]

    def _game_facts(self, game_file: Path) -> tuple[str, list[str]]:
        """(task type, expert plan) of a game, read and checked once: the plan is the file's walkthrough (empty if it
        has none). A bad file raises :class:`EnvDataError`, which fails this episode only."""
        key = str(game_file)
        if key not in self._facts:
            game = read_game(game_file, generated=self.mode == "generated")
            if self.mode == "official":
                task_type = _official_task_type(game_file)
            else:
                task_type = game["alfworld_style"]["task_type"]
            self._facts[key] = (task_type, list(game.get("walkthrough") or []))
        return self._facts[key]

    # ---------------------------------------------------------------------------------------------------- protocol
    def reset(self, seed: int = 0, split: str = "train") -> tuple[str, Info]:
        check_split(split)
        game_file = self._game_file(split, int(seed))
        task_type, gold_actions = self._game_facts(game_file)
        if self._engine is None:
            self._engine = ALFWorldEngine()
        try:
            self._engine.load(str(game_file))
            state = self._engine.reset()
        except Exception as error:
            raise EnvDataError(_engine_error(game_file, read_game(game_file), error)) from error
        self._admissible = list(state["admissible_commands"])
        if self.gold_plan == "search" and gold_actions:
            gold_actions = self._search_plan(game_file, gold_actions)
        self._steps = 0
        self._done = False
        observation = state["feedback"].replace(_BANNER, "", 1).strip()
        info = make_info(
            admissible_actions=self._shown(),
            gold_actions=gold_actions,
            won=False,
            score=0.0,
            task_type=task_type,
            game_file=str(game_file),
        )
        return observation, info

    def _shown(self) -> list[str]:
        """The admissible commands without the hidden ones (which still play and are not flagged invalid)."""
        return (
            [a for a in self._admissible if not a.startswith(self.hide_actions)]
            if self.hide_actions
            else list(self._admissible)
        )

    def _search_plan(self, game_file: Path, expert: list[str]) -> list[str]:
        """The ``gold_plan="search"`` expert of a game (cached per game file); the full-knowledge plan if it cannot
        be written."""
        key = str(game_file)
        if key not in self._search_plans:
            names = self._engine.entity_names() if self._engine is not None else {}
            try:
                plan = search_plan(read_game(game_file)["pddl_problem"], names, expert, self._admissible)
            except (KeyError, ValueError, StopIteration):
                plan = list(expert)
            self._search_plans[key] = plan
        return list(self._search_plans[key])

    def step(self, action: str) -> tuple[str, float, bool, Info]:
        if self._engine is None:
            raise RuntimeError(f"{self.env_id or 'alfworld'}: call reset() before step().")
        if self._done:
            raise RuntimeError(f"{self.env_id or 'alfworld'}: the episode is over; call reset() to start another.")
        if not isinstance(action, str):
            raise TypeError(f"Actions are strings, got {type(action).__name__}.")
        command = " ".join(action.split()).lower()
        invalid = command not in self._admissible
        try:
            state = self._engine.step(command)
        except Exception as error:
            raise EnvError(f"ALFWorld's engine failed on {command!r}: {error!r}") from error
        self._steps += 1
        won = bool(state["won"])
        self._done = won or self._steps >= self.max_steps
        self._admissible = list(state["admissible_commands"])
        info = make_info(admissible_actions=self._shown(), won=won, score=float(won), invalid_action=invalid)
        return state["feedback"].strip(), float(won), self._done, info

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self._done = True
