"""The resumable job runner of benchmarks/smollm2_agent.py, with fake stages (no model, no training; seconds).

What a session that stops anywhere relies on: a stage whose result file exists is skipped; a stage that fails or is
killed leaves no result file (so it is rerun); a pending stage whose input directory is gone (a fresh clone) first
rebuilds it, keeping the numbers recorded before; the manifest says what is done and what is left.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def agent() -> Any:
    spec = importlib.util.spec_from_file_location("smollm2_agent", REPO / "benchmarks" / "smollm2_agent.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


class Recorder:
    """Fake stage bodies: each call is recorded, artifacts are written as marker files, failures on demand."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.value = 0

    def stage(self, name: str, artifact: bool = False) -> Any:
        def run(job: Any) -> dict[str, Any]:
            self.calls.append(name)
            if name in self.fail:
                raise RuntimeError(f"{name} failed")
            self.value += 1
            if artifact:
                (self.work / name).mkdir(parents=True, exist_ok=True)
                (self.work / name / "model.bin").write_text(str(self.value))
            return {"value": self.value}

        return run


def _job(agent: Any, tmp_path: Path) -> tuple[Any, Recorder]:
    work = tmp_path / "work"
    recorder = Recorder(work)
    stages = [
        agent.Stage("base", recorder.stage("base", artifact=True), artifact=work / "base"),
        agent.Stage("zeroshot", recorder.stage("zeroshot"), needs=("base",)),
        agent.Stage("sft", recorder.stage("sft", artifact=True), needs=("base",), artifact=work / "sft"),
        agent.Stage("warm", recorder.stage("warm"), needs=("sft",)),
        agent.Stage("rl", recorder.stage("rl", artifact=True), needs=("sft",), artifact=work / "rl"),
        agent.Stage("rleval", recorder.stage("rleval"), needs=("rl",)),
    ]
    return agent.Job(stages, tmp_path / "results", work), recorder


def test_done_stages_are_skipped_and_the_rest_continue(agent, tmp_path):
    job, recorder = _job(agent, tmp_path)
    assert job.run(until="sft", log=lambda _: None) == ["base", "zeroshot", "sft"]
    manifest = json.loads((job.results_dir / "manifest.json").read_text())
    assert manifest["done"] == ["base", "zeroshot", "sft"] and manifest["left"] == ["warm", "rl", "rleval"]
    assert "smollm2_agent.py" in manifest["continue_command"]

    # A later session: the same command runs only what is left.
    recorder.calls.clear()
    assert job.run(log=lambda _: None) == ["warm", "rl", "rleval"]
    assert recorder.calls == ["warm", "rl", "rleval"]
    result = job.result("warm")
    assert result["stage"] == "warm" and result["stage_seconds"] >= 0 and "finished_at" in result

    recorder.calls.clear()
    assert job.run(log=lambda _: None) == [] and recorder.calls == []
    assert all(row["state"] == "done" for row in job.status())


def test_a_failed_stage_leaves_no_result_and_is_rerun(agent, tmp_path):
    job, recorder = _job(agent, tmp_path)
    recorder.fail = {"warm"}
    with pytest.raises(RuntimeError, match="warm failed"):
        job.run(log=lambda _: None)
    assert not job.result_path("warm").exists()
    assert not list(job.results_dir.glob("*.partial"))
    assert [row["stage"] for row in job.status() if row["state"] == "done"] == ["base", "zeroshot", "sft"]

    recorder.fail, recorder.calls = set(), []
    job.run(log=lambda _: None)
    assert recorder.calls == ["warm", "rl", "rleval"]


def test_a_half_written_result_counts_as_not_done(agent, tmp_path):
    job, recorder = _job(agent, tmp_path)
    job.run(until="base", log=lambda _: None)
    job.result_path("zeroshot").write_text('{"value": ')  # killed while writing
    assert not job.is_done("zeroshot")
    recorder.calls.clear()
    job.run(only=["zeroshot"], log=lambda _: None)
    assert recorder.calls == ["zeroshot"] and job.is_done("zeroshot")


