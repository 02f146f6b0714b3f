"""Recipes: every file documents its hardware and exact launch command, names a real model, and matches its claims.

Training recipes (``recipes/<env>/*.yaml``, TrlParser format) and accelerate configs (``recipes/accelerate/*.yaml``,
accelerate's own format) are checked statically here; tests/test_cli_train.py dry-runs every training recipe. The
slow tests launch the quickstart recipe for real: through ``accelerate launch`` with the CPU config, and as two gloo
processes through torchrun.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser

from trl_empg.train import parse_args

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
TRAINING_RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if p.parent.name != "accelerate")
# Models the recipes may name: real Hub ids (checked by hand against the Hub), or a tiny agent built offline.
REAL_MODELS = {"Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct"}
BIN = Path(sys.executable).parent


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _header_lines(path: Path) -> list[str]:
    """The leading comment block."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def _header(path: Path) -> list[str]:
    """The leading comment block, without the '#'."""
    return [line[1:].strip() for line in _header_lines(path)]


# An indented header line that starts a shell command: optional VAR=value prefixes, then a launcher or tool.
_COMMAND = re.compile(r"^#\s{2,}(?:[A-Z_]+=\S+\s+)*(?:accelerate|python|torchrun|make|trl-empg|trl)\b")


def _launch_commands(path: Path) -> list[list[str]]:
    """The shell commands shown in the header (continuation lines joined), as argv lists."""
    commands, current = [], None
    for line in _header_lines(path):
        if current is None and not _COMMAND.match(line):
            continue  # prose
        current = f"{current or ''} {line[1:].strip()}"
        if current.endswith("\\"):
            current = current[:-1]
            continue
        commands.append(shlex.split(current, comments=True))
        current = None
    return commands


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("path", TRAINING_RECIPES + ACCELERATE_CONFIGS, ids=_rel)
def test_header_states_hardware_and_launch_command(path):
    header = _header(path)
    assert header, f"{_rel(path)} has no header comment"
    assert any(line.startswith("Sized for:") and len(line) > len("Sized for:") + 3 for line in header)
    commands = _launch_commands(path)
    assert commands, f"{_rel(path)}: no command under 'Launch:'"
    training = [argv for argv in commands if "trl_empg.train" in argv]
    assert training, f"{_rel(path)}: no trl_empg.train command"
    for argv in training:
        config_file = _flag(argv, "--config_file")
        assert config_file is None or (REPO / config_file).is_file(), f"missing accelerate config {config_file}"
        recipe = _flag(argv, "--config")
        assert recipe is not None and (REPO / recipe).is_file(), f"{_rel(path)}: launch names missing recipe {recipe}"
        if path in TRAINING_RECIPES:
            assert recipe == _rel(path), f"{_rel(path)}: its launch command trains {recipe}"
        else:
            assert config_file == _rel(path), f"{_rel(path)}: its launch command uses {config_file}"


@pytest.mark.parametrize("path", TRAINING_RECIPES, ids=_rel)
def test_recipe_names_a_real_model_or_the_tiny_agent_it_builds(path):
    model = yaml.safe_load(path.read_text())["model_name_or_path"]
    if model in REAL_MODELS:
        return
    # Otherwise an agent built offline under runs/ (never a user's absolute path), by commands the header shows.
    assert model.startswith("runs/"), f"{_rel(path)}: {model!r} is neither a known Hub model nor a runs/ agent"
    header = "\n".join(_header(path))
    assert model in header, f"{_rel(path)}: the header does not show how {model} is built"


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=_rel)
def test_accelerate_config_loads_with_accelerates_own_loader(path):
    config = load_config_from_file(str(path))  # rejects unknown top-level keys
    # Nested deepspeed/fsdp keys become `accelerate launch` flags; an unknown one would be silently ignored.
    flags = {action.dest for action in launch_command_parser()._actions}
    for section in ("deepspeed_config", "fsdp_config"):
        for key in getattr(config, section):
            flag = key if section != "fsdp_config" or key.startswith("fsdp") else f"fsdp_{key}"
            assert flag in flags, f"{_rel(path)}: {section}.{key} is not an accelerate launch option"
    if config.use_cpu:
        assert config.mixed_precision == "no" and config.num_processes == 1
    else:
        assert config.mixed_precision == "bf16"
    if config.num_machines > 1:
        text = path.read_text()
        for placeholder in ("machine_rank", "main_process_ip", "main_process_port"):
            assert re.search(rf"^#.*{placeholder}", text, re.MULTILINE), f"{placeholder} is not documented"
        assert config.main_process_ip and config.main_process_port


def _resolved(path: Path, monkeypatch):
    """The recipe as training would parse it on its target GPU (transformers refuses bf16 without one)."""
    import transformers.training_args

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
    monkeypatch.chdir(REPO)
    return parse_args(["--config", str(path)])


