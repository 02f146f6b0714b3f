"""The ``trl-empg`` command itself: every subcommand's ``--help``, ``build-tiny`` and a shortened ``quickstart``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from trl_empg.cli import build_parser, main, wants_bitsandbytes
from trl_empg.workflows.quickstart import DEFAULT_RECIPE

REPO = Path(__file__).resolve().parents[1]

SUBCOMMANDS = ("build-tiny", "sft", "train", "eval", "push", "pull", "card", "quickstart", "convert-gguf")


def test_every_subcommand_is_registered_and_has_help(capsys):
    registered = build_parser()._subparsers._group_actions[0].choices
    assert set(registered) == set(SUBCOMMANDS)
    for command in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "trl_empg", "--help"], capture_output=True, text=True, timeout=300, check=True
    )
    assert all(command in result.stdout for command in SUBCOMMANDS)


def _stderr_of(*argv: str, **env: str) -> str:
    import os

    result = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "kernels" in line or "bitsandbytes" in line.lower()]


def test_help_prints_no_third_party_noise():
    # bitsandbytes (imported by peft, which transformers' TrainingArguments import) warns about the optional
    # `kernels` package when it loads; the CLI keeps it unimported unless 4-bit/8-bit weights are asked for.
    for argv in (["-m", "trl_empg", "--help"], ["-m", "trl_empg", "train", "--help"], ["-m", "trl_empg.train", "-h"]):
        stderr = _stderr_of(*argv)
        assert not _noise(stderr), (argv, stderr)
    # The check can fail: loading bitsandbytes anyway prints its line (on CPUs where its CPU backend warns).
    forced = _stderr_of("-m", "trl_empg", "train", "--help", TRL_EMPG_IMPORT_BITSANDBYTES="1")
    probe = _stderr_of("-c", "import bitsandbytes") if not _noise(forced) else forced
    if not _noise(probe):
        pytest.skip("bitsandbytes prints nothing on import on this machine")
    assert _noise(forced)


def test_bitsandbytes_is_loaded_when_4bit_is_asked_for():
    qlora = REPO / "recipes" / "alfworld" / "qwen2.5-7b-instruct-empg-qlora.yaml"
    assert wants_bitsandbytes(["--config", str(qlora)])
    assert not wants_bitsandbytes(["--config", str(DEFAULT_RECIPE)])
    assert wants_bitsandbytes(["--config", str(DEFAULT_RECIPE), "--load_in_4bit"])
    assert wants_bitsandbytes(["--load-in-8bit", "true"]) and not wants_bitsandbytes(["--load_in_4bit", "false"])
    code = "from trl_empg.cli import defer_bitsandbytes; import sys; defer_bitsandbytes(sys.argv[1:]); import peft"
    code += "; print('bitsandbytes' in sys.modules and sys.modules['bitsandbytes'] is not None)"
    for argv, loaded in ((["--config", str(qlora)], "True"), (["--config", str(DEFAULT_RECIPE)], "False")):
        result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
        assert result.stdout.strip() == loaded, result.stderr


def test_the_default_recipe_is_package_data():
    import trl_empg

    package = Path(trl_empg.__file__).resolve().parent
    assert DEFAULT_RECIPE.is_file() and DEFAULT_RECIPE.is_relative_to(package)
    assert (REPO / "recipes").resolve() == package / "recipes"  # the top-level recipes/ is the package's


def test_build_tiny_cli_saves_an_agent_with_action_tokens(tmp_path, capsys):
    out = tmp_path / "tiny"
    main(
        [
            "build-tiny",
            "--env_id",
            "twx:coin",
            "--output-dir",
            str(out),
            "--num-tasks",
            "5",
            "--vocab-size",
            "500",
            "--hidden-size",
            "16",
            "--action-tokens",
        ]
    )
    assert str(out) in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.tokenize("move north") == ["move north"]
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 16


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_prints_both_agents(tmp_path, capsys):
    """The real pipeline, shrunk: 2 warm-start steps, 1 RL step of 2 tasks x 2 episodes, 2 evaluation tasks."""
    run_dir = tmp_path / "qs"
    main(
        [
            "quickstart",
            "--run-dir",
            str(run_dir),
            "--sft-steps",
            "2",
            "--eval-tasks",
            "2",
            "--seed",
            "1",
            "--action-tokens",
            # Flags quickstart does not know go to the train stage's recipe parser, and set every stage's rollouts.
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--num_generations",
            "2",
            "--max_turns",
            "3",
        ]
    )
    printed = capsys.readouterr().out
    assert "warm start" in printed and "EMPG" in printed and "total time" in printed
    summary = json.loads((run_dir / "quickstart_summary.json").read_text())
    assert summary["seed"] == 1 and summary["eval_tasks"] == 2
    assert list(summary["seconds"]) == ["build-tiny", "sft", "eval warm start", "train EMPG", "eval trained"]
    for agent in ("warm_start", "empg"):
        assert 0.0 <= summary[agent]["success_rate"] <= 1.0
        assert summary[agent]["mean_steps"] <= 3
    assert summary["plots"] and all(Path(plot).suffix == ".png" and Path(plot).is_file() for plot in summary["plots"])
    state = json.loads((run_dir / "empg" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    assert AutoTokenizer.from_pretrained(run_dir / "empg").tokenize("take coin") == ["take coin"]
    for name in ("sft", "empg"):
        report = json.loads((run_dir / f"eval_{name}.json").read_text())
        assert report["split"] == "test" and report["num_episodes"] == 2
