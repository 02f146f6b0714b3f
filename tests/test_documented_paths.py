"""Every ``trl_empg`` import path and source file that the docs or recipes name exists, so moving a module cannot
silently break a README line, a recipe's ``environment_factory`` or an example card."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    REPO / "README.md",
    REPO / "CONTRIBUTING.md",
    REPO / "spaces" / "README.md",
    *sorted((REPO / "model_cards").rglob("*.md")),
    *sorted((REPO / "src" / "trl_empg" / "recipes").rglob("*.yaml")),
]
DOTTED = re.compile(r"\btrl_empg(?:\.[A-Za-z_]\w*)+")
# `trl_empg/methods/empg.py`, `trl_empg/envs/`, `trl_empg/methods/{empg,aem}.py` (one brace group, shell-style)
FILE_PATH = re.compile(r"\btrl_empg/[\w/.-]*(?:\{[\w,]+\}[\w/.-]*)?")


def _named(pattern: re.Pattern[str]) -> list[str]:
    return sorted({match for doc in DOCS if doc.exists() for match in pattern.findall(doc.read_text())})


def _resolves(path: str) -> bool:
    """``path`` is a module, or an attribute of the longest importable module prefix (``trl_empg.envs.make``)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(target, attr):
                return False
            target = getattr(target, attr)
        return True
    return False


def _expand(path: str) -> list[str]:
    head, brace, rest = path.partition("{")
    if not brace:
        return [path]
    options, _, tail = rest.partition("}")
    return [head + option + tail for option in options.split(",")]


def test_the_docs_name_paths():
    """The scan finds what it should, so an empty match list cannot pass the checks below."""
    dotted, files = _named(DOTTED), _named(FILE_PATH)
    assert {"trl_empg.envs.make", "trl_empg.envs.search.tool", "trl_empg.train"} <= set(dotted)
    assert "trl_empg/envs/base.py" in files
    assert _expand("trl_empg/methods/{empg,aem}.py") == ["trl_empg/methods/empg.py", "trl_empg/methods/aem.py"]
    assert not _resolves("trl_empg.envs.search_tool") and not _resolves("trl_empg.envs.no_such_name")


@pytest.mark.parametrize("path", _named(DOTTED))
def test_every_documented_import_path_imports(path):
    assert _resolves(path), f"{path} is named in the docs or recipes but does not import"


@pytest.mark.parametrize("path", _named(FILE_PATH))
def test_every_documented_source_path_exists(path):
    for expanded in _expand(path.rstrip(".")):
        assert (REPO / "src" / expanded).exists(), f"{expanded} is named in the docs or recipes but does not exist"
