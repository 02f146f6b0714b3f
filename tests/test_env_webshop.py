"""The WebShop adapter: pages and actions, WebShop's reward, official-schema files, offline shop, pool, training."""

from __future__ import annotations

import json
import math
import os
import random
import signal
from pathlib import Path

import pytest

pytest.importorskip("bm25s")
pytest.importorskip("rapidfuzz")

from trl_empg import EMPGConfig, EMPGTrainer  # noqa: E402
from trl_empg.envs import SPLITS, make  # noqa: E402
from trl_empg.envs.pool import EnvPool  # noqa: E402
from trl_empg.envs.webshop import WebShopEnv  # noqa: E402
from trl_empg.envs.webshop.data import Goal, Product, WebShopDataError  # noqa: E402
from trl_empg.envs.webshop.reward import (  # noqa: E402
    NounExtractor,
    attribute_matches,
    compute_reward,
    option_matches,
)
from trl_empg.envs.webshop.search import ProductSearch  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("webshop-cache")


@pytest.fixture(scope="module")
def shop(cache_dir) -> WebShopEnv:
    return make("webshop", cache_dir=cache_dir)


def play(env: WebShopEnv, actions: list[str]) -> list[tuple]:
    return [env.step(action) for action in actions]


# ---------------------------------------------------------------------------------------------------------------------
# The offline (WebShop-style) shop


def test_gold_plans_win_every_goal_of_every_split(shop) -> None:
    assert shop.data_source == "generated" and "WebShop-style" in shop.task_description
    for split in SPLITS:
        seeds = shop.task_seeds(split)
        assert len(seeds) >= 450
        for seed in seeds:
            _, info = shop.reset(seed=seed, split=split)
            *_, (observation, reward, done, last) = play(shop, info["gold_actions"])
            assert done and reward == 1.0 and last["won"] and last["score"] == 1.0, (split, seed)
            assert last["reward_details"]["r_type"] == 1.0 and last["type_match_method"] == "content-words"


def test_splits_are_disjoint_in_seeds_instructions_and_targets(shop) -> None:
    goals = shop.catalogue.goals
    seeds = {split: set(shop.task_seeds(split)) for split in SPLITS}
    texts = {split: {goals[s].instruction_text for s in seeds[split]} for split in SPLITS}
    targets = {split: {goals[s].asin for s in seeds[split]} for split in SPLITS}
    for one, other in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not seeds[one] & seeds[other] and not texts[one] & texts[other] and not targets[one] & targets[other]
    assert {goals[s].category for s in seeds["test"]} == {"beauty", "food", "fashion", "makeup", "electronics"}
    assert "price lower than" in goals[0].instruction_text and goals[0].goal_options
    with pytest.raises(ValueError, match="not a dev goal"):
        shop.reset(seed=min(seeds["train"]), split="dev")


def test_target_is_on_the_first_result_page_for_most_goals(shop) -> None:
    index = {product.asin: i for i, product in enumerate(shop.catalogue.products)}
    goals = shop.catalogue.goals
    first_page = sum(index[g.asin] in shop.search_engine.search(g.search_query)[:10] for g in goals)
    assert first_page / len(goals) >= 0.9


def test_the_same_actions_replay_the_same_episode(shop, cache_dir) -> None:
    other = make("webshop", cache_dir=cache_dir)
    rng = random.Random(0)
    for seed in shop.task_seeds("train")[:20]:
        first, info = shop.reset(seed=seed, split="train")
        assert other.reset(seed=seed, split="train") == (first, info)
        for _ in range(8):
            action = rng.choice(info["admissible_actions"]).replace("<your query>", "black t-shirt")
            step = shop.step(action)
            assert other.step(action) == step and not step[3]["invalid_action"]
            info = step[3]
            if step[2]:
                break


