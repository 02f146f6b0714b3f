"""TextWorld adapter: games generated offline from TextWorld's challenges or its custom generator, played in-process.

``make("textworld:cooking")`` (also ``coin_collector``, ``treasure_hunter``, ``simple``, any challenge registered
with ``textworld.challenges``, with or without the ``tw-`` prefix, and ``custom``) builds a :class:`TextWorldEnv`.
Every task ``(split, seed)`` is one game, generated on first use and compiled to a Z-machine file with TextWorld's own
Inform 7 compiler, then cached on disk, so only the first reset of a seed pays the few seconds of generation.

Generation runs in a subprocess, for three reasons: it gets a hard timeout (TextWorld's quest search can run for a
long time on demanding settings), a fixed ``PYTHONHASHSEED`` (TextWorld iterates over sets while generating, so the
same seed gives byte-identical games on every machine and in every worker only with a fixed hash seed) and a failure
that cannot take the caller down. The subprocess also plays the gold path once, so every cached game is known to be
winnable and its plan is stored next to it instead of being recomputed by TextWorld's planner on every step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import textworld
import textworld.challenges

from .base import SPLITS, EnvDataError, EnvError, Info, TextEnv, check_split, make_info, read_json_file

# Small default difficulty per challenge: an LLM agent of a few hundred million parameters should win some games
# from the start (so that RL gets a signal) without the games being trivial.
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    # One ingredient to fetch in a 6-room house; the cookbook is in the kitchen.
    "tw-cooking": {
        "recipe": 1,
        "take": 1,
        "go": 6,
        "open": False,
        "cook": False,
        "cut": False,
        "drop": False,
        "recipe_seed": 0,
    },
    # Levels 1-100: a chain of ``level`` rooms with the coin at the far end.
    "tw-coin_collector": {"level": 5},
    # Levels 1-10: 5 rooms without doors, quest length 1-5; taking the wrong object loses the game.
    "tw-treasure_hunter": {"level": 5},
    "tw-simple": {"rewards": "dense", "goal": "detailed"},
    # TextWorld's generic generator (``tw-make custom``) with one quest of ``quest_length`` actions.
    "custom": {"world_size": 4, "nb_objects": 8, "quest_length": 3},
}

TASK_DESCRIPTIONS: dict[str, str] = {
    "tw-cooking": (
        "You are in a house and you are hungry. Find the kitchen, read the cookbook, gather and prepare the "
        "ingredients it lists, then prepare the meal and eat it."
    ),
    "tw-coin_collector": "Explore the rooms to find the coin, then take it.",
    "tw-treasure_hunter": (
        "Explore the rooms to find the object named in the objective and take it; taking the wrong object loses "
        "the game."
    ),
    "tw-simple": "Find the food item the objective asks for, bring it where it belongs and prepare it as told.",
    "custom": "Complete the quest described in the objective by interacting with the rooms and objects around you.",
}
GENERIC_TASK_DESCRIPTION = "Play the text adventure: complete the objective stated at the start of the game."

#: Seeds of the three splits start at these offsets, so task seeds are disjoint across splits.
SPLIT_SEED_OFFSETS = {"train": 0, "dev": 1_000_000, "test": 2_000_000}
#: Seed of the Z-machine's random number generator; jericho would otherwise seed it from the clock.
EMULATOR_SEED = 20_240_101
#: Characters of the ASCII-art banner TextWorld prints before the objective.
_BANNER_CHARS = frozenset(" \t_|\\$/<>")
_END_QUESTION = "Would you like to RESTART, RESTORE a saved game, QUIT or UNDO the last command?"
#: The files of one cached game, the ``.z8`` last: generation moves them into the cache in this order.
GAME_SUFFIXES = (".json", ".task.json", ".z8")
#: Top-level keys of TextWorld's game description (``.json``) that its ``Game.deserialize`` indexes.
_GAME_JSON_KEYS = ("KB", "world", "grammar", "quests", "infos")


def _canonical_challenge(challenge: str) -> str:
    """Map ``cooking`` / ``tw-cooking`` / ``custom`` to the name TextWorld registers; unknown names raise."""
    valid = sorted(textworld.challenges.CHALLENGES) + ["custom"]
    name = challenge.strip().lower()
    for candidate in (name, f"tw-{name}"):
        if candidate in valid:
            return candidate
    short = [name.removeprefix("tw-") for name in valid]
    raise ValueError(
        f"Unknown TextWorld challenge {challenge!r}; expected one of {short} (the 'tw-' prefix is optional)."
    )


def _split_settings(challenge: str, split: str) -> dict[str, Any]:
    """Settings through which a challenge draws its own train/valid/test distributions (unseen foods at test time)."""
    if challenge == "tw-cooking":
        return {"split": {"train": "train", "dev": "valid", "test": "test"}[split]}
    if challenge == "tw-simple":
        return {"test": split == "test"}
    return {}


def _game_seed(split: str, seed: int) -> int:
    """Generation seed of task ``seed`` of ``split``: disjoint across splits even when callers reuse a seed number."""
    game_seed = len(SPLITS) * seed + SPLITS.index(split)
    if not 0 <= game_seed < 2**32:
        raise ValueError(f"Task seed must be in [0, {(2**32 - 1) // len(SPLITS)}], got {seed}.")
    return game_seed


def _strip_banner(text: str) -> str:
    """Drop the ASCII-art title TextWorld prints at the start of every game: tokens with no information."""
    lines = text.split("\n")
    start = 0
    while start < len(lines) and set(lines[start]) <= _BANNER_CHARS:
        start += 1
    return "\n".join(lines[start:])


def _clean(text: str) -> str:
    """Trim TextWorld's layout: no indentation (the end message is centred with spaces), runs of blank lines become
    one, and Inform's closing RESTART/RESTORE/QUIT question (commands the env does not take) is dropped."""
    lines = [line.strip() for line in text.replace(_END_QUESTION, "").strip().split("\n")]
    return "\n".join(line for i, line in enumerate(lines) if line or lines[i - 1])


