"""Agents that ship inside the package, so the demo Space and a first look show a trained agent with no download.

- ``twx-coin-empg``: the quickstart's EMPG agent (``trl-empg quickstart`` with ``recipes/quickstart.yaml``, seed 0): a
  ~1 MB two-layer Qwen2-shaped model with a word-level tokenizer built from twx:coin's text, warm-started on gold
  plans and trained with EMPG. It plays TextWorldExpress coin (4 rooms, doors) in the quickstart's plain prompt
  style; its ``eval.json`` holds its held-out test evaluation and ``run_config.json`` the settings it was trained
  with (which the Space reads).

:func:`bundle_agent` copies a finished run's model, tokenizer and run settings here (never checkpoints or optimizer
state). ``twx-coin-empg`` was made with::

    trl-empg quickstart --recipe recipes/quickstart.yaml --run-dir runs/quickstart
    python -c "from trl_empg.bundled import bundle_agent; bundle_agent('runs/quickstart/empg', 'twx-coin-empg',
        extra_files={'eval.json': 'runs/quickstart/eval_empg.json'})"
    trl-empg card --run_dir runs/quickstart/empg --repo_id trl-empg/tiny-twx-coin-empg \
        --eval_files runs/quickstart/eval_empg.json --output src/trl_empg/bundled/twx-coin-empg/README.md
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["BUNDLED_AGENTS", "BUNDLE_FILES", "bundle_agent", "bundled_agent", "installed_agents"]

BUNDLED_ROOT = Path(__file__).resolve().parent
#: name -> what the agent is, for menus.
BUNDLED_AGENTS: dict[str, str] = {
    "twx-coin-empg": "quickstart EMPG agent for twx:coin (1 MB, shipped with the package)",
}
#: The files of a run that make a loadable, self-describing agent (whichever of them the run has).
BUNDLE_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "run_config.json",
)


def bundled_agent(name: str) -> Path:
    """The directory of the bundled agent ``name`` (a local checkpoint any loader takes)."""
    if name not in BUNDLED_AGENTS:
        raise ValueError(f"Unknown bundled agent {name!r}; the package ships {sorted(BUNDLED_AGENTS)}.")
    path = BUNDLED_ROOT / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"The bundled agent {name!r} is missing from {path} (a broken install?).")
    return path


def installed_agents() -> dict[str, str]:
    """The bundled agents present in this install (name -> what it is)."""
    return {name: about for name, about in BUNDLED_AGENTS.items() if (BUNDLED_ROOT / name / "config.json").is_file()}


def bundle_agent(run_dir: str | Path, name: str, *, extra_files: dict[str, str | Path] | None = None) -> Path:
    """Copy the run in ``run_dir`` into the package as the bundled agent ``name``; ``extra_files`` maps file names
    in the bundle to files to copy there (its evaluation report, its card)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no trained model (config.json).")
    target = BUNDLED_ROOT / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for file_name in BUNDLE_FILES:
        if (run_dir / file_name).is_file():
            shutil.copy2(run_dir / file_name, target / file_name)
    for file_name, source in (extra_files or {}).items():
        shutil.copy2(source, target / file_name)
    return target