def test_pages_paging_sub_pages_and_options(shop) -> None:
    seed = shop.task_seeds("test")[0]
    _, info = shop.reset(seed=seed, split="test")
    goal = shop.catalogue.goals[seed]
    product = shop.catalogue.by_asin[goal.asin]
    search, click_target, *option_clicks, buy = info["gold_actions"]
    page1, *_ = shop.step(search)
    assert page1.startswith("Instruction: [SEP] ") and "Page 1 (Total results: " in page1 and "< Prev" not in page1
    page2, _, _, info = shop.step("click[Next >]")
    assert "Page 2 (Total results: " in page2 and "< Prev [SEP] Next >" in page2 and page2 != page1
    assert info["admissible_actions"][:3] == ["click[back to search]", "click[< prev]", "click[next >]"]
    assert shop.step("click[< prev]")[0] == page1
    assert click_target == f"click[{goal.asin.lower()}]"
    item, *_ = shop.step(f"click[{goal.asin}]")  # arguments are case-insensitive, as in WebShop
    assert f"{product.title} [SEP] Price: {product.price_tag}" in item and item.endswith("Reviews [SEP] Buy Now")
    play(shop, option_clicks)
    description, *_ = shop.step("click[description]")
    assert description.endswith(f"< Prev [SEP] {product.description}")
    assert shop.step("click[< prev]")[0] == item
    features, *_ = shop.step("click[features]")
    assert all(bullet in features for bullet in product.bullet_points)
    shop.step("click[< prev]")
    reviews, *_ = shop.step("click[reviews]")
    assert f'"{product.reviews[0]["title"]}"' in reviews
    shop.step("click[< prev]")
    # Options survive the sub-pages; the purchase pays them.
    _, reward, done, info = shop.step(buy)
    assert done and reward == 1.0 and list(info["purchased_options"].values()) == goal.goal_options
    with pytest.raises(RuntimeError, match="episode is over"):
        shop.step("click[back to search]")


def test_leaving_the_item_page_clears_options_and_back_to_search_resets(shop) -> None:
    seed = shop.task_seeds("dev")[3]
    _, info = shop.reset(seed=seed, split="dev")
    search, click_target, *option_clicks, buy = info["gold_actions"]
    play(shop, [search, click_target, *option_clicks, "click[< prev]", click_target])
    _, reward, _, info = shop.step(buy)
    goal = shop.catalogue.goals[seed]
    n = len(goal.attributes) + len(goal.goal_options) + 1
    assert info["purchased_options"] == {} and reward == pytest.approx((len(goal.attributes) + 1) / n)
    first, info = shop.reset(seed=seed, split="dev")
    play(shop, [search, "click[back to search]"])
    assert shop.step("click[back to search]")[3]["invalid_action"]  # not on the search page
    assert shop._observation == first


def test_malformed_and_impossible_actions_are_flagged_and_change_nothing(shop) -> None:
    seed = shop.task_seeds("train")[0]
    first, info = shop.reset(seed=seed, split="train")
    assert info["admissible_actions"] == ["search[<your query>]"]
    for action in ["buy it", "click[buy now]", "click[search]", "search[]", "search[   ]", "Search[shampoo]", ""]:
        observation, reward, done, step_info = shop.step(action)
        assert step_info["invalid_action"] and observation == first and reward == 0.0 and not done, action
        assert step_info["admissible_actions"] == ["search[<your query>]"]
    shop.reset(seed=seed, split="train")
    results, _, _, info = shop.step(info["gold_actions"][0])
    for action in ["search[shampoo]", "click[b000000000]", "click[description]", "click[buy now]", "click[]"]:
        observation, _, _, step_info = shop.step(action)
        assert step_info["invalid_action"] and observation == results, action
        assert step_info["admissible_actions"] == info["admissible_actions"]
    assert all(not shop.step(a)[3]["invalid_action"] for a in ["click[next >]", "click[< prev]"])


def test_the_episode_ends_unbought_after_max_steps(cache_dir) -> None:
    env = make("webshop", cache_dir=cache_dir, max_steps=15)
    env.reset(seed=env.task_seeds("train")[0], split="train")
    steps = play(env, ["search[hoodie]"] + ["click[next >]"] * 14)
    assert [done for _, _, done, _ in steps] == [False] * 14 + [True]
    assert steps[-1][3]["truncated"] and not steps[-1][3]["won"] and steps[-1][1] == 0.0


def test_task_types_and_type_matching(cache_dir) -> None:
    fashion = make("webshop:fashion", cache_dir=cache_dir)
    assert fashion.env_id == "webshop:fashion"
    assert {fashion.catalogue.goals[s].category for s in fashion.task_seeds("test")} == {"fashion"}
    with pytest.raises(ValueError, match="Unknown WebShop task type 'toys'.*electronics"):
        make("webshop:toys", cache_dir=cache_dir)
    with pytest.raises(ValueError, match="type_match"):
        make("webshop", cache_dir=cache_dir, type_match="nouns")
    if NounExtractor().method == "content-words":
        with pytest.raises(ValueError, match="en_core_web_sm"):
            NounExtractor("spacy")
    else:
        assert NounExtractor("spacy").method.startswith("spacy:")


