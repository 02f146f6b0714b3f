"""Each benchmark script runs on a tiny setting and writes valid JSON (benchmarks are not unit tests: no figures
are checked here)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: int = 900) -> None:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_overhead_script(tmp_path):
    output = tmp_path / "overhead.json"
    _run(
        [
            "benchmarks/overhead.py",
            "--preset",
            "tiny",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--configs",
            "grpo",
            "empg_generation",
            "empg_forward",
            "--batch-size",
            "2",
            "--num-generations",
            "2",
            "--completion-length",
            "4",
            "--prompt-words",
            "4",
            "--output",
            str(output),
        ]
    )
    report = json.loads(output.read_text())
    summary = report["summary"]
    assert set(summary) == {"grpo", "empg_generation", "empg_forward"}
    assert summary["empg_generation"]["entropy_source"] == "generation"
    assert summary["empg_forward"]["time_ratio_vs_grpo"] > 0 and summary["grpo"]["peak_mib"] > 0
    assert output.with_suffix(".png").stat().st_size > 1000


@pytest.mark.slow
def test_rollout_throughput_script(tmp_path):
    output = tmp_path / "throughput.json"
    _run(
        [
            "benchmarks/rollout_throughput.py",
            "--episodes",
            "1",
            "2",
            "--workers",
            "0",
            "--max-turns",
            "2",
            "--output",
            str(output),
        ]
    )
    rows = json.loads(output.read_text())["results"]
    assert [row["episodes"] for row in rows] == [1, 2]
    assert all(row["batched"]["episodes_per_s"] > 0 and row["speedup_episodes_per_s"] > 0 for row in rows)
    assert output.with_suffix(".png").stat().st_size > 1000


@pytest.mark.slow
def test_learning_script(tmp_path):
    from trl_empg.workflows.tiny import build_tiny_agent

    agent = build_tiny_agent("twx:coin", tmp_path / "agent", num_tasks=5, hidden_size=32, intermediate_size=64)
    output_dir = tmp_path / "learning"
    _run(
        [
            "benchmarks/learning.py",
            "--warm-start",
            f"coin={agent}",
            "--games",
            "coin",
            "--methods",
            "grpo",
            "empg",
            "--seeds",
            "0",
            "--steps",
            "1",
            "--eval-every",
            "1",
            "--eval-tasks",
            "2",
            "--train-tasks",
            "4",
            "--batch-size",
            "2",
            "--num-generations",
            "2",
            "--max-turns",
            "2",
            "--max-completion-length",
            "256",
            "--output-dir",
            str(output_dir),
        ]
    )
    report = json.loads((output_dir / "learning.json").read_text())
    assert set(report["summary"]) == {"coin/grpo", "coin/empg"}
    assert set(report["summary"]["coin/empg"]) == {"0", "1"}  # the warm start and the one checkpoint
    assert all(Path(p).exists() for p in report["plots"])
    run = json.loads((output_dir / "coin-empg-seed0.json").read_text())
    assert run["warm_start"] == str(agent) and [e["step"] for e in run["evaluations"]] == [0, 1]


def _benchmark_module(name: str) -> ModuleType:
    """Import a benchmark script as a module (benchmarks/ is a folder of scripts, not a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_learning_methods_pair_each_base_with_its_empg_variant():
    """A method and its +EMPG variant differ only in the modulation, and GRPO is GRPO's loss, not TRL's default."""
    METHODS = _benchmark_module("learning").METHODS
    for base, with_empg in (("grpo", "empg"), ("dapo", "dapo_empg")):
        assert {**METHODS[base], "modulation": "empg"} == METHODS[with_empg]
    assert METHODS["grpo"]["loss_type"] == "grpo" and METHODS["dapo"]["loss_type"] == "dapo"


def test_learning_script_rejects_bad_env_kwargs(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/learning.py", "--env-kwargs", "coin=[1]", "--output-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "JSON object" in result.stderr


def test_search_index_benchmark_on_a_larger_generated_corpus():
    report = _benchmark_module("search_index").benchmark_index(scale=3, k=3, num_queries=1500)
    assert report["passages"] == 3 * 612 and report["recall_at_k"] >= 0.95
    assert report["index_build_s"] > 0 and report["queries_per_s"] > 0


@pytest.mark.slow
def test_search_index_script(tmp_path):
    output = tmp_path / "index.json"
    _run(["benchmarks/search_index.py", "--scales", "1", "--num-queries", "200", "--out", str(output)])
    report = json.loads(output.read_text())
    assert report["env_start"]["cold_cache_s"] > 0 and report["env_start"]["warm_cache_s"] > 0
    [index] = report["indexes"]
    assert index["scale"] == 1 and index["passages"] == 612 and index["queries"] == 200
    assert index["recall_at_k"] >= 0.95
