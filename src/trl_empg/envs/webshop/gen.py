"""An offline WebShop-style shop: products and instructions generated from templates (report it as "WebShop-style").

WebShop's data (1.18M scraped Amazon products, 12k crowd-sourced instructions) comes from a file host; without it this
module writes a shop of the same shape: product types across WebShop's five categories (beauty, food, fashion,
makeup, electronics), each product with a brand, three attributes (two in its title, all in its bullet points),
option groups (size, colour, scent, flavour, count, ...), a price (some shown as a range, charged at a hidden draw
within it, as WebShop does) and reviews; and goals in WebShop's instruction style ("i am looking for a sulfate free
shampoo that is for dry hair, with size: 8 fl oz, and price lower than 30.00 dollars") that ask for two of the
target's attributes, one value of each of its option groups and a price limit drawn as goal.py draws it.

Within a product no two option values, and no two attributes, match each other under the reward's fuzzy rule, so
picking the wrong value never earns credit (in WebShop's data "pack of 2" and "pack of 6" do match). Goals are split
by target product (15% of the products for test, 15% for dev, the rest for train), so test goals ask for products no
training goal targets; all products are searchable in every split. Everything is a function of the parameters and
``seed``; the result is cached as JSON (written to a temporary file, then moved into place).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .data import Catalogue, Goal, Product, price_limit
from .reward import fuzzy_match, option_matches

#: Bump when the same parameters would generate a different shop.
GENERATOR_VERSION = 1
#: Fractions of the products whose goals form the test and the dev split.
TEST_FRACTION = 0.15
DEV_FRACTION = 0.15


@dataclass(frozen=True)
class ProductType:
    """A kind of product: how titles and instructions name it, its search query and category path, its options."""

    name: str
    leaf: str
    options: tuple[str, ...]
    price_range: tuple[float, float]
    plural: bool = False


@dataclass(frozen=True)
class Category:
    key: str
    root: str
    brands: tuple[str, ...]
    attributes: tuple[str, ...]
    blurbs: tuple[str, ...]
    types: tuple[ProductType, ...]


T = ProductType
OPTION_VALUES: dict[str, tuple[str, ...]] = {
    "size": ("2 fl oz", "8 fl oz", "16 fl oz", "33.8 fl oz"),
    "clothing size": ("x-small", "small", "medium", "large", "x-large", "xx-large"),
    "shoe size": ("6", "7", "8", "9", "10", "11", "12"),
    "waist size": ("28w", "30w", "32w", "34w", "36w"),
    "color": ("black", "white", "navy", "red", "pink", "grey", "beige", "green", "purple", "brown", "silver", "gold"),
    "shade": ("ivory", "beige", "tan", "mocha", "espresso", "nude", "coral", "plum"),
    "scent": ("lavender", "unscented", "coconut", "eucalyptus", "citrus", "vanilla", "sandalwood"),
    "flavor": ("original", "vanilla", "chocolate", "strawberry", "peanut butter", "sea salt", "honey", "teriyaki"),
    "roast": ("dark roast", "medium roast", "light roast", "espresso roast"),
    "count": ("6 count", "12 count", "24 count", "50 count", "100 count"),
    "weight": ("8 ounce", "12 ounce", "2 pound", "5 pound"),
    "length": ("3 ft", "6 ft", "10 ft", "15 ft"),
    "capacity": ("5000mah", "10000mah", "20000mah"),
}
#: Option groups shown under another name (a clothing size is a "size" on the item page).
DISPLAY_NAMES = {"clothing size": "size"}

CATEGORIES = (
    Category(
        "beauty",
        "Beauty & Personal Care",
        ("Verdant Roots", "Pure Aura", "Hydra Bloom", "Silk Grove", "Luna Leaf", "Ocean Mist"),
        (
            "sulfate free",
            "paraben free",
            "cruelty free",
            "natural ingredients",
            "for sensitive skin",
            "dermatologist tested",
            "deep moisturizing",
            "vegan formula",
            "fragrance free",
            "for dry hair",
        ),
        ("Gentle enough for daily use.", "Made in small batches.", "Recyclable bottle."),
        (
            T("shampoo", "Hair Care › Shampoo & Conditioner › Shampoos", ("size", "scent"), (8, 35)),
            T("conditioner", "Hair Care › Shampoo & Conditioner › Conditioners", ("size", "scent"), (8, 35)),
            T("body lotion", "Skin Care › Body › Lotions", ("size", "scent"), (6, 30)),
            T("face serum", "Skin Care › Face › Serums", ("size",), (12, 60)),
            T("hair oil", "Hair Care › Styling Products › Hair Oils", ("size", "scent"), (9, 40)),
            T("body wash", "Skin Care › Body › Body Washes", ("size", "scent"), (5, 25)),
            T("bath bombs", "Bath & Bathing Accessories › Bath Bombs", ("scent", "count"), (10, 35), True),
            T("hand cream", "Skin Care › Hands & Nails › Hand Creams", ("size", "scent"), (5, 22)),
        ),
    ),
    Category(
        "food",
        "Grocery & Gourmet Food",
        ("Harvest Table", "Golden Acre", "Summit Pantry", "Wild Meadow", "Copper Kettle", "Blue Ridge"),
        (
            "gluten free",
            "sugar free",
            "non gmo",
            "low carb",
            "keto friendly",
            "high protein",
            "usda organic",
            "kosher certified",
            "individually wrapped",
            "dairy free",
        ),
        ("Packed fresh for flavor.", "A pantry staple.", "Great for sharing."),
        (
            T("coffee beans", "Beverages › Coffee › Whole Coffee Beans", ("roast", "weight"), (9, 45), True),
            T("green tea", "Beverages › Tea › Green Tea", ("flavor", "count"), (5, 25)),
            T("protein bars", "Snack Foods › Bars › Protein Bars", ("flavor", "count"), (12, 40), True),
            T("beef jerky", "Meat & Seafood › Jerky", ("flavor", "weight"), (8, 35)),
            T("olive oil", "Pantry Staples › Cooking Oils › Olive Oil", ("weight",), (9, 40)),
            T("dark chocolate", "Snacks & Sweets › Chocolate", ("flavor", "count"), (6, 30)),
            T("granola", "Breakfast Foods › Cereals › Granola", ("flavor", "weight"), (5, 24)),
            T("mixed nuts", "Snack Foods › Nuts & Seeds › Mixed Nuts", ("flavor", "weight"), (8, 36), True),
        ),
    ),
    Category(
        "fashion",
        "Clothing, Shoes & Jewelry",
        ("Northline", "Urban Thread", "Coastal Drift", "Iron Pine", "Field & Oak", "Stride Co"),
        (
            "machine washable",
            "slim fit",
            "moisture wicking",
            "quick drying",
            "button closure",
            "elastic waistband",
            "long sleeve",
            "breathable fabric",
            "non slip sole",
            "water resistant",
        ),
        ("Designed for all day comfort.", "Easy care.", "Classic look for any season."),
        (
            T("t-shirt", "Men › Clothing › Shirts › T-Shirts", ("color", "clothing size"), (9, 30)),
            T("running shoes", "Men › Shoes › Athletic › Running", ("color", "shoe size"), (35, 120), True),
            T("jeans", "Men › Clothing › Jeans", ("color", "waist size"), (25, 80), True),
            T("hoodie", "Women › Clothing › Fashion Hoodies & Sweatshirts", ("color", "clothing size"), (20, 60)),
            T("dress", "Women › Clothing › Dresses › Casual", ("color", "clothing size"), (20, 70)),
            T("socks", "Men › Clothing › Socks › Athletic Socks", ("color", "clothing size"), (8, 25), True),
            T(
                "rain jacket",
                "Women › Clothing › Coats, Jackets & Vests › Raincoats",
                ("color", "clothing size"),
                (30, 110),
            ),
            T("backpack", "Luggage & Travel Gear › Backpacks › Casual Daypacks", ("color",), (20, 75)),
        ),
    ),
    Category(
        "makeup",
        "Beauty & Personal Care › Makeup",
        ("Velvet Muse", "Rouge Atelier", "Glow Theory", "Petal & Ink", "Lumen Beauty", "Opal Studio"),
        (
            "long lasting",
            "waterproof",
            "smudge proof",
            "matte finish",
            "highly pigmented",
            "cruelty free",
            "easy to apply",
            "lightweight",
            "paraben free",
            "vegan formula",
        ),
        ("Builds from sheer to full coverage.", "A staple of any kit.", "Compact for travel."),
        (
            T("lipstick", "Lips › Lipstick", ("shade",), (6, 28)),
            T("mascara", "Eyes › Mascara", ("color",), (6, 26)),
            T("foundation", "Face › Foundation", ("shade",), (10, 45)),
            T("eyeshadow palette", "Eyes › Eyeshadow", ("color",), (10, 50)),
            T("nail polish", "Nail Care › Nail Polish", ("color", "count"), (5, 20)),
            T(
                "makeup brush set",
                "Tools & Accessories › Makeup Brushes & Tools › Brush Sets",
                ("color", "count"),
                (10, 40),
            ),
            T("eyeliner", "Eyes › Eyeliner", ("color",), (5, 22)),
            T("blush", "Face › Blush", ("shade",), (7, 30)),
        ),
    ),
    Category(
        "electronics",
        "Electronics",
        ("Voltra", "Pulse Audio", "Circuit Bay", "Nimbus Tech", "Arc Labs", "Zenith Gear"),
        (
            "fast charging",
            "noise cancelling",
            "long battery life",
            "water resistant",
            "usb c port",
            "compact design",
            "high definition",
            "plug and play",
            "lightweight",
            "shockproof",
        ),
        ("Backed by an 18 month warranty.", "Works with most devices.", "Ships with a quick start guide."),
        (
            T("bluetooth speaker", "Portable Audio & Video › Portable Speakers", ("color",), (20, 120)),
            T("wireless earbuds", "Headphones › Earbud Headphones", ("color",), (20, 150), True),
            T("phone case", "Cell Phones & Accessories › Cases", ("color",), (8, 30)),
            T("usb c cable", "Computers & Accessories › Cables › USB Cables", ("length", "color"), (6, 20)),
            T(
                "power bank",
                "Cell Phones & Accessories › Chargers › Portable Power Banks",
                ("capacity", "color"),
                (15, 60),
            ),
            T("hdmi cable", "Television & Video › Accessories › Cables › HDMI Cables", ("length",), (6, 25)),
            T("smart watch", "Wearable Technology › Smartwatches", ("color",), (40, 200)),
            T("laptop stand", "Computers & Accessories › Laptop Accessories › Stands", ("color",), (15, 60)),
        ),
    ),
)
_REVIEW_TITLES = ("Works as described", "Great value", "Would buy again", "Pretty good", "Exactly what I wanted")
_REVIEW_BODIES = ("Arrived quickly and does the job.", "Good quality for the price.", "My second one of these.")
_OPENERS = ("i am looking for", "i need", "i want", "find me", "i'm looking for", "i would like")
_ASIN_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


def _option_conflict(first: str, second: str) -> bool:
    return bool(option_matches([first], [second]) or option_matches([second], [first]))


def _distinct(
    rng: random.Random, pool: tuple[str, ...], count: int, conflict: Callable[[str, str], bool]
) -> list[str]:
    """Up to ``count`` values of ``pool`` in random order, none conflicting with an earlier pick."""
    picked: list[str] = []
    for value in rng.sample(pool, len(pool)):
        if len(picked) == count:
            break
        if not any(conflict(value, other) for other in picked):
            picked.append(value)
    return picked


def _attribute_conflict(first: str, second: str) -> bool:
    return fuzzy_match(first, second) or first in second or second in first


def _title_case(text: str) -> str:
    return " ".join(word[:1].upper() + word[1:] for word in text.split())


def _make_product(rng: random.Random, category: Category, kind: ProductType, asin: str) -> Product:
    brand = rng.choice(category.brands)
    attributes = _distinct(rng, category.attributes, 3, _attribute_conflict)
    options = {}
    for group in kind.options:
        pool = OPTION_VALUES[group]
        values = _distinct(rng, pool, rng.randint(2, min(4, len(pool))), _option_conflict)
        options[DISPLAY_NAMES.get(group, group)] = values
    low, high = kind.price_range
    shown = round(rng.uniform(low, high)) - 0.01
    if rng.random() < 0.15:
        top = round(shown * 1.3) - 0.01
        price_tag, price = f"${shown:.2f} to ${top:.2f}", rng.uniform(shown, top)
    else:
        price_tag, price = f"${shown:.2f}", shown
    blurb = rng.choice(category.blurbs)
    reviews = [
        {"title": rng.choice(_REVIEW_TITLES), "score": rng.randint(3, 5), "body": rng.choice(_REVIEW_BODIES)}
        for _ in range(rng.randint(1, 3))
    ]
    rating = sum(review["score"] for review in reviews) / len(reviews)
    return Product(
        asin=asin,
        title=f"{brand} {_title_case(kind.name)}, {_title_case(attributes[0])}, {_title_case(attributes[1])}",
        price_tag=price_tag,
        price=price,
        options=options,
        bullet_points=[f"{_title_case(attribute)}. {blurb}" for attribute in attributes],
        description=f"{brand} {kind.name}: {attributes[2]}. {blurb}",
        attributes=attributes,
        category=category.key,
        query=kind.name,
        product_category=f"{category.root} › {kind.leaf}",
        reviews=reviews,
        rating=f"{rating:.1f}",
    )


def _instruction(rng: random.Random, kind: ProductType, attributes: list[str], options: dict[str, str]) -> str:
    article = "some" if kind.plural else ("an" if kind.name[0] in "aeiou" else "a")
    opener = rng.choice(_OPENERS)
    if rng.random() < 0.5:
        text = f"{opener} {article} {kind.name} that is {' and '.join(attributes)}"
    else:
        first, *rest = attributes
        text = f"{opener} {first} {kind.name}" + (f" that is {' and '.join(rest)}" if rest else "")
    if options:
        text += " with " + ", and ".join(f"{name}: {value}" for name, value in options.items())
    return text


def _make_goals(
    rng: random.Random, product: Product, kind: ProductType, count: int, seen_texts: set[str]
) -> list[Goal]:
    """Up to ``count`` goals for ``product`` whose instructions no earlier goal has (so splits never share one)."""
    goals: list[Goal] = []
    for _ in range(count * 4):
        if len(goals) == count:
            break
        attributes = rng.sample(product.attributes, 2)
        options = {name: rng.choice(values) for name, values in product.options.items()}
        upper, price_text = price_limit(product.price, rng)
        text = _instruction(rng, kind, attributes, options) + price_text
        if text in seen_texts:
            continue
        seen_texts.add(text)
        goals.append(
            Goal(
                asin=product.asin,
                instruction_text=text,
                attributes=attributes,
                goal_options=list(options.values()),
                price_upper=upper,
                query=product.query,
                name=product.title,
                category=product.category,
                product_category=product.product_category,
                search_query=f"{' '.join(attributes)} {kind.name}",
            )
        )
    return goals


def generate_catalogue(num_products: int = 1000, goals_per_product: int = 3, seed: int = 0) -> Catalogue:
    """A WebShop-style catalogue of ``num_products`` products (every type equally often) and their goals."""
    if num_products < 20:
        raise ValueError(f"num_products must be >= 20 so that every split has goals, got {num_products}.")
    if goals_per_product < 1:
        raise ValueError(f"goals_per_product must be >= 1, got {goals_per_product}.")
    rng = random.Random(f"webshop-style:{seed}")
    kinds = [(category, kind) for category in CATEGORIES for kind in category.types]
    asins: set[str] = set()
    products, product_kinds = [], {}
    for index in range(num_products):
        category, kind = kinds[index % len(kinds)]
        asin = "B0" + "".join(rng.choices(_ASIN_CHARS, k=8))
        while asin in asins:
            asin = "B0" + "".join(rng.choices(_ASIN_CHARS, k=8))
        asins.add(asin)
        products.append(_make_product(rng, category, kind, asin))
        product_kinds[asin] = kind
    rng.shuffle(products)
    test_end = max(1, round(num_products * TEST_FRACTION))
    dev_end = test_end + max(1, round(num_products * DEV_FRACTION))
    goals_by_part: list[list[Goal]] = [[], [], []]
    seen_texts: set[str] = set()
    for index, product in enumerate(products):
        part = 0 if index < test_end else 1 if index < dev_end else 2
        goals_by_part[part] += _make_goals(rng, product, product_kinds[product.asin], goals_per_product, seen_texts)
    test, dev, train = goals_by_part
    return Catalogue(products, test + dev + train, (len(test), len(test) + len(dev)), source="generated")


def load_generated(
    cache_dir: str | os.PathLike[str], num_products: int = 1000, goals_per_product: int = 3, seed: int = 0
) -> Catalogue:
    """:func:`generate_catalogue`, cached as ``<cache_dir>/generated-<hash>.json`` (written atomically)."""
    params = f"v{GENERATOR_VERSION}:{num_products}:{goals_per_product}:{seed}"
    path = Path(cache_dir).expanduser() / f"generated-{hashlib.sha256(params.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        try:
            with open(path, encoding="utf-8") as f:
                return Catalogue.from_json(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as error:  # a damaged cache file: generate it again
            problem = f"{type(error).__name__}: {error}"
            warnings.warn(f"{path}: unreadable cached catalogue ({problem}); regenerating it.", stacklevel=2)
    catalogue = generate_catalogue(num_products, goals_per_product, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(catalogue.to_json(), f)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return catalogue