def test_the_index_is_cached_atomically(tmp_path, monkeypatch) -> None:
    documents = ["red cotton t-shirts", "blue denim jeans", "sulfate free shampoo bottles"]
    built = ProductSearch(documents, tmp_path)
    assert built.build_seconds > 0 and built.search("shampoo bottle") == [2] and built.search("socks") == []
    loaded = ProductSearch(documents, tmp_path)
    assert loaded.build_seconds == 0.0 and loaded.search("t-shirt red") == [0]
    assert [p.name for p in tmp_path.iterdir()] == [built.path.name]  # no staging directory left behind
    monkeypatch.setenv("TRL_EMPG_WEBSHOP_CACHE", str(tmp_path / "from-env"))
    make("webshop", num_products=40)
    assert {p.name.split("-")[0] for p in (tmp_path / "from-env").iterdir()} == {"generated", "index"}


# ---------------------------------------------------------------------------------------------------------------------
# WebShop's reward, by hand from goal.py's formula (content-word nouns)

NOUNS = NounExtractor("content-words")
GOAL = Goal(
    asin="B000000001",
    instruction_text="i need a sulfate free shampoo for dry hair with scent: lavender, and size: 8 fl oz",
    attributes=["sulfate free", "for dry hair"],
    goal_options=["lavender", "8 fl oz"],
    price_upper=30.0,
    query="shampoo",
    name="Verdant Roots Shampoo, Sulfate Free, For Dry Hair",
    category="beauty",
    product_category="Beauty & Personal Care › Hair Care › Shampoos",
    search_query="sulfate free for dry hair shampoo",
)


def product(**fields) -> Product:
    values = dict(
        asin="B000000001",
        title=GOAL.name,
        price_tag="$20.00",
        price=20.0,
        options={"scent": ["lavender", "vanilla"], "size": ["8 fl oz", "16 fl oz"]},
        bullet_points=["Gentle."],
        description="A shampoo.",
        attributes=["sulfate free", "for dry hair"],
        category="beauty",
        query="shampoo",
        product_category=GOAL.product_category,
    )
    return Product(**{**values, **fields})


BOTH = ["lavender", "8 fl oz"]
#: Title content words shared with the goal's: 1 of 7 (< 0.2); another query.
WEAK_TITLE = {"title": "Shampoo Bar Of Soap", "query": "soap"}
SPEAKER = {"title": "Pulse Audio Bluetooth Speaker", "query": "speaker", "product_category": "Electronics › Speakers"}
IN_FEATURES = {"attributes": ["DUMMY_ATTR"], "title": "Shampoo", "bullet_points": ["Sulfate free.", "For dry hair."]}


@pytest.mark.parametrize(
    ("case", "bought", "price", "chosen", "expected"),
    [
        ("exact", {}, 20.0, BOTH, 5 / 5),
        ("wrong option", {}, 20.0, ["vanilla", "8 fl oz"], 4 / 5),
        ("no options", {}, 20.0, [], 3 / 5),
        ("over the price limit", {}, 30.01, BOTH, 4 / 5),
        ("price equal to the limit", {}, 30.0, BOTH, 5 / 5),
        ("missing attribute", {"attributes": ["sulfate free"], "title": "Verdant Roots Shampoo"}, 20.0, BOTH, 4 / 5),
        ("attributes found in the features", IN_FEATURES, 20.0, ["lavender"], 4 / 5),
        ("wrong option and over price", {}, 45.0, ["vanilla"], 2 / 5),
        ("weak type: no category level shared", {**WEAK_TITLE, "product_category": "Health › Soap"}, 20.0, BOTH, 0.5),
        (
            "weak type: one level",
            {**WEAK_TITLE, "product_category": "Beauty & Personal Care › Soaps"},
            20.0,
            BOTH,
            0.5,
        ),
        # Two shared category levels make the type match despite the weak title.
        (
            "two levels",
            {**WEAK_TITLE, "product_category": "Beauty & Personal Care › Hair Care › Soaps"},
            20.0,
            BOTH,
            1,
        ),
        ("wrong type: no title word shared", SPEAKER, 20.0, BOTH, 0.0),
        # "light lavender" normalises to "lavender" (the first WebShop colour word it contains).
        ("colour normalised", {}, 20.0, ["light lavender", "8 fl oz"], 5 / 5),
    ],
)
def test_reward_matches_goal_py_by_hand(case, bought, price, chosen, expected) -> None:
    assert compute_reward(product(**bought), GOAL, price, chosen, NOUNS).reward == pytest.approx(expected), case


def test_fuzzy_matching_and_colour_normalisation_follow_thefuzz_and_normalize_py() -> None:
    # "navy blue" normalises to "blue" (the first WebShop colour word in it), which does not match "navy".
    assert option_matches(["navy blue"], ["navy"]) == 0 and option_matches(["navy"], ["navy"]) == 1
    # thefuzz rounds rapidfuzz's token-set ratio: "size 10" / "size 11" scores 85.7 -> 86 > 85, a match.
    assert option_matches(["size 11"], ["size 10"]) == 1 and option_matches(["16 fl oz"], ["8 fl oz"]) == 0
    assert attribute_matches(product(attributes=["Sulfate-Free"], title="x"), ["sulfate free", "for dry hair"]) == 1


