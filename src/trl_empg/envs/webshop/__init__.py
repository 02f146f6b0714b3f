"""WebShop (``make("webshop")``, ``make("webshop:<category>")``): shopping for a product that fits an instruction.

The family: princeton-nlp/WebShop's text mode played in-process (search page, results, item page, ``buy now``), with
``search[query]`` and ``click[...]`` actions and gold plans (:mod:`.env`). Data: the official product, attribute and
human-instruction files when ``data_dir`` / ``$WEBSHOP_DATA`` points at them, with WebShop's goal split
(:mod:`.data`); otherwise a WebShop-style shop generated offline from templates (:mod:`.gen`; report results on it as
"WebShop-style"). Products are found with a bm25s index (:mod:`.search`). Reward: WebShop's purchase reward from
``goal.py`` (type match times the share of matched attributes, options and price, :mod:`.reward`), given on
``buy now``; ``won`` when it is 1.
"""

from .data import Goal, Product, WebShopDataError
from .env import PRODUCT_WINDOW, TASK_TYPES, WebShopEnv
from .reward import compute_reward

__all__ = ["WebShopEnv", "PRODUCT_WINDOW", "TASK_TYPES", "Goal", "Product", "WebShopDataError", "compute_reward"]
