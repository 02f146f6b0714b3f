"""Deep-search environment: answer a question by searching a local BM25 index (EMPG's Deep Search, Search-R1's task).

Each turn the agent replies with one action:

- ``search[query]``: the observation lists the top ``top_k`` passages of the index for ``query``
  (``Doc 1 (Title: ...) text``, one per line), or says that nothing matched;
- ``answer[text]``: ends the episode. ``score`` is the exact match (``reward_mode="em"``) or token F1
  (``reward_mode="f1"``) of ``text`` against the golden answers after SQuAD normalisation, and ``won`` is always
  the exact match; the step's reward is the score.

Anything else is malformed: ``info["invalid_action"]`` is set and the observation restates the grammar. Every
action, malformed ones included, uses one of ``max_turns`` turns; at the limit the episode ends with
``info["truncated"] = True`` and score 0. There is no finite list of valid actions (any query is one), so
``admissible_actions`` is always empty and the observations state the grammar instead.

Data (see :mod:`trl_empg.envs.search.data`):

- Search-R1-format files when a corpus is given (``corpus_path`` kwarg or ``$TRL_EMPG_SEARCH_CORPUS``) with question
  files (``train_path`` / ``dev_path`` / ``test_path`` or ``$TRL_EMPG_SEARCH_{TRAIN,DEV,TEST}``; each a path or a
  list of paths, ``os.pathsep``-separated in the variables). Without a dev file, every 20th train question is the
  dev split. Missing files or malformed rows fail here, at construction.
- Otherwise an offline fictional world generated from ``world_seed`` / ``world_scale`` and cached as Search-R1 files
  under the cache root. Report results on it as "search-style", never as a published benchmark.

In-domain / out-of-domain: a question is in-domain when its ``data_source`` is in ``in_domain_sources`` (default:
Search-R1's training sources ``nq`` and ``hotpotqa``, as EMPG's Table 2 splits them, plus the generated
``search-style`` templates; the generated held-out templates are ``search-style-heldout``). ``question_set="id"`` or
``"ood"`` restricts ``task_seeds`` to that set, so ``trl-empg eval --env-kwargs '{"question_set": "ood"}'`` reports
out-of-domain success alone; ``info["domain"]`` names each task's set. ``make("search:id")`` / ``"search:ood"``
choose the set, ``make("search:<data_source>")`` (e.g. ``search:nq``) one data source.

Task seeds of split s are ``SEED_OFFSETS[s] + i`` for its i-th question, whatever the filter, so a seed always
names the same question. Everything is deterministic given (seed, split, actions).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ..base import Info, TextEnv, check_split, make_info
from .data import (
    GENERATED_ID_SOURCE,
    Question,
    generate_world,
    load_questions,
    write_generated,
)
from .index import cache_root, corpus_and_index
from .reward import score_answer

__all__ = ["SearchEnv", "SEED_OFFSETS", "DEFAULT_IN_DOMAIN_SOURCES", "DATA_ENV_VARS"]

#: Task seeds of split s are SEED_OFFSETS[s] + i (room for Search-R1's ~170k training questions).
SEED_OFFSETS = {"train": 0, "dev": 10_000_000, "test": 20_000_000}
#: Search-R1 trains on NQ + HotpotQA (EMPG's in-domain sets); the generated in-domain templates are "search-style".
DEFAULT_IN_DOMAIN_SOURCES = ("nq", "hotpotqa", GENERATED_ID_SOURCE)
#: Environment variables read when the corresponding kwarg is not given.
DATA_ENV_VARS = {
    "corpus": "TRL_EMPG_SEARCH_CORPUS",
    "train": "TRL_EMPG_SEARCH_TRAIN",
    "dev": "TRL_EMPG_SEARCH_DEV",
    "test": "TRL_EMPG_SEARCH_TEST",
}
#: Bump when :func:`generate_world` produces a different world for the same (seed, scale).
WORLD_VERSION = 1
QUESTION_SETS = ("all", "id", "ood")
_DEV_EVERY = 20
_ACTION_RE = re.compile(r"^\s*(search|answer)\s*\[(.*)\]\s*$", re.DOTALL | re.IGNORECASE)

PathArg = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None


def _paths(value: PathArg, variable: str) -> list[Path]:
    if value is None:
        value = [p for p in os.environ.get(variable, "").split(os.pathsep) if p]
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    return [Path(p).expanduser() for p in value]


class SearchEnv(TextEnv):
    """Multi-turn question answering over a local BM25 index; see the module docstring for actions, data and sets."""

    task_description = (
        "You answer a question by searching a knowledge base. Reply with search[query] to get the top passages for "
        "a query, or with answer[text] to give your final answer, which ends the episode."
    )

    def __init__(
        self,
        task_type: str | None = None,
        *,
        corpus_path: str | os.PathLike[str] | None = None,
        train_path: PathArg = None,
        dev_path: PathArg = None,
        test_path: PathArg = None,
        question_set: Literal["all", "id", "ood"] = "all",
        in_domain_sources: Sequence[str] = DEFAULT_IN_DOMAIN_SOURCES,
        top_k: int = 3,
        max_turns: int = 4,
        reward_mode: Literal["em", "f1"] = "em",
        cache_dir: str | os.PathLike[str] | None = None,
        world_seed: int = 0,
        world_scale: int = 1,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}.")
        if reward_mode not in ("em", "f1"):
            raise ValueError(f"reward_mode must be 'em' or 'f1', got {reward_mode!r}.")
        if task_type in QUESTION_SETS:
            if question_set != "all" and question_set != task_type:
                raise ValueError(f"search:{task_type} conflicts with question_set={question_set!r}.")
            question_set, task_type = task_type, None
        if question_set not in QUESTION_SETS:
            raise ValueError(f"question_set must be one of {list(QUESTION_SETS)}, got {question_set!r}.")
        self.top_k, self.max_turns, self.reward_mode = top_k, max_turns, reward_mode
        self.question_set = question_set
        self.in_domain_sources = frozenset(in_domain_sources)
        self.source_filter = task_type
        corpus_file, question_files = self._data_files(
            corpus_path, {"train": train_path, "dev": dev_path, "test": test_path}, cache_dir, world_seed, world_scale
        )
        self.corpus_path = corpus_file
        self._questions = self._load_splits(question_files)
        if task_type is not None:
            sources = sorted({q.data_source for qs in self._questions.values() for q in qs})
            if task_type not in sources:
                raise ValueError(f"search:{task_type}: no question has data_source {task_type!r}; found {sources}.")
        self._corpus, self._index = corpus_and_index(corpus_file, cache_dir)
        self._question: Question | None = None
        self._turns = 0
        self._done = True

    # ---------------------------------------------------------------------------------------------------------- data
    @staticmethod
    def _data_files(
        corpus_path: str | os.PathLike[str] | None,
        question_paths: dict[str, PathArg],
        cache_dir: str | os.PathLike[str] | None,
        world_seed: int,
        world_scale: int,
    ) -> tuple[Path, dict[str, list[Path]]]:
        """The corpus file and each split's question files: the user's, or the generated world's (written once)."""
        corpus = _paths(corpus_path, DATA_ENV_VARS["corpus"])
        files = {split: _paths(value, DATA_ENV_VARS[split]) for split, value in question_paths.items()}
        if len(corpus) > 1:
            raise ValueError(f"One search corpus file is supported, got {[str(p) for p in corpus]}.")
        if corpus:
            if not any(files.values()):
                raise ValueError(
                    f"Search corpus {str(corpus[0])!r} was given without question files: set train_path / dev_path "
                    f"/ test_path (or {DATA_ENV_VARS['train']} / {DATA_ENV_VARS['dev']} / {DATA_ENV_VARS['test']})."
                )
            missing = [str(p) for p in [*corpus, *(p for ps in files.values() for p in ps)] if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"Search data file(s) do not exist: {missing}.")
            return corpus[0], files
        if any(files.values()):
            raise ValueError(
                f"Search question files were given without a corpus: set corpus_path (or {DATA_ENV_VARS['corpus']})."
            )
        directory = cache_root(cache_dir) / f"generated-v{WORLD_VERSION}-seed{world_seed}-x{world_scale}"
        paths = {name: directory / f"{name}.jsonl" for name in ("corpus", "train", "dev", "test")}
        if not all(p.is_file() for p in paths.values()):
            write_generated(directory, *generate_world(world_seed, world_scale))
        return paths["corpus"], {split: [paths[split]] for split in ("train", "dev", "test")}

    @staticmethod
    def _load_splits(files: dict[str, list[Path]]) -> dict[str, list[Question]]:
        splits = {split: [q for path in files[split] for q in load_questions(path)] for split in files}
        if not files["dev"] and splits["train"]:
            train = splits["train"]
            splits["dev"] = train[_DEV_EVERY - 1 :: _DEV_EVERY]
            splits["train"] = [q for i, q in enumerate(train) if (i + 1) % _DEV_EVERY]
        return splits

    def domain(self, question: Question) -> str:
        """``"id"`` when the question's data source is in-domain, else ``"ood"``."""
        return "id" if question.data_source in self.in_domain_sources else "ood"

    def _selected(self, question: Question) -> bool:
        if self.source_filter is not None and question.data_source != self.source_filter:
            return False
        return self.question_set == "all" or self.domain(question) == self.question_set

    def task_seeds(self, split: str = "train") -> list[int]:
        check_split(split)
        return [SEED_OFFSETS[split] + i for i, q in enumerate(self._questions[split]) if self._selected(q)]

    def questions(self, split: str) -> list[Question]:
        """Every question of ``split`` in seed order (unfiltered: seed ``SEED_OFFSETS[split] + i`` is item i)."""
        return list(self._questions[check_split(split)])

    # ----------------------------------------------------------------------------------------------------- retrieval
    def search(self, query: str) -> str:
        """The observation for a search: the top ``top_k`` passages for ``query``, or a no-match note."""
        hits = self._index.search(query, self.top_k)
        if not hits:
            return f"No passages match the query {query!r}."
        corpus = self._corpus
        lines = []
        for rank, i in enumerate(hits, 1):
            title = f" (Title: {corpus.titles[i]})" if corpus.titles[i] else ""
            lines.append(f"Doc {rank}{title} {corpus.text(i).strip()}")
        return "\n".join(lines)

    def grade(self, answer: str) -> tuple[float, bool]:
        """(score, won) of ``answer`` for the current question; see ``reward_mode``."""
        if self._question is None:
            raise RuntimeError("search: call reset() before grading an answer.")
        return score_answer(answer, self._question.golden_answers, self.reward_mode)

    @property
    def question(self) -> Question | None:
        """The current task's question (None before the first reset)."""
        return self._question

    # ------------------------------------------------------------------------------------------------------ protocol
    def reset(self, seed: int = 0, split: str = "train") -> tuple[str, Info]:
        check_split(split)
        questions = self._questions[split]
        index = int(seed) - SEED_OFFSETS[split]
        if not 0 <= index < len(questions):
            raise ValueError(
                f"Seed {seed} is not a search {split} task seed: the split has {len(questions)} questions, seeds "
                f"{SEED_OFFSETS[split]}..{SEED_OFFSETS[split] + len(questions) - 1}."
            )
        question = self._question = questions[index]
        self._turns, self._done = 0, False
        queries = question.gold_queries or (question.question,)
        plan = [f"search[{q}]" for q in queries] + [f"answer[{question.golden_answers[0]}]"]
        observation = (
            f"Question: {question.question}\n\nSearch the knowledge base with search[query] (top {self.top_k} "
            f"passages) and give your final answer with answer[text]. You have {self.max_turns} turns."
        )
        info = make_info(
            gold_actions=plan,
            question=question.question,
            data_source=question.data_source,
            domain=self.domain(question),
            template=question.template,
        )
        return observation, info

    def step(self, action: str) -> tuple[str, float, bool, Info]:
        if self._question is None:
            raise RuntimeError("search: call reset() before step().")
        if self._done:
            raise RuntimeError("search: the episode is over; call reset() to start another.")
        if not isinstance(action, str):
            raise TypeError(f"Actions are strings, got {type(action).__name__}.")
        self._turns += 1
        match = _ACTION_RE.match(action)
        argument = " ".join(match.group(2).split()) if match else ""
        score, won, invalid, done = 0.0, False, not argument, False
        if invalid:
            observation = (
                f"Invalid action {action.strip()[:200]!r}. Reply with exactly one action: search[query] or "
                "answer[text]."
            )
        elif match.group(1).lower() == "search":
            observation = self.search(argument)
        else:
            score, won = self.grade(argument)
            done = True
            observation = f"You answered: {argument}. " + ("That is correct." if won else "That is not correct.")
        truncated = not done and self._turns >= self.max_turns
        if truncated:
            observation += f"\n\nTurn limit ({self.max_turns}) reached without an answer."
        self._done = done or truncated
        info = make_info(won=won, score=score, invalid_action=invalid, truncated=truncated, turns=self._turns)
        return observation, score, self._done, info
