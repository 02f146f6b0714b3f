"""Deep search (``make("search")``, ``search:id``, ``search:ood``, ``search:<data_source>``): answer a question by
searching a local index.

The family: each turn is ``search[query]`` (the top-k BM25 passages come back) or ``answer[text]``, which ends the
episode (:mod:`.env`); the same task as a TRL ``environment_factory`` tool environment with a ``search(query)`` tool
(:mod:`.tool`). Data: a Search-R1-format corpus and question files when given (``corpus_path`` or
``$TRL_EMPG_SEARCH_CORPUS``), otherwise a fictional-entity world with 1-3-hop questions generated offline
(:mod:`.data`; report results on it as "search-style"), indexed with bm25s and cached (:mod:`.index`). Reward: exact
match or token F1 of the answer against the golden answers after SQuAD normalisation (:mod:`.reward`).
"""

from .env import DATA_ENV_VARS, DEFAULT_IN_DOMAIN_SOURCES, SEED_OFFSETS, SearchEnv
from .reward import exact_match, score_answer, token_f1
from .tool import TOOL_INSTRUCTION, SearchToolEnv, search_answer_reward, search_tool_dataset, search_tool_factory

__all__ = [
    "SearchEnv",
    "SEED_OFFSETS",
    "DEFAULT_IN_DOMAIN_SOURCES",
    "DATA_ENV_VARS",
    "exact_match",
    "token_f1",
    "score_answer",
    "SearchToolEnv",
    "search_answer_reward",
    "search_tool_dataset",
    "search_tool_factory",
    "TOOL_INSTRUCTION",
]