def _normalise_action(action: str) -> str:
    """One line, single spaces: the game reads one command per line and admissible commands are spelled that way."""
    return " ".join(action.split())


def check_story_file(path: Path) -> None:
    """Check a compiled game's Z-machine header (version, length, checksum) before the interpreter opens it: jericho
    ends the whole process (``Fatal error: Story file read error``) on a truncated or foreign file."""
    data = path.read_bytes()
    if len(data) < 64:
        raise EnvDataError(f"{path}: {len(data)} bytes, too short for a Z-machine story file (64-byte header).")
    version = data[0]
    if not 1 <= version <= 8:
        raise EnvDataError(f"{path}: not a Z-machine story file: byte 0 (version) is {version}, expected 1-8.")
    scale = 2 if version <= 3 else 4 if version <= 5 else 8
    length = int.from_bytes(data[0x1A:0x1C], "big") * scale
    if length and len(data) < length:
        raise EnvDataError(f"{path}: truncated: {len(data)} bytes, its header says {length}.")
    checksum = int.from_bytes(data[0x1C:0x1E], "big")
    if length and sum(data[0x40:length]) % 0x10000 != checksum:
        raise EnvDataError(f"{path}: corrupt: its contents do not match the header's checksum {checksum}.")


def read_gold_actions(task_file: Path) -> list[str]:
    """The gold actions of a cached game's ``.task.json``."""
    task = read_json_file(task_file, "TextWorld task file (a JSON object with gold_actions)")
    gold_actions = task.get("gold_actions")
    if not isinstance(gold_actions, list) or not all(isinstance(action, str) for action in gold_actions):
        raise EnvDataError(f"{task_file}: key 'gold_actions' must be a list of command strings, got {gold_actions!r}.")
    return gold_actions


def check_game_description(json_file: Path) -> None:
    """TextWorld's ``.json`` game description (its state tracking and admissible commands come from it)."""
    game = read_json_file(json_file, "TextWorld game description")
    missing = [key for key in _GAME_JSON_KEYS if key not in game]
    if missing:
        raise EnvDataError(
            f"{json_file}: TextWorld game description without the keys {missing} (expected {list(_GAME_JSON_KEYS)})."
        )


def generate_game(challenge: str, settings: dict[str, Any], game_seed: int, game_file: str) -> None:
    """Make, compile and verify one game in this process; :class:`TextWorldEnv` runs it in a subprocess.

    Writes ``game_file`` (``.z8``), TextWorld's ``.json`` beside it (the env's state tracking needs it) and a
    ``.task.json`` with the gold actions. Raises when the gold path does not win, so no unwinnable game is cached.
    """
    options = textworld.GameOptions()
    options.seeds = game_seed
    options.path = game_file
    if challenge == "custom":
        options.nb_rooms = settings["world_size"]
        options.nb_objects = settings["nb_objects"]
        options.quest_length = settings["quest_length"]
        game = textworld.generator.make_game(options)
    else:
        _, make_challenge_game, _ = textworld.challenges.CHALLENGES[challenge]
        game = make_challenge_game(settings=settings, options=options)
    compiled = textworld.generator.compile_game(game, options)

    env = textworld.start(compiled, textworld.EnvInfos(policy_commands=True, won=True, max_score=True))
    env.seed(EMULATOR_SEED)
    state = env.reset()
    gold_actions = list(state["policy_commands"])
    for action in gold_actions:
        state, _, done = env.step(action)
        if done:
            break
    env.close()
    if not state["won"]:
        raise RuntimeError(f"The gold path {gold_actions} does not win game {game.metadata.get('uuid')}.")
    task = {"gold_actions": gold_actions, "max_score": state["max_score"], "uuid": game.metadata.get("uuid")}
    Path(compiled).with_suffix(".task.json").write_text(json.dumps(task, indent=1))