def test_title_overlap_below_a_tenth_gives_type_point_one() -> None:
    goal = Goal(**{**GOAL.__dict__, "name": "Alpha Beta Gamma Delta Epsilon Zeta Eta Theta Iota Kappa Shampoo"})
    bought = product(title="Shampoo", query="soap", product_category="Health › Soap")
    result = compute_reward(bought, goal, 20.0, ["lavender", "8 fl oz"], NOUNS)
    assert result.title_score == pytest.approx(1 / 11) and result.r_type == 0.1 and result.reward == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------------------------------
# The official files: a few products written here in WebShop's schema


def official_files(root: Path) -> Path:
    def item(asin, name, pricing, options, query="shampoo"):
        return {
            "asin": asin,
            "name": name,
            "full_description": f"{name}. Gentle on hair.",
            "pricing": pricing,
            "small_description": ["Salon quality", "For daily use"],
            "images": ["http://img/1.jpg"],
            "customization_options": options,
            "category": "beauty",
            "query": f"  {query.upper()} ",
            "product_category": "Beauty & Personal Care › Hair Care › Shampoos",
        }

    scent = {"Scent": [{"value": "Lavender", "image": None}, {"value": "Coconut/Lime", "image": None}]}
    products = [
        item("B0SHAMP001", "Aqua Sulfate Free Shampoo", "$14.99", scent),
        item("B0SHAMP002", "Terra Volumizing Shampoo", "$9.00 - $12.00", None),
        item("B0SOAP0003", "Olive Bar Soap", "", {"Size": [{"value": "3 Pack"}, {"value": "6 Pack"}]}, "soap"),
        item("B0SHAMP001", "a duplicate asin, skipped", "$1.00", None),
    ]
    attributes = {"B0SHAMP001": {"attributes": ["sulfate free", "salon quality"]}, "B0SOAP0003": {}}

    def ask(text: str, attributes: list[str], options: list[str]) -> dict:
        return {
            "instruction": text,
            "instruction_attributes": attributes,
            "instruction_options": options,
            "worker_id": 1,
        }

    instructions = {
        "B0SHAMP001": [
            ask("i want a sulfate free shampoo in coconut | lime.", ["sulfate free"], ["coconut | lime"]),
            ask("no attributes: skipped", [], []),
        ],
        "B0SHAMP002": [ask("a volumizing shampoo", ["volumizing"], [])],
        "B0SOAP0003": [
            ask("i need olive bar soap, 6 pack", ["olive"], ["6 pack"]),
            ask("olive soap 3 pack", ["olive"], ["3 pack"]),
        ],
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, data in [
        ("items_shuffle_1000.json", products),
        ("items_ins_v2_1000.json", attributes),
        ("items_human_ins.json", instructions),
    ]:
        (root / name).write_text(json.dumps(data))
    return root


def test_official_schema_files_load_and_play(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WEBSHOP_DATA", str(official_files(tmp_path / "data")))
    env = make("webshop", cache_dir=tmp_path / "cache", goal_split=(1, 2))
    catalogue = env.catalogue
    assert env.data_source == "official" and "WebShop-style" not in env.task_description
    assert [p.asin for p in catalogue.products] == ["B0SHAMP001", "B0SHAMP002", "B0SOAP0003"]
    first, second, third = catalogue.products
    assert first.options == {"scent": ["lavender", "coconut | lime"]} and first.query == "shampoo"
    assert second.price_tag == "$9.0 to $12.0" and 9.0 <= second.price <= 12.0 and second.attributes == ["DUMMY_ATTR"]
    assert third.price_tag == "$100.0" and third.rating == "N.A." and third.reviews == []
    expected = [
        "i want a sulfate free shampoo in coconut | lime",
        "a volumizing shampoo",
        "i need olive bar soap, 6 pack",
        "olive soap 3 pack",
    ]
    random.Random(233).shuffle(expected)  # WebShop's goal shuffle
    assert [goal.instruction_text.split(", and price")[0] for goal in catalogue.goals] == expected
    assert all(goal.price_upper > catalogue.by_asin[goal.asin].price for goal in catalogue.goals)
    assert [len(env.task_seeds(split)) for split in ("test", "dev", "train")] == [1, 1, 2]
    for split in SPLITS:
        for seed in env.task_seeds(split):
            _, info = env.reset(seed=seed, split=split)
            assert info["data_source"] == "official" and info["gold_actions"][-1] == "click[buy now]"
            *_, (_, reward, done, last) = play(env, info["gold_actions"])
            assert done and reward == 1.0 and last["won"], (split, seed, info["gold_actions"])


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        (
            "items_shuffle_1000.json",
            lambda d: d[1].pop("name"),
            r"items_shuffle_1000.json: product #1 \(asin B0SHAMP002\): missing field 'name'",
        ),
        ("items_shuffle_1000.json", lambda d: d[0].update(pricing=12), "product #0.*field 'pricing'"),
        (
            "items_shuffle_1000.json",
            lambda d: d[0].update(customization_options={"Scent": "lavender"}),
            "product #0.*customization_options",
        ),
        (
            "items_ins_v2_1000.json",
            lambda d: d["B0SHAMP001"].update(attributes="sulfate free"),
            "items_ins_v2_1000.json: entry 'B0SHAMP001': field 'attributes'",
        ),
        (
            "items_human_ins.json",
            lambda d: d["B0SOAP0003"][1].pop("instruction_options"),
            "items_human_ins.json: entry 'B0SOAP0003' instruction #1: field 'instruction_options'",
        ),
        (
            "items_human_ins.json",
            lambda d: d.clear() or d.update(B0SOAP0003={"instruction": "x"}),
            "items_human_ins.json: entry 'B0SOAP0003': expected a list",
        ),
    ],
)
def test_malformed_files_fail_at_construction_naming_file_and_field(tmp_path, file, edit, message) -> None:
    root = official_files(tmp_path / "data")
    data = json.loads((root / file).read_text())
    edit(data)
    (root / file).write_text(json.dumps(data))
    with pytest.raises(WebShopDataError, match=message):
        make("webshop", data_dir=root, cache_dir=tmp_path / "cache", goal_split=(1, 2))


