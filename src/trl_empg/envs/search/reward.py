"""Answer scoring for the search environment: SQuAD-style normalisation, exact match and token F1.

Search agents (Search-R1, EMPG's Deep Search) are scored the way open-domain QA has been since SQuAD: both the
prediction and every golden answer are normalised (lower case, punctuation dropped, the articles "a", "an", "the"
dropped, whitespace collapsed), then compared. Exact match is 1 when the normalised prediction equals any normalised
golden answer; token F1 is the best bag-of-words F1 over the golden answers. Written here from that definition.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

__all__ = ["normalize_answer", "exact_match", "token_f1", "score_answer"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, strip ASCII punctuation, drop articles and collapse whitespace (SQuAD's normalisation)."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golden_answers: Iterable[str]) -> float:
    """1.0 when the normalised prediction equals any normalised golden answer, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(gold) for gold in golden_answers))


def _f1(predicted: list[str], gold: list[str]) -> float:
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golden_answers: Iterable[str]) -> float:
    """The best token-level F1 between the normalised prediction and any normalised golden answer.

    Two empty token lists count as a match (F1 1.0), one empty side as 0.0, as in SQuAD's evaluation script.
    """
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for gold in golden_answers:
        tokens = normalize_answer(gold).split()
        best = max(best, float(predicted == tokens) if not predicted or not tokens else _f1(predicted, tokens))
    return best


def score_answer(prediction: str, golden_answers: Iterable[str], reward_mode: str = "em") -> tuple[float, bool]:
    """(score, won) of an answer: score is EM (``reward_mode="em"``) or token F1 (``"f1"``); won is always EM."""
    golden = list(golden_answers)
    won = exact_match(prediction, golden) == 1.0
    if reward_mode == "em":
        return float(won), won
    if reward_mode == "f1":
        return token_f1(prediction, golden), won
    raise ValueError(f"reward_mode must be 'em' or 'f1', got {reward_mode!r}.")
