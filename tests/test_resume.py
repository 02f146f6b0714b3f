"""Kill and resume: a trainer killed with SIGKILL mid-run, or while writing a checkpoint, resumes from the last
complete checkpoint and reproduces the uninterrupted run's remaining losses exactly; a half-written checkpoint is
never picked. The runs are subprocesses (tests/resume_child.py) under hard timeouts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from trl_empg import EMPGConfig, EMPGTrainer
from trl_empg.rollout import AgentPrompts
from trl_empg.training.checkpoints import checkpoint_complete, last_complete_checkpoint
from trl_empg.workflows.tiny import build_tiny_model, build_tokenizer

CHILD = Path(__file__).resolve().parent / "resume_child.py"
TIMEOUT = 600


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory) -> Path:
    corpus = [f"train/{seed}:" + ",".join(["left"] * n) for seed in range(8) for n in range(4)]
    corpus += [AgentPrompts("plain").system(), "left", "right", "finish"]
    tokenizer = build_tokenizer(corpus * 5, vocab_size=400)
    model = build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64)
    folder = tmp_path_factory.mktemp("agent")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(agent_dir: Path, output_dir: Path, losses: Path, mode: str) -> int:
    child = subprocess.run(
        [sys.executable, str(CHILD), str(agent_dir), str(output_dir), str(losses), mode],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if child.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(child.stderr[-3000:])
    return child.returncode


def read_losses(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(agent_dir, tmp_path_factory) -> dict[int, float]:
    folder = tmp_path_factory.mktemp("full")
    assert run(agent_dir, folder / "run", folder / "losses.jsonl", "full") == 0
    losses = {entry["step"]: entry["loss"] for entry in read_losses(folder / "losses.jsonl")}
    assert sorted(losses) == [1, 2, 3, 4] and len(set(losses.values())) > 1
    return losses


@pytest.mark.parametrize(("mode", "resumed_from"), [("kill-mid-run", 2), ("kill-in-save", 2)])
def test_killed_run_resumes_with_the_same_losses(agent_dir, tmp_path, uninterrupted, mode, resumed_from):
    output, losses = tmp_path / "run", tmp_path / "losses.jsonl"
    assert run(agent_dir, output, losses, mode) == -signal.SIGKILL
    killed = read_losses(losses)
    assert [entry["step"] for entry in killed] == list(range(1, resumed_from + 1 if mode == "kill-mid-run" else 4))
    if mode == "kill-in-save":  # step 3's weights and optimizer were written, its trainer_state.json only in part
        assert (output / "checkpoint-3" / "model.safetensors").exists()
        assert not checkpoint_complete(output / "checkpoint-3")
    assert last_complete_checkpoint(output) == str(output / f"checkpoint-{resumed_from}")

    assert run(agent_dir, output, losses, "resume") == 0
    resumed = [entry for entry in read_losses(losses) if entry["pid"] != killed[0]["pid"]]
    assert [entry["step"] for entry in resumed] == list(range(resumed_from + 1, 5))
    # Exactly: same sampled episodes (torch RNG, env seeds, data order), same weights, same optimizer state.
    assert {entry["step"]: entry["loss"] for entry in resumed} == {
        step: loss for step, loss in uninterrupted.items() if step > resumed_from
    }
    assert checkpoint_complete(output / "checkpoint-4")


def test_resume_refuses_a_half_written_checkpoint(agent_dir, tmp_path):
    output = tmp_path / "run"
    (output / "checkpoint-7").mkdir(parents=True)
    (output / "checkpoint-7" / "trainer_state.json").write_text('{"global_step": 7, "log_hi')
    (output / "checkpoint-5").mkdir()
    (output / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 4}')  # another step's state
    assert last_complete_checkpoint(output) is None
    (output / "checkpoint-3").mkdir()
    (output / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3}')
    assert last_complete_checkpoint(output) == str(output / "checkpoint-3")

    config = EMPGConfig(output_dir=str(tmp_path / "empty"), use_cpu=True, bf16=False, report_to="none", max_steps=1)
    tokenizer = build_tokenizer(["left right finish"] * 5, vocab_size=300)
    trainer = EMPGTrainer(
        build_tiny_model(tokenizer, hidden_size=16, intermediate_size=32),
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": ["hi"] * 4}),
    )
    with pytest.raises(ValueError, match="No complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match=r"checkpoint-7 is not a complete checkpoint.*checkpoint-3 instead"):
        trainer.train(resume_from_checkpoint=str(output / "checkpoint-7"))
