"""Every env data loader names the file and the line (or JSON key / element) on bad input, as an EnvDataError (an
EnvError, so one bad game fails one episode; a ValueError, so a bad file given at build time stops the run early)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from trl_empg.envs import EnvDataError, EnvError, check_env_name
from trl_empg.envs.base import read_json_file
from trl_empg.envs.pool import EnvPool


def _bad(pattern: str):
    return pytest.raises(EnvDataError, match=pattern)


def test_env_data_error_is_an_env_error_and_a_value_error(tmp_path: Path) -> None:
    assert issubclass(EnvDataError, EnvError) and issubclass(EnvDataError, ValueError)
    file = tmp_path / "game.json"
    file.write_text('{\n  "a": 1,\n  "b": \n}\n')
    with _bad(rf"^{file}:4: a game is not valid JSON at column 1 \(Expecting value\)\.$"):
        read_json_file(file, "a game")
    file.write_text("[1]")
    with _bad(rf"^{file}: a game must be a JSON object at the top level, got list\.$"):
        read_json_file(file, "a game")
    with _bad(rf"^{tmp_path / 'nope.json'}: a game does not exist\.$"):
        read_json_file(tmp_path / "nope.json", "a game")
    file.write_bytes(b'{"a": "\xff"}')
    with _bad(rf"^{file}: a game is not readable as UTF-8 text"):
        read_json_file(file, "a game")


# ------------------------------------------------------------------------------------------------------- ALFWorld
@pytest.fixture(scope="module")
def alfworld_game(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One generated ALFWorld-style game (a few seconds), whose contents the tests damage."""
    pytest.importorskip("alfworld")
    from trl_empg.envs.alfworld.env import ALFWorldEnv

    root = tmp_path_factory.mktemp("alfworld")
    env = ALFWorldEnv("pick_and_place_simple", data_dir=root / "no-data", cache_dir=root / "cache")
    [path] = env.generate("train", [0])
    return json.loads(path.read_text())


def _official_tree(root: Path, games: dict[str, dict | str]) -> Path:
    """``json_2.1.1/train/<task folder>/trial_T0/game.tw-pddl`` for each (folder, contents) in order."""
    for folder, game in games.items():
        trial = root / "json_2.1.1" / "train" / folder / "trial_T0"
        trial.mkdir(parents=True)
        (trial / "game.tw-pddl").write_text(game if isinstance(game, str) else json.dumps(game))
    return root


def test_alfworld_official_game_listing_names_a_broken_file(tmp_path: Path) -> None:
    pytest.importorskip("alfworld")
    from trl_empg.envs.alfworld.env import ALFWorldEnv

    root = _official_tree(tmp_path, {"pick_and_place_simple-Apple-None-Fridge-1": '{"solvable": true,\n "x": }'})
    env = ALFWorldEnv(data_dir=root, mode="official")
    game_file = root / "json_2.1.1/train/pick_and_place_simple-Apple-None-Fridge-1/trial_T0/game.tw-pddl"
    with _bad(rf"^{game_file}:2: ALFWorld game file \(a JSON object with the keys pddl_domain, pddl_problem, "):
        env.task_seeds("train")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda g: g.pop("pddl_problem"), r"missing key 'pddl_problem' \(expected the game's pddl problem text\)"),
        (lambda g: g.update(grammar=5), r"key 'grammar' must be a non-empty string, got int"),
        (lambda g: g.update(walkthrough=["go to fridge 1", 3]), r"key 'walkthrough' element #1 must be a command"),
        (
            lambda g: g.update(pddl_problem=g["pddl_problem"][:-40]),
            r"ALFWorld's engine rejected this game: its PDDL \(keys 'pddl_domain' and 'pddl_problem'\) does not parse",
        ),
        (
            lambda g: g.update(grammar="\n\n  {{{"),
            r"ALFWorld's engine rejected this game: key 'grammar' does not parse at its line 3, column 3 \(Failed",
        ),
    ],
    ids=["missing-key", "wrong-type", "walkthrough", "pddl", "grammar"],
)
def test_alfworld_official_bad_game_fails_its_episode_only(
    alfworld_game: dict, tmp_path: Path, damage, message
) -> None:
    """In a pool (as in training), the bad game's reset is an error result naming file and key; the next game plays."""
    bad = json.loads(json.dumps(alfworld_game))
    damage(bad)
    games = {"pick_and_place_simple-A-None-B-1": bad, "pick_and_place_simple-A-None-B-2": alfworld_game}
    root = _official_tree(tmp_path, games)
    bad_file = root / "json_2.1.1/train/pick_and_place_simple-A-None-B-1/trial_T0/game.tw-pddl"
    with EnvPool("alfworld", {"data_dir": str(root), "mode": "official"}) as pool:
        failed, played = pool.reset([(0, 0, "train"), (1, 1, "train")])
        assert failed.done and failed.error and f"{bad_file}: " in failed.error
        assert re.search(message, failed.error), failed.error
        assert played.error is None and played.info["gold_actions"] == alfworld_game["walkthrough"]
        assert pool.faults.errors == 1


