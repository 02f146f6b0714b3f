"""benchmarks/soak.py in short: a few steps under faults on the fake env, then a rerun that continues the same soak.

The figures themselves (RSS growth, flat counts) need the long run; here the books must balance every step, the
process figures must be read, and the rerun must continue from the last complete checkpoint without repeating steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def soak(tmp_path: Path, steps: int) -> dict:
    command = [
        sys.executable,
        "benchmarks/soak.py",
        "--steps",
        str(steps),
        "--save-steps",
        "2",
        "--warmup",
        "0",
        "--env",
        "fake_envs:FakeEnv",
        "--rates",
        "raise=0.06",
        "hang=0.03",
        "exit=0.03",
        "--tasks",
        "4",
        "--max-turns",
        "3",
        "--step-timeout",
        "1",
        "--reset-timeout",
        "5",
        "--output-dir",
        str(tmp_path / "out"),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / "out" / "soak.json").read_text())


def test_short_soak_balances_its_books_and_continues_where_it_stopped(tmp_path):
    first = soak(tmp_path, 2)
    assert [row["step"] for row in first["rows"]] == [1, 2]
    second = soak(tmp_path, 3)  # resumes from checkpoint-2
    rows = second["rows"]
    assert [row["step"] for row in rows] == [1, 2, 3] and rows[:2] == first["rows"]
    summary = second["summary"]
    assert summary["all_losses_finite"] and summary["steps_where_counts_differ"] == []
    assert summary["faults_counted"] == summary["faults_injected"] > 0
    assert summary["counters"]["restarts"] == summary["injected"]["hang"] + summary["injected"]["exit"]
    for row in rows:
        assert row["trainer_rss_mb"] > 0 and row["open_fds"] > 0 and row["left_behind"] == 0
        assert len(row["workers"]) == 2 and all(worker["rss_mb"] > 0 for worker in row["workers"])
        assert row["processes"] >= 2 and row["jvms"] == 0  # the fake env starts no JVM
    assert (tmp_path / "out" / "soak.png").stat().st_size > 10_000