def test_missing_paths_fail_at_construction(tmp_path) -> None:
    with pytest.raises(WebShopDataError, match=f"data directory {tmp_path / 'nowhere'} does not exist"):
        make("webshop", data_dir=tmp_path / "nowhere")
    root = official_files(tmp_path / "data")
    with pytest.raises(WebShopDataError, match=r"product file .*items_shuffle\.json does not exist"):
        make("webshop", data_dir=root, product_file="items_shuffle.json")
    (root / "items_human_ins.json").write_text("[1, 2]")
    with pytest.raises(WebShopDataError, match="items_human_ins.json: top level: expected a JSON object"):
        make("webshop", data_dir=root, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------------------------------
# The worker pool and training


def test_pool_workers_match_a_plain_env_and_replay_after_a_restart(shop, cache_dir) -> None:
    tasks = [(shop.task_seeds("train")[5], "train"), (shop.task_seeds("test")[7], "test")]
    with EnvPool("webshop", env_kwargs={"cache_dir": str(cache_dir)}, num_workers=2) as pool:
        starts = pool.reset([(slot, seed, split) for slot, (seed, split) in enumerate(tasks)])
        plans = [start.info["gold_actions"] for start in starts]
        assert [r.error for r in pool.step([(slot, plan[0]) for slot, plan in enumerate(plans)])] == [None, None]
        os.killpg(pool._workers[0].process.pid, signal.SIGKILL)
        pool._workers[0].process.wait()
        results = [pool.step([(slot, plan[turn]) for slot, plan in enumerate(plans)]) for turn in (1, 2)]
        assert pool.num_errors == 0 and all(r.error is None for turns in results for r in turns)
    for slot, (seed, split) in enumerate(tasks):
        shop.reset(seed=seed, split=split)
        expected = play(shop, plans[slot][:3])
        assert [(r.observation, r.reward, r.done) for r in (turns[slot] for turns in results)] == [
            step[:3] for step in expected[1:]
        ]


def test_empg_trainer_trains_two_steps_on_webshop(tmp_path, cache_dir, tiny_model, tiny_tokenizer) -> None:
    args = EMPGConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, env_id="webshop",
        env_kwargs={"cache_dir": str(cache_dir), "num_products": 40}, env_num_tasks=4, max_turns=3,
        max_turn_tokens=12, max_completion_length=192, prompt_style="plain", per_device_train_batch_size=4,
        num_generations=2, max_steps=2, learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no",
        seed=0,
    )  # fmt: skip
    trainer = EMPGTrainer(tiny_model, args=args, processing_class=tiny_tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert [entry["env/errors"] for entry in trainer.state.log_history if "env/errors" in entry] == [0.0, 0.0]
