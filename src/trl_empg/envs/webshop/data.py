"""WebShop's catalogue: products, goals and their train / dev / test split, from the official files or generated.

The official files are those WebShop's ``setup.sh`` downloads (its ``web_agent_site/engine/engine.py`` reads them):

- products (``items_shuffle_1000.json``, or the full ``items_shuffle.json``): a list of scraped products, each with
  ``asin``, ``name``, ``category``, ``query``, ``product_category``, ``full_description``, ``small_description``
  (bullet points, a list or a string), ``pricing`` (``"$12.99"`` or a ``$``-separated range, may be missing) and
  ``customization_options`` (option name -> list of ``{"value": ...}``, may be null);
- attributes (``items_ins_v2_1000.json`` / ``items_ins_v2.json``): asin -> ``{"attributes": [...], ...}``;
- human instructions (``items_human_ins.json``): asin -> list of ``{"instruction", "instruction_attributes",
  "instruction_options", ...}``.

Loading follows engine.py and goal.py: products with an asin of "nan" or longer than 10 characters and repeated asins
are skipped; option values are lower-cased with "/" written " | "; a product without attributes gets
``["DUMMY_ATTR"]``; a ranged price is charged at a uniform draw within its range; each human instruction with at
least one attribute is a goal whose price limit is the larger of two of the four multiples of 10 above the price
(none when fewer than two are below 1000); goals are shuffled as WebShop does (``random.seed(233)``) and split by
index: test ``[0, 500)``, dev ``[500, 1500)``, train ``[1500, ...)`` (WebShop's ``baseline_models/env.py``).
WebShop draws the prices and limits unseeded, so they vary between its runs; here they come from a fixed seed, so
every process builds the same goals. Reviews are empty and ratings "N.A.", as WebShop's loader leaves them.
Any missing or malformed field fails at load time with the file, the entry and the field named.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..base import EnvDataError

#: engine.py's ``PRICE_RANGE``: the price limits goals draw from.
PRICE_RANGE = [10.0 * i for i in range(1, 100)]
#: goal.py's "no limit" price, used when fewer than two limits lie above the price.
NO_PRICE_LIMIT = 1_000_000.0
#: WebShop's goal split: test goals are indices [0, 500), dev [500, 1500), train the rest.
WEBSHOP_GOAL_SPLIT = (500, 1500)
DEFAULT_PRODUCT_FILE = "items_shuffle_1000.json"
DEFAULT_ATTRIBUTE_FILE = "items_ins_v2_1000.json"
DEFAULT_INSTRUCTION_FILE = "items_human_ins.json"
_PRICE_SEED = 0
_SHUFFLE_SEED = 233


class WebShopDataError(EnvDataError):
    """A WebShop data file is missing or not in the expected schema; the message names the file and the field."""


@dataclass
class Product:
    """One product as the pages show it and the reward reads it (engine.py's processed fields)."""

    asin: str
    title: str
    price_tag: str
    price: float
    options: dict[str, list[str]]
    bullet_points: list[str]
    description: str
    attributes: list[str]
    category: str
    query: str
    product_category: str
    reviews: list[dict[str, Any]] = field(default_factory=list)
    rating: str = "N.A."

    def search_text(self) -> str:
        """What WebShop's index holds per product: title, description, first bullet point and option text."""
        options = ", and ".join(f"{name}: {', '.join(values)}" for name, values in self.options.items())
        first_bullet = self.bullet_points[0] if self.bullet_points else ""
        return " ".join([self.title, self.description, first_bullet, options]).lower()


@dataclass
class Goal:
    """One instruction: its target product, the attributes / options / price it asks for, and a search query."""

    asin: str
    instruction_text: str
    attributes: list[str]
    goal_options: list[str]
    price_upper: float
    #: The target's scrape query, category and title, which the type reward compares against.
    query: str
    name: str
    category: str
    product_category: str
    #: The query the gold plan searches for (the instruction without its price clause for official goals).
    search_query: str


@dataclass
class Catalogue:
    """Products, goals and the goal-index split: test ``[0, split[0])``, dev ``[split[0], split[1])``, train after."""

    products: list[Product]
    goals: list[Goal]
    split: tuple[int, int]
    #: "official" or "generated" (report the latter as "WebShop-style").
    source: str
    by_asin: dict[str, Product] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_asin = {product.asin: product for product in self.products}
        test_end, dev_end = self.split
        if not 0 < test_end <= dev_end < len(self.goals):
            raise WebShopDataError(
                f"The goal split {self.split} leaves a split empty: {len(self.goals)} goals, test [0, {test_end}), "
                f"dev [{test_end}, {dev_end}), train [{dev_end}, {len(self.goals)})."
            )

    def split_range(self, split: str) -> range:
        test_end, dev_end = self.split
        return {"test": range(test_end), "dev": range(test_end, dev_end), "train": range(dev_end, len(self.goals))}[
            split
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "split": list(self.split),
            "products": [asdict(p) for p in self.products],
            "goals": [asdict(g) for g in self.goals],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Catalogue:
        return cls(
            products=[Product(**p) for p in data["products"]],
            goals=[Goal(**g) for g in data["goals"]],
            split=tuple(data["split"]),
            source=data["source"],
        )


def price_limit(price: float, rng: random.Random) -> tuple[float, str]:
    """goal.py's price limit and instruction suffix for a product charged ``price``."""
    above = [p for p in PRICE_RANGE if p > price][:4]
    if len(above) < 2:
        return NO_PRICE_LIMIT, ""
    upper = sorted(rng.sample(above, 2))[1]
    return upper, f", and price lower than {upper:.2f} dollars"


def _fail(path: Path, where: str, problem: str) -> WebShopDataError:
    return WebShopDataError(f"{path}: {where}: {problem}")


def _read_json(path: Path, kind: str, expected: type) -> Any:
    if not path.is_file():
        raise WebShopDataError(f"WebShop {kind} file {path} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise WebShopDataError(
            f"{path}:{error.lineno}: not valid JSON at column {error.colno} ({error.msg})."
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise WebShopDataError(f"{path}: not readable as JSON ({error}).") from None
    if not isinstance(data, expected):
        raise _fail(path, "top level", f"expected a JSON {'list' if expected is list else 'object'}")
    return data


def _text(path: Path, where: str, item: Mapping[str, Any], key: str, *, optional: bool = False) -> str:
    """A string field; ``optional`` fields may be null (read as empty) but must be present."""
    if key not in item:
        raise _fail(path, where, f"missing field {key!r}")
    value = item[key]
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise _fail(path, where, f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _strings(path: Path, where: str, item: Mapping[str, Any], key: str) -> list[str]:
    value = item.get(key)
    if key not in item or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, where, f"field {key!r} must be a list of strings, got {value!r:.80}")
    return value


def _pricing(path: Path, where: str, raw: Any) -> tuple[list[float], str]:
    """engine.py's parse of ``pricing``: every ``$``-separated number; none means $100.0."""
    if raw is None or raw == "" or raw == []:
        return [100.0], "$100.0"
    if not isinstance(raw, str):
        raise _fail(path, where, f"field 'pricing' must be a string like '$12.99', got {raw!r:.80}")
    try:
        prices = [float(Decimal(re.sub(r"[^\d.]", "", part))) for part in raw.split("$")[1:]]
    except InvalidOperation:
        raise _fail(path, where, f"field 'pricing' has a malformed price: {raw!r:.80}") from None
    if not prices:
        raise _fail(path, where, f"field 'pricing' has no '$' price: {raw!r:.80}")
    if len(prices) == 1:
        return prices, f"${prices[0]}"
    return prices[:2], f"${prices[0]} to ${prices[1]}"


def _options(path: Path, where: str, raw: Any) -> dict[str, list[str]]:
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise _fail(path, where, f"field 'customization_options' must be an object, got {type(raw).__name__}")
    options = {}
    for name, contents in raw.items():
        if contents is None:
            continue
        if not isinstance(contents, list) or not all(
            isinstance(c, dict) and isinstance(c.get("value"), str) for c in contents
        ):
            raise _fail(path, where, f"field 'customization_options'[{name!r}] must be a list of {{'value': str}}")
        options[name.lower()] = [c["value"].strip().replace("/", " | ").lower() for c in contents]
    return options


def _product(
    path: Path, where: str, raw: Mapping[str, Any], attributes: Mapping[str, Any], attribute_path: Path
) -> tuple[Product, list[float]]:
    """One product and its price list (a ranged price is charged later, at a seeded draw within its range)."""
    asin = raw["asin"]
    if "small_description" not in raw:
        raise _fail(path, where, "missing field 'small_description'")
    bullets = raw["small_description"]
    bullet_points = bullets if isinstance(bullets, list) else [bullets or ""]
    if not all(isinstance(b, str) for b in bullet_points):
        raise _fail(path, where, "field 'small_description' must be a string or a list of strings")
    if "customization_options" not in raw:
        raise _fail(path, where, "missing field 'customization_options'")
    pricing, price_tag = _pricing(path, where, raw.get("pricing"))
    entry = attributes.get(asin)
    product_attributes = ["DUMMY_ATTR"]
    if entry is not None:
        if not isinstance(entry, dict):
            raise _fail(attribute_path, f"entry {asin!r}", "expected an object with an 'attributes' list")
        if "attributes" in entry:
            product_attributes = _strings(attribute_path, f"entry {asin!r}", entry, "attributes")
    product = Product(
        asin=asin,
        title=_text(path, where, raw, "name"),
        price_tag=price_tag,
        price=pricing[0],
        options=_options(path, where, raw["customization_options"]),
        bullet_points=bullet_points,
        description=_text(path, where, raw, "full_description", optional=True),
        attributes=product_attributes,
        category=_text(path, where, raw, "category"),
        query=_text(path, where, raw, "query").lower().strip(),
        product_category=_text(path, where, raw, "product_category"),
    )
    return product, pricing


def _resolve(data_dir: Path, name: str | os.PathLike[str]) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else data_dir / path


def load_official(
    data_dir: str | os.PathLike[str],
    *,
    product_file: str | os.PathLike[str] = DEFAULT_PRODUCT_FILE,
    attribute_file: str | os.PathLike[str] = DEFAULT_ATTRIBUTE_FILE,
    instruction_file: str | os.PathLike[str] = DEFAULT_INSTRUCTION_FILE,
    num_products: int | None = None,
    goal_split: tuple[int, int] = WEBSHOP_GOAL_SPLIT,
) -> Catalogue:
    """The official catalogue with WebShop's human goals (file names relative to ``data_dir`` unless absolute)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise WebShopDataError(f"WebShop data directory {root} does not exist (set data_dir or WEBSHOP_DATA).")
    product_path = _resolve(root, product_file)
    attribute_path = _resolve(root, attribute_file)
    instruction_path = _resolve(root, instruction_file)
    raw_products = _read_json(product_path, "product", list)
    attributes = _read_json(attribute_path, "attribute", dict)
    instructions = _read_json(instruction_path, "human instruction", dict)
    if num_products is not None:
        raw_products = raw_products[:num_products]
    rng = random.Random(_PRICE_SEED)
    priced: list[tuple[Product, list[float]]] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_products):
        if not isinstance(raw, dict):
            raise _fail(product_path, f"product #{index}", f"expected an object, got {type(raw).__name__}")
        asin = _text(product_path, f"product #{index}", raw, "asin")
        if asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        product, pricing = _product(product_path, f"product #{index} (asin {asin})", raw, attributes, attribute_path)
        priced.append((product, pricing))
    # engine.py charges a ranged price at a uniform draw within it, product by product, before any goal is built.
    for product, pricing in priced:
        if len(pricing) > 1:
            product.price = rng.uniform(*pricing)
    products = [product for product, _ in priced]
    goals = []
    for product in products:
        entries = instructions.get(product.asin)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise _fail(instruction_path, f"entry {product.asin!r}", "expected a list of instructions")
        for number, entry in enumerate(entries):
            where = f"entry {product.asin!r} instruction #{number}"
            if not isinstance(entry, dict):
                raise _fail(instruction_path, where, "expected an object")
            goal_attributes = _strings(instruction_path, where, entry, "instruction_attributes")
            goal_options = _strings(instruction_path, where, entry, "instruction_options")
            text = _text(instruction_path, where, entry, "instruction")
            if not goal_attributes:
                continue
            upper, price_text = price_limit(product.price, rng)
            goals.append(
                Goal(
                    asin=product.asin,
                    instruction_text=text.strip(".") + price_text,
                    attributes=goal_attributes,
                    goal_options=goal_options,
                    price_upper=upper,
                    query=product.query,
                    name=product.title,
                    category=product.category,
                    product_category=product.product_category,
                    search_query=text.strip(".").lower(),
                )
            )
    random.Random(_SHUFFLE_SEED).shuffle(goals)
    return Catalogue(products=products, goals=goals, split=tuple(goal_split), source="official")