class TextWorldEnv(TextEnv):
    """One TextWorld challenge as a text environment; each ``(split, seed)`` is a game generated on first use.

    Args:
        challenge: ``cooking``, ``coin_collector``, ``treasure_hunter``, ``simple`` (any challenge registered in
            ``textworld.challenges``, ``tw-`` prefix optional) or ``custom``.
        settings: difficulty settings of the challenge, merged over :data:`DEFAULT_SETTINGS` (e.g. ``{"go": 9,
            "cook": True}`` for cooking, ``{"level": 105}`` for coin_collector, ``{"world_size": 6}`` for custom).
        max_steps: the episode ends (not won) after this many steps.
        num_tasks: task seeds per split returned by :meth:`task_seeds`; games are only generated when played.
        cache_dir: where compiled games are kept; default ``~/.cache/trl_empg/textworld/<challenge>-<hash>`` where
            the hash covers the settings and the TextWorld version (a new version may generate different games).
        generation_timeout: seconds allowed to generate and compile one game before :class:`EnvError` is raised.
        **setting_overrides: settings given as keyword arguments, e.g. ``make("textworld:custom", world_size=6)``.
    """

    def __init__(
        self,
        challenge: str = "cooking",
        settings: dict[str, Any] | None = None,
        *,
        max_steps: int = 50,
        num_tasks: int = 1000,
        cache_dir: str | os.PathLike[str] | None = None,
        generation_timeout: float = 120.0,
        **setting_overrides: Any,
    ) -> None:
        self.challenge = _canonical_challenge(challenge)
        defaults = DEFAULT_SETTINGS.get(self.challenge, {})
        self.settings = {**defaults, **(settings or {}), **setting_overrides}
        if defaults and set(self.settings) - set(defaults):
            raise ValueError(
                f"Unknown settings {sorted(set(self.settings) - set(defaults))} for TextWorld challenge "
                f"{self.challenge!r}; valid settings: {sorted(defaults)}."
            )
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
        if not 1 <= num_tasks <= SPLIT_SEED_OFFSETS["dev"]:
            raise ValueError(f"num_tasks must be in [1, {SPLIT_SEED_OFFSETS['dev']}], got {num_tasks}.")
        self.max_steps = max_steps
        self.num_tasks = num_tasks
        self.generation_timeout = generation_timeout
        self.task_description = TASK_DESCRIPTIONS.get(self.challenge, GENERIC_TASK_DESCRIPTION)
        fingerprint = json.dumps({"settings": self.settings, "textworld": textworld.__version__}, sort_keys=True)
        digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
        if cache_dir is None:
            cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trl_empg" / "textworld"
            cache_dir = cache_root / f"{self.challenge}-{digest}"
        self.cache_dir = Path(cache_dir).expanduser()

        self._env: textworld.Environment | None = None
        self._game_file: Path | None = None
        self._gold_actions: list[str] = []
        self._admissible: list[str] = []
        self._score = 0.0
        self._steps = 0
        self._done = True

    # -- games -------------------------------------------------------------------------------------------------------

    def game_file(self, seed: int, split: str = "train") -> Path:
        """The compiled game of task ``seed`` of ``split``, generated (with a hard timeout) if it is not cached yet."""
        check_split(split)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Task seed must be a non-negative int, got {seed!r}.")
        # jericho treats a story file as a TextWorld game (status line hidden, score and end detection on) only when
        # its name starts with "tw-".
        path = self.cache_dir / f"tw-{split}-{seed}.z8"
        if not all(path.with_suffix(suffix).is_file() for suffix in GAME_SUFFIXES):
            self._generate(split, seed, path)  # not cached yet, or a file of it was deleted: generate it again
        return path

    def _load_checked(self, path: Path) -> textworld.Environment:
        """Start a cached game after checking its three files, so that a corrupt one raises :class:`EnvDataError`
        naming it (and how to regenerate it) instead of an interpreter error or the interpreter ending the process."""
        hint = f" Delete {path.with_suffix('')}.* to have the game generated again."
        try:
            check_story_file(path)
            check_game_description(path.with_suffix(".json"))
            gold_actions = read_gold_actions(path.with_suffix(".task.json"))
        except EnvDataError as error:
            raise EnvDataError(f"{error}{hint}") from None
        try:
            env = textworld.start(
                str(path),
                textworld.EnvInfos(admissible_commands=True, won=True, lost=True, score=True, max_score=True),
            )
        except Exception as error:
            raise EnvDataError(
                f"{path.with_suffix('.json')}: TextWorld could not load this game ({type(error).__name__}: {error})."
                f"{hint}"
            ) from error
        self._gold_actions = gold_actions
        return env

    def _generate(self, split: str, seed: int, path: Path) -> None:
        """Generate into a private temporary folder, then move the files in, the ``.z8`` last: a game is visible only
        once complete, so concurrent workers can share the cache (they generate identical files)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        settings = {**self.settings, **_split_settings(self.challenge, split)}
        workdir = Path(tempfile.mkdtemp(prefix=f".{path.stem}-", dir=self.cache_dir))
        try:
            tmp_file = workdir / path.name
            spec = [self.challenge, settings, _game_seed(split, seed), str(tmp_file)]
            src_root = str(Path(__file__).resolve().parents[2])
            code = (
                f"import json, sys; sys.path.insert(0, {src_root!r}); "
                "from trl_empg.envs.textworld import generate_game; generate_game(*json.loads(sys.argv[1]))"
            )
            process = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONHASHSEED": "0"},
                start_new_session=True,  # own process group: a timeout also kills the Inform 7 compiler it runs
                text=True,
            )
            try:
                output, _ = process.communicate(timeout=self.generation_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise EnvError(
                    f"TextWorld game generation for {self.challenge} {split} seed {seed} (settings {settings}) timed "
                    f"out after {self.generation_timeout:g} s; use easier settings or a larger generation_timeout."
                ) from None
            if process.returncode != 0:
                last = next((line for line in reversed(output.splitlines()) if line.strip()), "no output")
                raise EnvError(
                    f"TextWorld game generation for {self.challenge} {split} seed {seed} (settings {settings}) into "
                    f"{path} failed with exit code {process.returncode}: {last}\n{output[-3000:]}"
                )
            for suffix in GAME_SUFFIXES:
                os.replace(tmp_file.with_suffix(suffix), path.with_suffix(suffix))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    # -- protocol ----------------------------------------------------------------------------------------------------

    def task_seeds(self, split: str = "train") -> list[int]:
        offset = SPLIT_SEED_OFFSETS[check_split(split)]
        return list(range(offset, offset + self.num_tasks))

    def reset(self, seed: int = 0, split: str = "train") -> tuple[str, Info]:
        path = self.game_file(seed, split)
        try:
            if path != self._game_file or self._env is None:
                # A fresh TextWorld env per game: re-loading a game into a live env leaks ~0.5 MB per switch.
                self.close()
                self._env = self._load_checked(path)
                self._env.seed(EMULATOR_SEED)
                self._game_file = path
            state = self._env.reset()
        except EnvDataError:
            self.close()
            raise
        except Exception as error:
            self.close()
            raise EnvError(f"TextWorld failed to start {path}: {error!r}") from error
        self._steps = 0
        self._done = False
        self._score = 0.0
        observation, info = self._observe(state)
        info["gold_actions"] = list(self._gold_actions)
        return _strip_banner(observation), info

    def step(self, action: str) -> tuple[str, float, bool, Info]:
        if self._env is None or self._done:
            raise RuntimeError("The episode is over (or never started): call reset() first.")
        command = _normalise_action(action)
        invalid = command.lower() not in {admissible.lower() for admissible in self._admissible}
        try:
            state, _, game_over = self._env.step(command)
        except Exception as error:
            self.close()  # the interpreter may be in any state: the next reset starts a fresh one
            raise EnvError(f"TextWorld failed on action {command!r} in {self._game_file}: {error!r}") from error
        self._steps += 1
        previous_score = self._score
        observation, info = self._observe(state)
        self._done = bool(game_over or info["won"] or info["lost"] or self._steps >= self.max_steps)
        info["invalid_action"] = invalid
        return observation, self._score - previous_score, self._done, info

    def _observe(self, state: textworld.GameState) -> tuple[str, Info]:
        """Observation and info of a TextWorld state; the score is normalised by the game's max score (1.0 on a win,
        so rewards, the score deltas, sum to the final score)."""
        won, max_score = bool(state["won"]), state["max_score"] or 0
        if won:
            self._score = 1.0
        elif max_score > 0:
            self._score = min(max(state["score"] / max_score, 0.0), 1.0)
        else:
            self._score = 0.0
        self._admissible = list(state["admissible_commands"] or [])
        info = make_info(admissible_actions=self._admissible, won=won, score=self._score, lost=bool(state["lost"]))
        return _clean(state.feedback), info

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env = None
        self._game_file = None
        self._done = True
