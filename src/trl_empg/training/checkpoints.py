"""Which checkpoint a resumed run starts from: the last complete one, never one a killed run left half-written.

transformers writes ``checkpoint-N/`` in place (weights, optimizer, scheduler, RNG states, then
``trainer_state.json``) and its ``get_last_checkpoint`` takes the highest N whatever is inside, so a run killed
during a save resumes from a folder without optimizer or RNG state, or fails on a truncated file. A checkpoint here
is complete when ``trainer_state.json`` parses and names step N: transformers writes it after every state file of
the save, and :class:`~trl_empg.EMPGTrainer` writes its own state files before the save starts, so a readable
``trainer_state.json`` means the save went through.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["checkpoint_complete", "checkpoint_step", "last_complete_checkpoint"]

_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_step(path: str | Path) -> int | None:
    """N of a ``checkpoint-N`` folder name, None for any other name."""
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_complete(path: str | Path) -> bool:
    """Whether the save of ``checkpoint-N`` finished: its ``trainer_state.json`` parses and says step N."""
    path = Path(path)
    step = checkpoint_step(path)
    if step is None or not path.is_dir():
        return False
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and state.get("global_step") == step


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The complete ``checkpoint-N`` with the highest N under ``output_dir`` (None if there is none)."""
    if not os.path.isdir(output_dir):
        return None
    candidates = [path for path in Path(output_dir).iterdir() if checkpoint_step(path) is not None]
    for path in sorted(candidates, key=lambda path: checkpoint_step(path) or 0, reverse=True):
        if checkpoint_complete(path):
            return str(path)
    return None
