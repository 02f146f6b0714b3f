"""The search task as a TRL ``environment_factory`` tool environment (native tool calling).

TRL builds one :class:`SearchToolEnv` per rollout by calling the factory without arguments, calls
``reset(**row)`` with the dataset row (the text it returns is appended to the prompt's last user message) and exposes
every public method except ``reset`` as a tool: here only ``search(query)``. The episode's outcome is scored by
:func:`search_answer_reward` from the model's final assistant message, against the same questions, golden answers
and EM / F1 as the text env :class:`trl_empg.envs.search.SearchEnv` (both are built from the same kwargs). Under
``EMPGTrainer`` each assistant turn (a tool call, or the final answer) is one EMPG step.

    from trl_empg import EMPGConfig, EMPGTrainer
    from trl_empg.envs.search import search_answer_reward, search_tool_dataset, search_tool_factory

    kwargs = {"reward_mode": "em", "max_turns": 4}
    trainer = EMPGTrainer(
        model, search_answer_reward, EMPGConfig(..., max_tool_calling_iterations=3),
        train_dataset=search_tool_dataset("train", **kwargs), environment_factory=search_tool_factory(**kwargs),
    )

The answer is the text inside the last ``<answer>...</answer>`` of the final message (Search-R1's convention), or the
whole message when it has no such tags. At most ``max_turns - 1`` searches are answered (the last turn is for the
answer); later calls get a note saying the budget is spent, so a model that ignores it cannot loop for ever.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from datasets import Dataset

from .env import SearchEnv

__all__ = ["SearchToolEnv", "search_answer_reward", "search_tool_dataset", "search_tool_factory", "TOOL_INSTRUCTION"]

#: The user message of every row; ``reset`` appends the question to it.
TOOL_INSTRUCTION = (
    "Answer the question. Call the search tool to look facts up in the knowledge base as often as you need, then "
    "reply with the final answer inside <answer>...</answer>."
)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class SearchToolEnv:
    """One search episode for TRL's tool-calling loop; ``env_kwargs`` are :class:`SearchEnv`'s."""

    def __init__(self, **env_kwargs: Any) -> None:
        self._env = SearchEnv(**env_kwargs)
        self._searches = 0

    def reset(self, **row: Any) -> str:
        """Start the task named by the row's ``task_seed`` / ``task_split`` and return the question for the prompt."""
        if "task_seed" not in row:
            raise ValueError("SearchToolEnv rows need a 'task_seed' column; build them with search_tool_dataset().")
        self._env.reset(seed=int(row["task_seed"]), split=str(row.get("task_split") or "train"))
        self._searches = 0
        return f"\n\nQuestion: {self._env.question.question}"

    def search(self, query: str) -> str:
        """Search the knowledge base for passages about a query.

        Args:
            query: What to look for, for example the name of a person, place, organisation or work.

        Returns:
            The best matching passages, one per line, each with its title.
        """
        if self._searches >= self._env.max_turns - 1:
            return "No searches left: reply with your final answer inside <answer>...</answer>."
        query = " ".join(str(query).split())
        if not query:
            return "The query is empty: say what to search for."
        self._searches += 1
        return self._env.search(query)

    def _grade(self, completion: Any) -> tuple[float, bool]:
        """(score, won) of the final assistant message of ``completion`` (a message list or a plain string)."""
        if isinstance(completion, str):
            text = completion
        else:
            replies = [m for m in completion if m.get("role") == "assistant"]
            content = replies[-1].get("content") if replies else ""
            text = content if isinstance(content, str) else ""
        answers = _ANSWER_RE.findall(text)
        return self._env.grade(answers[-1] if answers else text)


def search_answer_reward(completions: list[Any], environments: list[SearchToolEnv], **kwargs: Any) -> list[float]:
    """TRL reward function: each rollout's score (EM or F1, the env's ``reward_mode``) of its final answer.

    Also logs ``search/exact_match`` and ``search/searches`` (mean searches per rollout) when TRL passes
    ``log_metric``.
    """
    if environments is None or len(environments) != len(completions):
        raise ValueError("search_answer_reward needs TRL's per-rollout `environments` (use environment_factory).")
    graded = [env._grade(completion) for completion, env in zip(completions, environments)]
    log_metric = kwargs.get("log_metric")
    if log_metric is not None and graded:
        log_metric("search/exact_match", sum(won for _, won in graded) / len(graded))
        log_metric("search/searches", sum(env._searches for env in environments) / len(environments))
    return [score for score, _ in graded]


def search_tool_factory(**env_kwargs: Any) -> Callable[[], SearchToolEnv]:
    """The ``environment_factory`` TRL calls without arguments, building envs with ``env_kwargs``."""
    return functools.partial(SearchToolEnv, **env_kwargs)


def search_tool_dataset(split: str = "train", num_tasks: int | None = None, **env_kwargs: Any) -> Dataset:
    """One row per task seed of ``split`` (the first ``num_tasks`` when given, after the env's ``question_set``
    filter): a conversational ``prompt`` with :data:`TOOL_INSTRUCTION`, ``task_seed`` and ``task_split``."""
    seeds = SearchEnv(**env_kwargs).task_seeds(split)
    seeds = seeds[:num_tasks] if num_tasks else seeds
    if not seeds:
        raise ValueError(f"The search env has no {split} tasks with these kwargs: {env_kwargs}.")
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": TOOL_INSTRUCTION}] for _ in seeds],
            "task_seed": seeds,
            "task_split": [split] * len(seeds),
        }
    )
