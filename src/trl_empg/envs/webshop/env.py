"""WebShop adapter (``make("webshop")``): WebShop's text mode played in-process, without its web server.

The pages, their text and the action grammar follow princeton-nlp/WebShop's ``web_agent_text_env.py`` in its
``text`` observation mode (the visible texts of each page joined by ``" [SEP] "``):

- search page: the instruction and a search bar; ``search[query]`` runs a search (bm25s, top 50 hits);
- results page: ``Page n (Total results: t)``, 10 products per page (asin, title, price), ``click[next >]``,
  ``click[< prev]`` from page 2 on, ``click[back to search]``; ``click[<asin>]`` opens a product;
- item page: the option groups and their values (``click[<value>]`` selects one per group), title, price, rating,
  ``click[description]`` / ``click[features]`` / ``click[reviews]`` sub-pages (``click[< prev]`` returns),
  ``click[< prev]`` back to the results, and ``click[buy now]``, which ends the episode with WebShop's reward
  (:mod:`trl_empg.envs.webshop.reward`). Leaving the item page for the results clears the selected options.

Arguments are lower-cased as WebShop does, so clicks are case-insensitive. ``info["admissible_actions"]`` lists them
as verl-agent does: ``search[<your query>]`` when the search bar is shown, then ``click[<clickable>]`` for every
button, product link and option value, in page order. Two departures, both so that the admissible list is exactly
what the env accepts: WebShop runs a ``search[...]`` from any page (here only from the search page, where the bar
is) and verl-agent lists the search button itself as ``click[search]``, which WebShop's text env ignores. Anything
else is flagged ``info["invalid_action"]`` and leaves the page as it was. The done page shows only the score.

Data (:mod:`trl_empg.envs.webshop.data`): the official product, attribute and human-instruction files when
``data_dir`` (or ``$WEBSHOP_DATA``) points at them, with WebShop's goal split (test goals 0-499, dev 500-1499, train
the rest; a task seed is the goal index, as WebShop's session index); otherwise a WebShop-style shop generated
offline (:mod:`trl_empg.envs.webshop.gen`). The catalogue and its search index are built once per process and
cached on disk under ``cache_dir`` (default ``$TRL_EMPG_WEBSHOP_CACHE`` or ``~/.cache/trl_empg/webshop``).
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path

from ..base import SPLITS, Info, TextEnv, check_split, make_info
from .data import (
    DEFAULT_ATTRIBUTE_FILE,
    DEFAULT_INSTRUCTION_FILE,
    DEFAULT_PRODUCT_FILE,
    WEBSHOP_GOAL_SPLIT,
    Catalogue,
    Goal,
    Product,
    load_official,
)
from .gen import CATEGORIES, load_generated
from .reward import NounExtractor, compute_reward, fuzzy_score, normalize_color
from .search import ProductSearch

__all__ = ["WebShopEnv", "PRODUCT_WINDOW"]

#: WebShop's ``PRODUCT_WINDOW``: products per results page.
PRODUCT_WINDOW = 10
#: WebShop's five product categories; ``make("webshop:<category>")`` keeps the goals of one.
TASK_TYPES = tuple(category.key for category in CATEGORIES)
SEARCH_PLACEHOLDER = "search[<your query>]"
BACK_TO_SEARCH, PREV_PAGE, NEXT_PAGE, BUY_NOW = "back to search", "< prev", "next >", "buy now"
SUB_PAGES = {"description": "Description", "features": "Features", "reviews": "Reviews"}
_ACTION = re.compile(r"(search|click)\[(.+)\]", re.DOTALL)
_SEP = " [SEP] "


@functools.lru_cache(maxsize=4)
def _shop(source: tuple, cache_dir: str) -> tuple[Catalogue, ProductSearch]:
    """The catalogue and its index, shared by every env of this process with the same data (they only read them)."""
    if source[0] == "official":
        _, data_dir, product_file, attribute_file, instruction_file, num_products, goal_split = source
        catalogue = load_official(
            data_dir,
            product_file=product_file,
            attribute_file=attribute_file,
            instruction_file=instruction_file,
            num_products=num_products,
            goal_split=goal_split,
        )
    else:
        _, num_products, goals_per_product, seed = source
        catalogue = load_generated(cache_dir, num_products, goals_per_product, seed)
    return catalogue, ProductSearch([product.search_text() for product in catalogue.products], cache_dir)


class WebShopEnv(TextEnv):
    """WebShop's text mode: find, configure and buy the product an instruction describes.

    Args:
        task_type: a category (beauty, food, fashion, makeup, electronics) to keep only its goals; None for all.
        data_dir: directory of the official files; default ``$WEBSHOP_DATA``; unset means the generated shop.
        product_file, attribute_file, instruction_file: the official file names (relative to ``data_dir`` unless
            absolute); the defaults are the 1,000-product files verl-agent uses, the full set is
            ``items_shuffle.json`` and ``items_ins_v2.json``.
        num_products: official data: keep the first N products (WebShop's ``num_products``); generated shop: its
            size (default 1000).
        goal_split: official data: (end of test, end of dev) goal indices; WebShop's (500, 1500) by default.
        goals_per_product, generator_seed: the generated shop's goals per product and seed.
        max_steps: the episode ends unbought (reward 0) after this many steps; 15 as in EMPG and verl-agent.
        cache_dir: where the generated shop and the search indexes are cached.
        type_match: noun extraction for the type reward: "auto" (spaCy's English model if installed, else content
            words), "spacy" or "content-words"; ``info["type_match_method"]`` says which one scored.
    """

    task_description = (
        "WebShop: buy the product the instruction asks for. Search with search[query], open a product, choose its "
        "options and read its pages with click[element], then click[buy now]. The score rewards the product's type, "
        "attributes, options and a price within the limit."
    )

    def __init__(
        self,
        task_type: str | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        product_file: str = DEFAULT_PRODUCT_FILE,
        attribute_file: str = DEFAULT_ATTRIBUTE_FILE,
        instruction_file: str = DEFAULT_INSTRUCTION_FILE,
        num_products: int | None = None,
        goal_split: tuple[int, int] | list[int] = WEBSHOP_GOAL_SPLIT,
        goals_per_product: int = 3,
        generator_seed: int = 0,
        max_steps: int = 15,
        cache_dir: str | os.PathLike[str] | None = None,
        type_match: str = "auto",
    ) -> None:
        if task_type is not None and task_type not in TASK_TYPES:
            raise ValueError(f"Unknown WebShop task type {task_type!r}; expected one of {list(TASK_TYPES)} or none.")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
        self.task_type = task_type
        self.max_steps = int(max_steps)
        self.nouns = NounExtractor(type_match)
        data_dir = data_dir or os.environ.get("WEBSHOP_DATA") or None
        default_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trl_empg" / "webshop"
        root = Path(cache_dir or os.environ.get("TRL_EMPG_WEBSHOP_CACHE") or default_cache).expanduser()
        if data_dir is not None:
            source: tuple = (
                "official",
                str(Path(data_dir).expanduser().resolve()),
                product_file,
                attribute_file,
                instruction_file,
                num_products,
                tuple(goal_split),
            )
        else:
            source = (
                "generated",
                1000 if num_products is None else int(num_products),
                goals_per_product,
                generator_seed,
            )
        self.catalogue, self.search_engine = _shop(source, str(root))
        #: "official" (WebShop's data) or "generated" (report as "WebShop-style").
        self.data_source = self.catalogue.source
        self.env_id = "webshop" if task_type is None else f"webshop:{task_type}"
        if self.data_source == "generated":
            self.task_description += " (A WebShop-style shop generated offline.)"
        self._product_index = {product.asin: i for i, product in enumerate(self.catalogue.products)}
        self._seeds = {split: self._split_seeds(split) for split in SPLITS}
        self._seed_sets = {split: frozenset(seeds) for split, seeds in self._seeds.items()}
        self._gold_plans: dict[int, list[str]] = {}
        self._done: bool | None = None

    def _split_seeds(self, split: str) -> list[int]:
        seeds = self.catalogue.split_range(split)
        if self.task_type is None:
            return list(seeds)
        return [seed for seed in seeds if self.catalogue.goals[seed].category == self.task_type]

    def task_seeds(self, split: str = "train") -> list[int]:
        return list(self._seeds[check_split(split)])

    # -- episode --------------------------------------------------------------------------------------------------

    def reset(self, seed: int = 0, split: str = "train") -> tuple[str, Info]:
        if seed not in self._seed_sets[check_split(split)]:
            raise ValueError(
                f"Seed {seed!r} is not a {split} goal of {self.env_id} ({len(self._seeds[split])} goals; see "
                f"task_seeds({split!r}))."
            )
        self._goal: Goal = self.catalogue.goals[seed]
        self._done = False
        self._steps = 0
        self._go_search_page()
        if seed not in self._gold_plans:
            self._gold_plans[seed] = self._gold_plan(self._goal)
        info = make_info(
            admissible_actions=self._admissible(),
            gold_actions=self._gold_plans[seed],
            instruction=self._goal.instruction_text,
            type_match_method=self.nouns.method,
            data_source=self.data_source,
        )
        return self._observation, info

    def step(self, action: str) -> tuple[str, float, bool, Info]:
        if self._done is None:
            raise RuntimeError(f"{self.env_id}: call reset() before step().")
        if self._done:
            raise RuntimeError(f"{self.env_id}: the episode is over; call reset() to start another.")
        if not isinstance(action, str):
            raise TypeError(f"Actions are strings, got {type(action).__name__}.")
        self._steps += 1
        match = _ACTION.fullmatch(action.strip())
        name, argument = (match.group(1), match.group(2).strip().lower()) if match else ("", "")
        extra: Info = {}
        reward = 0.0
        if name == "search" and argument and self._page == "search":
            self._go_results(argument, 1)
        elif name == "click" and argument in self._clickables:
            reward, extra = self._click(argument)
        else:
            extra["invalid_action"] = True
        won = self._page == "done" and math.isclose(reward, 1.0)
        truncated = self._page != "done" and self._steps >= self.max_steps
        self._done = self._page == "done" or truncated
        info = make_info(
            admissible_actions=self._admissible() if not self._done else [],
            won=won,
            score=reward,
            page=self._page,
            truncated=truncated,
            **{"invalid_action": False, **extra},
        )
        return self._observation, reward, self._done, info

    def _click(self, clickable: str) -> tuple[float, Info]:
        target = self._clickables[clickable]
        if clickable == BACK_TO_SEARCH:
            self._go_search_page()
        elif clickable == NEXT_PAGE:
            self._go_results(self._keywords, self._page_number + 1)
        elif clickable == PREV_PAGE:
            if self._page == "results":
                self._go_results(self._keywords, self._page_number - 1)
            elif self._page == "item":
                self._go_results(self._keywords, self._page_number)
            else:
                self._go_item(self._asin)
        elif clickable in SUB_PAGES and self._page == "item":
            self._go_sub_page(SUB_PAGES[clickable])
        elif clickable == BUY_NOW:
            return self._buy()
        elif self._page == "results":
            self._go_item(target)
        else:
            self._options[target] = clickable
            self._go_item(self._asin)
        return 0.0, {}

    def _buy(self) -> tuple[float, Info]:
        product = self.catalogue.by_asin[self._asin]
        result = compute_reward(product, self._goal, product.price, list(self._options.values()), self.nouns)
        self._page = "done"
        self._clickables = {}
        self._observation = _SEP.join(
            ["Thank you for shopping with us!", "Your score (min 0.0, max 1.0)", str(result.reward)]
        )
        return result.reward, {
            "reward_details": result.details(),
            "type_match_method": self.nouns.method,
            "purchased_asin": product.asin,
            "purchased_options": dict(self._options),
        }

    # -- pages ----------------------------------------------------------------------------------------------------

    def _go_search_page(self) -> None:
        self._page, self._keywords, self._page_number, self._asin, self._options = "search", "", 1, "", {}
        self._hits: list[int] = []
        self._clickables: dict[str, str] = {}
        self._observation = _SEP.join(["WebShop", "Instruction:", self._goal.instruction_text, "Search"])

    def _header(self) -> list[str]:
        return ["Instruction:", self._goal.instruction_text, "Back to Search"]

    def _go_results(self, keywords: str, page_number: int) -> None:
        if keywords != self._keywords or not self._hits:
            self._hits = self.search_engine.search(keywords)
        self._page, self._keywords, self._page_number, self._options = "results", keywords, page_number, {}
        shown = [self.catalogue.products[i] for i in self._hits[(page_number - 1) * PRODUCT_WINDOW :][:PRODUCT_WINDOW]]
        buttons = ([PREV_PAGE] if page_number > 1 else []) + [NEXT_PAGE]
        self._clickables = {BACK_TO_SEARCH: "", **{b: "" for b in buttons}}
        self._clickables.update({product.asin.lower(): product.asin for product in shown})
        lines = [*self._header(), f"Page {page_number} (Total results: {len(self._hits)})"]
        lines += ["< Prev"] if page_number > 1 else []
        lines.append("Next >")
        for product in shown:
            lines += [product.asin, product.title, product.price_tag]
        self._observation = _join(lines)

    def _go_item(self, asin: str) -> None:
        product = self.catalogue.by_asin[asin]
        self._page, self._asin = "item", asin
        self._clickables = {BACK_TO_SEARCH: "", PREV_PAGE: "", **dict.fromkeys(SUB_PAGES, ""), BUY_NOW: ""}
        lines = [*self._header(), "< Prev"]
        for group, values in product.options.items():
            lines.append(group)
            lines += values
            self._clickables.update(dict.fromkeys(values, group))
        lines += [product.title, f"Price: {product.price_tag}", f"Rating: {product.rating}"]
        lines += ["Description", "Features", "Reviews", "Buy Now"]
        self._observation = _join(lines)

    def _go_sub_page(self, name: str) -> None:
        product = self.catalogue.by_asin[self._asin]
        self._page = "sub"
        self._clickables = {BACK_TO_SEARCH: "", PREV_PAGE: ""}
        if name == "Description":
            body = [product.description]
        elif name == "Features":
            body = list(product.bullet_points)
        else:
            body = [part for r in product.reviews for part in (f'"{r["title"]}"', str(r["score"]), r["body"])]
        self._observation = _join([*self._header(), "< Prev", *body])

    def _admissible(self) -> list[str]:
        search = [SEARCH_PLACEHOLDER] if self._page == "search" else []
        return search + [f"click[{clickable}]" for clickable in self._clickables]

    # -- gold plans -----------------------------------------------------------------------------------------------

    def _gold_plan(self, goal: Goal) -> list[str]:
        """Search the goal's query (then the target's scrape query), page to the target, open it, choose the goal's
        options, buy. Empty when neither query retrieves the target within WebShop's 50 hits."""
        target = self._product_index[goal.asin]
        for query in dict.fromkeys([goal.search_query.lower(), goal.query]):
            hits = self.search_engine.search(query)
            if target in hits:
                break
        else:
            return []
        product = self.catalogue.products[target]
        plan = [f"search[{query}]"] + [f"click[{NEXT_PAGE}]"] * (hits.index(target) // PRODUCT_WINDOW)
        plan.append(f"click[{product.asin.lower()}]")
        choices: dict[str, str] = {}
        for wanted in goal.goal_options:
            best = _best_option(product, wanted)
            if best is not None:
                choices[best[0]] = best[1]
        plan += [f"click[{value}]" for value in choices.values()]
        return [*plan, f"click[{BUY_NOW}]"]


def _best_option(product: Product, wanted: str) -> tuple[str, str] | None:
    """The (group, value) of ``product`` that best matches a goal option under the reward's rule, if any matches."""
    scored = [
        (fuzzy_score(normalize_color(value), normalize_color(wanted)), value == wanted, group, value)
        for group, values in product.options.items()
        for value in values
    ]
    best = max(scored, default=None, key=lambda item: item[:2])
    return (best[2], best[3]) if best is not None and best[0] > 85 else None


def _join(lines: list[str]) -> str:
    return _SEP.join(line.strip() for line in lines if line.strip())