def _num_processes(path: Path) -> int:
    argv = next(argv for argv in _launch_commands(path) if "trl_empg.train" in argv)
    if _flag(argv, "--num_processes"):
        return int(_flag(argv, "--num_processes"))
    config_file = _flag(argv, "--config_file")
    return load_config_from_file(str(REPO / config_file)).num_processes if config_file else 1


ALFWORLD_PAPER = sorted((REPO / "recipes" / "alfworld").glob("*.yaml"))


@pytest.mark.parametrize("path", ALFWORLD_PAPER, ids=_rel)
def test_alfworld_recipes_follow_the_paper_setup(path, monkeypatch):
    """EMPG paper: 150 steps, group size 8, 16 groups per step, at most 50 turns, on the launch command's GPUs."""
    _, training, model = _resolved(path, monkeypatch)
    assert training.env_id == "alfworld" and training.max_turns == 50 and training.max_steps == 150
    assert training.num_generations == 8
    episodes = training.per_device_train_batch_size * training.gradient_accumulation_steps * _num_processes(path)
    assert episodes == 16 * 8, f"{episodes} episodes per optimizer step"
    assert training.modulation == ("empg" if "empg" in path.stem else "none")
    if "dapo" in path.stem:  # TRL's DAPO: token-level loss, clip-higher, no KL, overlong filtering
        assert training.loss_type == "dapo" and training.epsilon_high == 0.28 and training.epsilon == 0.2
        assert training.beta == 0.0 and training.mask_truncated_completions
    else:
        assert training.loss_type == "grpo" and training.beta > 0
    if "qlora" in path.stem:
        assert model.load_in_4bit and model.bnb_4bit_quant_type == "nf4" and model.use_peft
        assert set(model.lora_target_modules) >= {"q_proj", "k_proj", "v_proj", "o_proj"}
    if training.use_vllm:
        assert training.vllm_mode in ("colocate", "server")


@pytest.mark.parametrize("path", TRAINING_RECIPES, ids=_rel)
def test_gpu_recipes_match_their_launcher(path, monkeypatch):
    _, training, model = _resolved(path, monkeypatch)
    argv = next(argv for argv in _launch_commands(path) if "trl_empg.train" in argv)
    config_file = _flag(argv, "--config_file")
    on_gpu = config_file is not None and not load_config_from_file(str(REPO / config_file)).use_cpu
    assert training.use_cpu is not on_gpu
    if on_gpu:
        assert training.bf16 and model.dtype == "bfloat16"
        assert training.top_k == 0 and training.top_p == 1.0  # full-distribution sampling, the entropy EMPG uses
    if training.push_to_hub:
        assert training.hub_model_id and training.hub_strategy == "end"
    generation_batch = training.per_device_train_batch_size * training.steps_per_generation * _num_processes(path)
    assert generation_batch % training.num_generations == 0


# ------------------------------------------------------------------------------------------------------------------
# Real launches on CPU (slow)
# ------------------------------------------------------------------------------------------------------------------


def _run_with_hard_timeout(command: list[str], timeout: float) -> tuple[int | None, str]:
    """Run in a new process group; on timeout kill the whole group (launchers leave children behind otherwise)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, output


def _quickstart_overrides(agent: Path, output_dir: Path, per_device: int, num_generations: int) -> list[str]:
    return [
        "--config",
        "recipes/quickstart.yaml",
        "--model_name_or_path",
        str(agent),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        str(per_device),
        "--num_generations",
        str(num_generations),
        "--max_turns",
        "3",
    ]


@pytest.mark.slow
def test_accelerate_launch_with_the_cpu_config(tmp_path, twx_agent_dir):
    output_dir = tmp_path / "run"
    command = [str(BIN / "accelerate"), "launch", "--config_file", "recipes/accelerate/cpu.yaml", "-m"]
    command += ["trl_empg.train", *_quickstart_overrides(twx_agent_dir, output_dir, per_device=4, num_generations=2)]
    returncode, output = _run_with_hard_timeout(command, timeout=600)
    assert returncode == 0, output[-3000:]
    assert (output_dir / "model.safetensors").is_file()
    assert "empg/g/mean" in output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_through_torchrun(tmp_path, twx_agent_dir):
    # accelerate's MULTI_CPU config would silently run one process; torchrun starts two (gloo on CPU). They sometimes
    # hang or crash at exit on a small box, so the verdict is the saved model, not the exit code. Two episodes per
    # process and groups of four: TRL accepts that only when two processes together hold whole groups, so a run that
    # silently fell back to one process fails at config time and saves nothing.
    output_dir = tmp_path / "run"
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m"]
    command += ["trl_empg.train", *_quickstart_overrides(twx_agent_dir, output_dir, per_device=2, num_generations=4)]
    returncode, output = _run_with_hard_timeout(command, timeout=600)
    assert (output_dir / "model.safetensors").is_file(), f"exit {returncode}:\n{output[-3000:]}"
    assert "empg/g/mean" in output