def test_alfworld_damaged_generated_game_says_how_to_regenerate(alfworld_game: dict, tmp_path: Path) -> None:
    pytest.importorskip("alfworld")
    from trl_empg.envs.alfworld.env import ALFWorldEnv

    env = ALFWorldEnv("pick_and_place_simple", data_dir=tmp_path / "no-data", cache_dir=tmp_path / "cache")
    path = env._generated_dir("train") / "0.tw-pddl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**alfworld_game, "alfworld_style": {"task_type": "juggle"}}))
    with _bad(rf"^{path}: key 'alfworld_style.task_type' must be one of .*got 'juggle'; delete the file to have it"):
        env.reset(seed=0)
    path.write_text(json.dumps(alfworld_game)[:100])
    with _bad(
        rf"^{path}:1: ALFWorld game file .* is not valid JSON at column 17 \(Unterminated string .*\); delete the"
    ):
        env.reset(seed=0)


def test_alfworld_generation_failure_names_the_seeds_the_folder_and_the_error(tmp_path, monkeypatch) -> None:
    pytest.importorskip("alfworld")
    from trl_empg.envs.alfworld.env import ALFWorldEnv

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Traceback ...' >&2\necho 'RuntimeError: No solvable game' >&2\nexit 3\n")
    fake.chmod(0o755)
    env = ALFWorldEnv(data_dir=tmp_path / "no-data", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(sys, "executable", str(fake))
    with pytest.raises(
        EnvError,
        match=r"seeds \['7'\], task type all\) into .*/train/all failed with exit code 3: "
        r"RuntimeError: No solvable game",
    ):
        env.reset(seed=7)


# ------------------------------------------------------------------------------------------------------ TextWorld
@pytest.fixture(scope="module")
def textworld_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding one compiled coin_collector game (about ten seconds to generate)."""
    pytest.importorskip("textworld")
    from trl_empg.envs.textworld import TextWorldEnv

    cache = tmp_path_factory.mktemp("textworld") / "coin"
    TextWorldEnv("coin_collector", level=1, cache_dir=cache).game_file(0)
    return cache


def _damaged_cache(textworld_cache: Path, tmp_path: Path, suffix: str, damage) -> tuple[Path, Path]:
    cache = tmp_path / "coin"
    shutil.copytree(textworld_cache, cache)
    file = cache / f"tw-train-0{suffix}"
    damage(file)
    return cache, file


@pytest.mark.parametrize(
    ("suffix", "damage", "message"),
    [
        (
            ".task.json",
            lambda f: f.write_text('{"gold_actions": [\n  "take coin",\n'),
            r":3: TextWorld task file .* is not valid JSON at column 1 \(",
        ),
        (".task.json", lambda f: f.write_text('{"gold": []}'), r": key 'gold_actions' must be a list of command"),
        (".json", lambda f: f.write_text('{"version": 1}'), r": TextWorld game description without the keys \['KB'"),
        (
            ".json",
            lambda f: f.write_text('{"KB":\n\n  ]'),
            r":3: TextWorld game description is not valid JSON at column 3 \(",
        ),
        (".z8", lambda f: f.write_bytes(f.read_bytes()[:5000]), r": truncated: 5000 bytes, its header says \d+\."),
        (".z8", lambda f: f.write_bytes(b"\x09" + f.read_bytes()[1:]), r": not a Z-machine story file: byte 0"),
        (".z8", lambda f: f.write_bytes(b""), r": 0 bytes, too short for a Z-machine story file"),
        (".z8", lambda f: f.write_bytes(f.read_bytes()[:3000] + bytes(400_000)), r": corrupt: its contents do not"),
    ],
    ids=["task-syntax", "task-key", "game-keys", "game-syntax", "z8-truncated", "z8-version", "z8-empty", "z8-sum"],
)
def test_textworld_damaged_cached_game_fails_its_episode_only(textworld_cache, tmp_path, suffix, damage, message):
    """Before this check a truncated .z8 ended the whole process (jericho: "Fatal error: Story file read error")."""
    cache, file = _damaged_cache(textworld_cache, tmp_path, suffix, damage)
    with EnvPool("textworld:coin_collector", {"level": 1, "cache_dir": str(cache)}) as pool:
        [result] = pool.reset([(0, 0, "train")])
        assert result.done and pool.faults.errors == 1
        assert re.search(f"{file}{message}", result.error), result.error
        assert f"Delete {cache / 'tw-train-0'}.* to have the game generated again." in result.error


def test_textworld_incomplete_cache_entry_is_generated_again(textworld_cache, tmp_path, monkeypatch) -> None:
    from trl_empg.envs.textworld import TextWorldEnv

    cache, file = _damaged_cache(textworld_cache, tmp_path, ".task.json", Path.unlink)
    env = TextWorldEnv("coin_collector", level=1, cache_dir=cache)
    generated = []
    monkeypatch.setattr(env, "_generate", lambda split, seed, path: generated.append((split, seed, path)))
    env.game_file(0)
    assert generated == [("train", 0, cache / "tw-train-0.z8")]


def test_textworld_generation_failure_names_the_game_and_the_error(tmp_path: Path) -> None:
    pytest.importorskip("textworld")
    from trl_empg.envs.textworld import TextWorldEnv

    env = TextWorldEnv("coin_collector", level=1000, cache_dir=tmp_path)
    with pytest.raises(EnvError, match=rf"seed 0 .* into {tmp_path / 'tw-train-0.z8'} failed with exit code 1: \w+"):
        env.reset(seed=0)


# --------------------------------------------------------------------------------------------------- ScienceWorld
def test_scienceworld_unknown_task_suggests_and_lists_the_valid_ones() -> None:
    pytest.importorskip("scienceworld")
    from trl_empg.envs.scienceworld import resolve_task

    with pytest.raises(
        ValueError,
        match=r"^Unknown ScienceWorld task 'boill'\. Did you mean 'boil'\? Valid task "
        r"names: \['boil', 'melt',.*; or their ids: \['1-1',",
    ):
        resolve_task("boill")
    assert resolve_task(" Boil") == resolve_task("Matter Changes of State (Boiling)") == "boil"
    with pytest.raises(ValueError, match=r"^my\.yaml line 3: env_id 'scienceworld:boill': Unknown ScienceWorld task"):
        check_env_name("scienceworld:boill", where="my.yaml line 3")
    check_env_name("scienceworld:1-1")
    check_env_name("twx:anything")  # left to make(): TWX lists its games from its JVM


def test_recipe_with_an_unknown_env_name_names_the_recipe_line(tmp_path: Path) -> None:
    pytest.importorskip("scienceworld")
    from trl_empg.training.recipe import parse_args

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "# ScienceWorld\nmodel_name_or_path: some/model\nenv_id: scienceworld:find-living\nuse_cpu: true\n"
    )
    with pytest.raises(
        ValueError,
        match=rf"^{recipe} line 3 \(env_id\): env_id 'scienceworld:find-living': Unknown "
        r"ScienceWorld task 'find-living'\. Did you mean 'find-living-thing'",
    ):
        parse_args(["--config", str(recipe), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"^--env_id: env_id 'textworld:cookin': Unknown TextWorld challenge"):
        parse_args(["--config", str(recipe), "--output_dir", str(tmp_path / "out"), "--env_id", "textworld:cookin"])


# ------------------------------------------------------------------------------------------ WebShop and search
def test_webshop_json_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    from trl_empg.envs.webshop.data import WebShopDataError, load_official

    (tmp_path / "items_shuffle_1000.json").write_text('[\n {"asin": "B01",\n  "name" "x"}\n]')
    with pytest.raises(
        WebShopDataError, match=rf"^{tmp_path / 'items_shuffle_1000.json'}:3: not valid JSON at column 10 \("
    ):
        load_official(tmp_path)
    assert issubclass(WebShopDataError, EnvDataError)


def test_webshop_damaged_generated_catalogue_is_generated_again(tmp_path: Path) -> None:
    from trl_empg.envs.webshop.gen import load_generated

    catalogue = load_generated(tmp_path, num_products=20, goals_per_product=1)
    [cached] = tmp_path.glob("generated-*.json")
    cached.write_text(cached.read_text()[:1000])
    with pytest.warns(UserWarning, match=rf"{cached}: unreadable cached catalogue \(JSONDecodeError"):
        again = load_generated(tmp_path, num_products=20, goals_per_product=1)
    assert again.to_json() == catalogue.to_json() and json.loads(cached.read_text()) == catalogue.to_json()


def test_search_files_name_the_line(tmp_path: Path) -> None:
    from trl_empg.envs.search.data import load_corpus, load_questions

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"id": "0", "contents": "a"}\n{"id": "1", "contents": "\xe9t\xe9"}\n')
    with _bad(rf"^{corpus}:2: not UTF-8 text \(invalid continuation byte\)\.$"):
        load_corpus(corpus)
    corpus.write_text('{"id": "0", "contents": "a"}\n{"id": "1", "contents": }\n')
    with _bad(rf"^{corpus}:2: not valid JSON at column 25 \(Expecting value\)\.$"):
        load_corpus(corpus)
    questions = tmp_path / "questions.json"
    questions.write_text('[\n {"question": "q", "data_source": "nq", "golden_answers": ["a"]},\n {"question": }\n]')
    with _bad(rf"^{questions}:3: not valid JSON at column 15 \(Expecting value\)\.$"):
        load_questions(questions)
    questions.write_text('[{"question": "q", "data_source": "nq"}]')
    with _bad(rf"^{questions} row 0: field 'golden_answers'"):
        load_questions(questions)
    parquet = tmp_path / "questions.parquet"
    parquet.write_bytes(b"not parquet at all")
    pytest.importorskip("pyarrow")
    with _bad(rf"^{parquet}: not a readable Parquet file \(ArrowInvalid"):
        load_questions(parquet)
