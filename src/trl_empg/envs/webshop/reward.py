"""WebShop's purchase reward, as ``web_agent_site/engine/goal.py`` (princeton-nlp/WebShop) defines it.

For a purchased product, its chosen options and its price, against a goal::

    r = r_type * (attribute matches + option matches + [price <= price_upper]) / (n_attributes + n_options + 1)

- Attribute match: a goal attribute fuzzy-matches (token-set ratio > 85) one of the product's attributes, or else is
  a substring of the lower-cased title, bullet points or description.
- Option match: after colour normalisation (a value containing a known colour word becomes that word), a goal option
  fuzzy-matches (> 85) one of the chosen option values. goal.py applies the same fuzzy rule to every option kind.
- ``r_type``: the overlap of the nouns of the purchased title with those of the goal product's title
  (``title_score``, 0.2 when the goal title has none) gives 0 when it is 0, 0.1 when below 0.1; otherwise 1, or 0.5
  when neither the search query, the category path (>= 2 shared levels) nor the title (> 0.2) matches.

WebShop's fuzzy scores come from ``thefuzz``, which lower-cases, keeps ASCII letters and digits, and rounds
rapidfuzz's score to an integer; :func:`fuzzy_score` does the same with rapidfuzz directly.

Noun extraction: WebShop tags nouns with spaCy's English model. Where ``en_core_web_sm`` or ``en_core_web_lg`` is
installed it is used the same way (``type_match_method`` names it); otherwise the fallback takes the title's
*content words* (alphabetic tokens of two or more letters that are not English stop words), a superset of its nouns
that treats adjectives as nouns, so ``title_score`` can only be higher or equal for shared adjectives.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

#: goal.py's fuzzy-match threshold (a score above it matches), for attributes and options alike.
FUZZY_THRESHOLD = 85
#: WebShop's colour words (``web_agent_site/engine/normalize.py``), in its order: the first one found wins.
COLOR_SET = (
    "alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze brown burgundy camel camo "
    "caramel champagne charcoal cheetah chestnut chocolate christmas coffee cognac copper coral cranberry cream "
    "crystal dark denim eggplant elephant espresso fuchsia gold granite grape graphite grass gray green grey heather "
    "indigo ivory ivy khaki lavender lemon leopard light lilac lime magenta maroon mauve merlot midnight mint mocha "
    "multicolor mushroom mustard natural navy nude olive orange peach pewter pink plum purple rainbow red rose royal "
    "rust sand sapphire seashell silver skull slate steel stone stonewash sunflower tan taupe teal tiger turquoise "
    "violet walnut wheat white wine yellow"
).split()
#: spaCy models tried, in order, for WebShop's noun extraction.
SPACY_MODELS = ("en_core_web_sm", "en_core_web_lg")
CONTENT_WORDS = "content-words"
_STOP_WORDS = frozenset(
    "a an and are as at be but by for from has have in into is it its of on or our so that the their this to was "
    "were will with your you".split()
)
_WORD = re.compile(r"[a-z]{2,}")
_NOUN_TAGS = ("PNOUN", "NOUN", "PROPN")


class Purchasable(Protocol):
    """The product fields the reward reads (WebShop's ``Title``, ``BulletPoints``, ``Description``, ...)."""

    title: str
    query: str
    product_category: str
    attributes: Sequence[str]
    bullet_points: Sequence[str]
    description: str


class RewardGoal(Protocol):
    """The goal fields the reward reads (``name`` and ``query`` are those of the goal's target product)."""

    name: str
    query: str
    product_category: str
    attributes: Sequence[str]
    goal_options: Sequence[str]
    price_upper: float


@dataclass(frozen=True)
class Reward:
    """The reward and its parts, for ``info["reward_details"]``."""

    reward: float
    r_type: float
    query_match: bool
    category_match: bool
    title_score: float
    attribute_matches: int
    option_matches: int
    price_ok: bool

    def details(self) -> dict[str, Any]:
        return {
            "r_type": self.r_type,
            "query_match": self.query_match,
            "category_match": self.category_match,
            "title_score": self.title_score,
            "attribute_matches": self.attribute_matches,
            "option_matches": self.option_matches,
            "price_ok": self.price_ok,
        }


def fuzzy_score(first: str, second: str) -> int:
    """``thefuzz.fuzz.token_set_ratio`` (its default processing: ASCII only, lower case, letters and digits)."""
    return round(fuzz.token_set_ratio(_process(first), _process(second)))


def _process(text: str) -> str:
    return default_process(text.encode("ascii", "ignore").decode())


def normalize_color(value: str) -> str:
    """The first WebShop colour word contained in ``value``, else ``value`` itself."""
    return next((color for color in COLOR_SET if color in value), value)


def fuzzy_match(first: str, second: str) -> bool:
    return fuzzy_score(first, second) > FUZZY_THRESHOLD


class NounExtractor:
    """Title nouns for the type reward: spaCy's tagger where an English model is installed, else content words.

    Args:
        method: ``"auto"`` (spaCy if a model is installed, else content words), ``"spacy"`` (fail without a model)
            or ``"content-words"``.
    """

    def __init__(self, method: str = "auto") -> None:
        if method not in ("auto", "spacy", CONTENT_WORDS):
            raise ValueError(f"type_match must be 'auto', 'spacy' or {CONTENT_WORDS!r}, got {method!r}.")
        model = None
        if method != CONTENT_WORDS:
            model = next((name for name in SPACY_MODELS if importlib.util.find_spec(name) is not None), None)
            if model is None and method == "spacy":
                raise ValueError(
                    f"type_match='spacy' needs an English spaCy model ({' or '.join(SPACY_MODELS)}): "
                    "python -m spacy download en_core_web_sm"
                )
        #: What scores the type term: ``"spacy:<model>"`` or ``"content-words"``.
        self.method = f"spacy:{model}" if model else CONTENT_WORDS
        self._nouns: Callable[[str], frozenset[str]] = (
            functools.lru_cache(maxsize=65536)(_SpacyNouns(model)) if model else _content_words
        )

    def __call__(self, title: str) -> frozenset[str]:
        return self._nouns(title)


class _SpacyNouns:
    """goal.py's extraction: the lower-cased text of tokens tagged NOUN or PROPN. The model loads on first use."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._nlp: Any = None

    def __call__(self, title: str) -> frozenset[str]:
        if self._nlp is None:
            import spacy

            self._nlp = spacy.load(self.model)
        return frozenset(token.text.lower() for token in self._nlp(title) if token.pos_ in _NOUN_TAGS)


@functools.lru_cache(maxsize=65536)
def _content_words(title: str) -> frozenset[str]:
    return frozenset(word for word in _WORD.findall(title.lower()) if word not in _STOP_WORDS)


def type_reward(purchased: Purchasable, goal: RewardGoal, nouns: NounExtractor) -> tuple[float, bool, bool, float]:
    """goal.py's ``get_type_reward``: (r_type, query_match, category_match, title_score)."""
    query_match = purchased.query == goal.query
    purchased_levels = {level.strip() for level in purchased.product_category.split("›")}
    goal_levels = {level.strip() for level in goal.product_category.split("›")}
    category_match = len(purchased_levels & goal_levels) >= 2
    desired = nouns(goal.name)
    title_score = len(nouns(purchased.title) & desired) / len(desired) if desired else 0.2
    r_type = 1.0 if query_match or category_match or title_score > 0.2 else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type, query_match, category_match, title_score


def attribute_matches(purchased: Purchasable, goal_attributes: Sequence[str]) -> int:
    """goal.py's ``get_attribute_reward`` count: fuzzy against the product's attributes, else a text substring."""
    title = purchased.title.lower()
    bullets = " ".join(purchased.bullet_points).lower()
    description = purchased.description.lower()
    count = 0
    for wanted in goal_attributes:
        if any(fuzzy_match(have, wanted) for have in purchased.attributes):
            count += 1
        elif wanted in title or wanted in bullets or wanted in description:
            count += 1
    return count


def option_matches(chosen: Sequence[str], goal_options: Sequence[str]) -> int:
    """goal.py's ``get_option_reward`` count: goal options matched by a chosen value, colours normalised."""
    chosen_normalized = [normalize_color(value) for value in chosen]
    return sum(
        any(fuzzy_match(have, normalize_color(wanted)) for have in chosen_normalized) for wanted in goal_options
    )


def compute_reward(
    purchased: Purchasable, goal: RewardGoal, price: float, chosen_options: Sequence[str], nouns: NounExtractor
) -> Reward:
    """goal.py's ``get_reward`` for buying ``purchased`` at ``price`` with the option values ``chosen_options``."""
    r_type, query_match, category_match, title_score = type_reward(purchased, goal, nouns)
    price_ok = price <= goal.price_upper
    attributes = attribute_matches(purchased, goal.attributes)
    options = option_matches(chosen_options, goal.goal_options)
    total = (attributes + options + int(price_ok)) / (len(goal.attributes) + len(goal.goal_options) + 1)
    return Reward(
        reward=total * r_type,
        r_type=r_type,
        query_match=query_match,
        category_match=category_match,
        title_score=title_score,
        attribute_matches=attributes,
        option_matches=options,
        price_ok=price_ok,
    )
