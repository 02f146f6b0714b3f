"""benchmarks/overhead.py's model options and schedules on tiny settings (seconds; no SmolLM2 needed): the
``smollm2`` preset's settings, ``--model PATH`` with bf16 weights and LoRA in the lockstep schedule (per-round wall
and CPU-time ratios, identical rollouts), the older ``runs`` schedule, and redrawing a result file written before
CPU time was recorded."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--batch-size", "2", "--num-generations", "2", "--completion-length", "4", "--prompt-words", "4"]


def _overhead():
    spec = importlib.util.spec_from_file_location("overhead_benchmark", REPO / "benchmarks" / "overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args: list[str]) -> dict:
    command = [sys.executable, str(REPO / "benchmarks" / "overhead.py"), *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(Path(args[args.index("--output") + 1]).read_text())


def test_smollm2_preset_fills_only_what_is_not_given(tmp_path):
    overhead = _overhead()
    args = overhead.parse_args(["--preset", "smollm2", "--model", str(tmp_path), "--completion-length", "8"])
    assert (args.model, args.dtype, args.finetune) == (str(tmp_path), "bfloat16", "lora")
    assert (args.completion_length, args.prompt_words) == (8, overhead.MODEL_PRESETS["smollm2"]["prompt_words"])
    default = overhead.parse_args([])  # the shape presets keep their old settings
    assert (default.preset, default.model, default.dtype, default.finetune) == ("cpu-small", None, None, "full")
    assert (default.completion_length, default.prompt_words) == (64, 32)
    with pytest.raises(SystemExit, match="convert-gguf"):
        overhead.parse_args(["--preset", "smollm2", "--model", str(tmp_path / "missing")])


@pytest.mark.slow
def test_model_folder_bf16_lora_lockstep(tmp_path):
    """A pretrained folder in bf16 with LoRA: every round pairs the two configurations' steps, same completions."""
    overhead = _overhead()
    model, tokenizer = overhead._load_model(overhead.parse_args(["--preset", "tiny"]))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    output = tmp_path / "overhead.json"
    report = _run(
        ["--model", str(tmp_path / "model"), "--dtype", "bfloat16", "--finetune", "lora", "--learning-rate", "0"]
        + ["--configs", "grpo", "empg_generation", "--rounds", "2", "--steps", "1", "--warmup", "1", *TINY]
        + ["--output", str(output)]
    )
    assert report["settings"]["schedule"] == "lockstep" and report["weight_dtype"] == "torch.bfloat16"
    assert 0 < report["trainable_parameters"] < report["parameters"]
    assert len(report["rounds"]) == 2 and all(set(r["steps"]) == {"grpo", "empg_generation"} for r in report["rounds"])
    row = report["summary"]["empg_generation"]
    assert row["entropy_source"] == "generation" and len(row["time_ratio_per_round"]) == 2
    assert row["cpu_time_ratio_vs_grpo"] > 0 and len(row["cpu_time_ratio_per_round"]) == 2
    low, high = row["time_ratio_round_spread"]["range"]
    assert low <= row["time_ratio_round_spread"]["median"] <= high and row["memory_ratio_vs_grpo"] > 0
    ci_low, ci_high = row["cpu_time_ratio_round_spread"]["median_ci95"]
    assert min(row["cpu_time_ratio_per_round"]) <= ci_low <= ci_high <= max(row["cpu_time_ratio_per_round"])
    assert row["same_rollouts_share"] == 1.0  # learning rate 0: the two policies stay equal
    assert output.with_suffix(".png").stat().st_size > 1000


@pytest.mark.slow
def test_runs_schedule_still_works(tmp_path):
    output = tmp_path / "overhead.json"
    report = _run(
        ["--preset", "tiny", "--schedule", "runs", "--configs", "grpo", "empg_generation"]
        + ["--rounds", "1", "--steps", "1", "--warmup", "1", *TINY, "--output", str(output)]
    )
    row = report["summary"]["empg_generation"]
    assert len(report["runs"]["grpo"]) == 1 and len(row["time_ratio_per_round"]) == 1
    assert row["cpu_time_ratio_vs_grpo"] > 0 and "same_rollouts_share" not in row


def test_plot_redraws_results_without_cpu_times(tmp_path):
    report = json.loads((REPO / "benchmarks" / "results" / "overhead_cpu_rerun.json").read_text())
    path = _overhead().plot(report, tmp_path / "old.png")
    assert path.stat().st_size > 1000