def test_a_missing_artifact_is_rebuilt_before_the_stage_that_needs_it(agent, tmp_path):
    job, recorder = _job(agent, tmp_path)
    job.run(until="warm", log=lambda _: None)
    before = job.result("sft")

    # A fresh clone: the committed result files are there, the model directories are not.
    for name in ("base", "sft"):
        (job.work_dir / name / "model.bin").unlink()
        (job.work_dir / name).rmdir()
    status = {row["stage"]: row for row in job.status()}
    assert status["sft"]["state"] == "done" and status["sft"]["artifact_present"] is False

    recorder.calls.clear()
    job.run(log=lambda _: None)
    # rl needs sft's directory: sft is rebuilt first; sft needs base's, rebuilt before it. Done evaluations
    # (zeroshot, warm) are not rerun.
    assert recorder.calls == ["base", "sft", "rl", "rleval"]
    rebuilt = job.result("sft")
    assert rebuilt["rebuilt"] is True and rebuilt["previous"]["value"] == before["value"]
    assert rebuilt["value"] != before["value"]


def test_only_and_unknown_stages(agent, tmp_path):
    job, recorder = _job(agent, tmp_path)
    job.run(only=["base", "sft"], log=lambda _: None)
    assert recorder.calls == ["base", "sft"]
    with pytest.raises(ValueError, match="Unknown stages"):
        job.run(only=["nope"], log=lambda _: None)
    with pytest.raises(ValueError, match="needs unknown stages"):
        agent.Job([agent.Stage("a", lambda job: {}, needs=("b",))], tmp_path / "r", tmp_path / "w")
    with pytest.raises(ValueError, match="unique"):
        agent.Job([agent.Stage("a", lambda job: {}), agent.Stage("a", lambda job: {})], tmp_path / "r", tmp_path / "w")


def test_the_real_plan_is_well_formed(agent, tmp_path):
    """The stage list of the benchmark itself: warm starts before RL, every RL checkpoint evaluated, one RL
    command per method that differs only in the modulation and the output directory."""
    stages = agent.build_stages(tmp_path)
    names = [stage.name for stage in stages]
    assert names[0] == "convert"
    for bench in agent.BENCHMARKS:
        assert names.index(f"zeroshot_{bench}") < names.index(f"sft_{bench}") < names.index(f"warm_{bench}")
    first_rl = min(i for i, name in enumerate(names) if name.startswith("rl_"))
    assert all(name.startswith(("rl_", "rleval_")) for name in names[first_rl:-1]) and names[-1] == "card"
    plan = agent.RL
    evals = [name for name in names if name.startswith("rleval_")]
    assert len(evals) == len(plan.methods) * len(plan.seeds) * (plan.max_steps // plan.save_steps)
    job = agent.Job(stages, tmp_path / "results", tmp_path)
    grpo, empg = (agent.rl_argv(job, method, plan.benchmark, plan.seeds[0]) for method in ("grpo", "empg"))
    differing = {grpo[i - 1] for i, (a, b) in enumerate(zip(grpo, empg)) if a != b}
    assert differing == {"--modulation", "--output_dir"}
    assert grpo[grpo.index("--modulation") + 1] == "none" and empg[empg.index("--modulation") + 1] == "empg"


def test_card_says_what_a_local_start_was(tmp_path):
    """``trl-empg card --start_description``: a run started from a local warm start of a converted GGUF model says
    so on its card (the SmolLM2 example card is rendered this way)."""
    from trl_empg.hub.commands import card_main

    training = {
        "env_id": "search",
        "max_turns": 4,
        "max_turn_tokens": 32,
        "max_completion_length": 1536,
        "show_admissible_actions": True,
        "temperature": 1.0,
        "prompt_style": "plain",
        "modulation": "empg",
        "loss_type": "grpo",
    }
    model = {"model_name_or_path": "runs/smollm2-agent/sft_search", "use_peft": True, "lora_r": 16}
    (tmp_path / "run_config.json").write_text(json.dumps({"script": {}, "training": training, "model": model}))
    start = "a dequantised Q4_1 copy of SmolLM2-135M-Instruct, warm-started on gold plans"
    card = card_main(
        ["--run_dir", str(tmp_path), "--repo_id", "me/agent", "--start_description", start, "--output", "-"]
    )
    assert f"starting from {start}." in card and f"**Base model:** {start}" in card
