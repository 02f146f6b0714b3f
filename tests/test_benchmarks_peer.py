"""benchmarks/peer_tool_loop.py: TRL's own multi-turn tool loop and this project's engine do the same work."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _peer_module():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module("peer_tool_loop")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_trl_loop_and_ours_play_the_same_tokens(tmp_path):
    """Two turns, two episodes, the tiny model: TRL's prompt + completion ids and tool mask equal ours token for
    token (so TRL parsed every forced reply as a call of the env's tool and ran it), every path made one generate
    call per turn, and the profile accounts for the rollout's time."""
    peer = _peer_module()
    out = tmp_path / "peer.json"
    report = peer.main(["--model", "tiny", "--turns", "2", "--episodes", "2", "--out", str(out)])
    assert report["identical_tokens"] == {"2": True}
    assert json.loads(out.read_text())["identical_tokens"] == {"2": True} and out.with_suffix(".png").exists()
    runs = {run["path"]: run for run in report["runs"]}
    assert set(runs) == {"trl", "ours_kv", "ours_step"}
    for run in runs.values():
        assert run["generate_calls"] == 2 and run["profile"]["forward_calls"] > 2
        assert len(run["loadavg_before"]) == 3
        parts = {k: v for k, v in run["profile"].items() if k not in ("not_model_share", "forward_calls")}
        assert abs(sum(parts.values()) - run["seconds"]) < 0.01 * run["seconds"] + 0.01
    # The same model tokens reach the model: TRL re-reads the whole context each turn, ours only the new tokens.
    assert runs["trl"]["attended_tokens"] == runs["ours_kv"]["attended_tokens"]
    assert runs["trl"]["final_context_mean"] == runs["ours_kv"]["final_context_mean"]
    summary = report["summary"][0]
    assert summary["turns"] == 2 and summary["speedup_ours_kv_vs_trl"] > 0
