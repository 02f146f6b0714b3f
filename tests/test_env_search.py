"""The deep-search env (``search``): scoring, the generated world, Search-R1 files, the TRL tool env and training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Dataset
from transformers import Qwen2Tokenizer
from transformers.utils import get_json_schema
from trl.chat_template_utils import qwen2_5_chat_template

from trl_empg import EMPGConfig, EMPGTrainer
from trl_empg.envs import make
from trl_empg.envs.pool import EnvPool
from trl_empg.envs.search import SEED_OFFSETS, SearchEnv
from trl_empg.envs.search.data import TEMPLATES, generate_world
from trl_empg.envs.search.index import BM25Index, corpus_and_index
from trl_empg.envs.search.reward import exact_match, normalize_answer, score_answer, token_f1
from trl_empg.envs.search.tool import (
    TOOL_INSTRUCTION,
    SearchToolEnv,
    search_answer_reward,
    search_tool_dataset,
    search_tool_factory,
)
from trl_empg.workflows.tiny import build_tiny_model, build_tokenizer

SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("search-cache"))


@pytest.fixture(scope="module")
def env(cache_dir) -> SearchEnv:
    return make("search", cache_dir=cache_dir)


def _play(env: SearchEnv, seed: int, split: str, actions: list[str]) -> list[tuple[str, float, bool, dict]]:
    env.reset(seed=seed, split=split)
    return [env.step(action) for action in actions]


# ------------------------------------------------------------------------------------------------------ scoring
def test_normalisation_exact_match_and_f1_hand_cases():
    assert normalize_answer("  The Eiffel   Tower! ") == "eiffel tower"
    assert normalize_answer("U.S.A.") == "usa"
    assert normalize_answer("An apple, a pear and THE plum") == "apple pear and plum"
    assert normalize_answer("theory") == "theory"  # articles only as whole words
    assert exact_match("an Apple.", ["apple"]) == 1.0
    assert exact_match("apples", ["apple", "pear"]) == 0.0
    assert exact_match("Pear", ["apple", "pear"]) == 1.0
    assert token_f1("the cat sat", ["cat sat on mat"]) == pytest.approx(2 / 3)  # P = 1, R = 1/2
    assert token_f1("cat cat", ["cat"]) == pytest.approx(2 / 3)  # P = 1/2, R = 1
    assert token_f1("dog", ["cat", "the dog"]) == 1.0  # best golden answer
    assert token_f1("", ["the"]) == 1.0 and token_f1("x", ["a"]) == 0.0  # both empty / one empty
    assert score_answer("Paris France", ["Paris"], "f1") == (pytest.approx(2 / 3), False)
    assert score_answer("the paris", ["Paris"], "em") == (1.0, True)
    with pytest.raises(ValueError, match="reward_mode"):
        score_answer("x", ["x"], "bleu")


# ------------------------------------------------------------------------------------------- the generated world
def test_gold_plans_reach_exact_match_on_every_split_with_one_search_per_hop(env):
    hops_seen = set()
    for split in SPLITS:
        seeds = env.task_seeds(split)
        assert len(seeds) >= 150
        for seed in seeds:
            observation, info = env.reset(seed=seed, split=split)
            assert info["admissible_actions"] == [] and "search[query]" in observation
            plan = info["gold_actions"]
            question = env.questions(split)[seed - SEED_OFFSETS[split]]
            hops = len(question.gold_queries)
            assert plan[-1].startswith("answer[") and len(plan) == hops + 1 and 1 <= hops <= 3
            hops_seen.add(hops)
            results = [env.step(action) for action in plan]
            # Each search returns the passage naming the next query, and the last one the answer.
            needed = [*question.gold_queries[1:], question.golden_answers[0]]
            for (obs, _, done, _), expected in zip(results[:-1], needed):
                assert expected.lower() in obs.lower() and not done
            _, reward, done, final = results[-1]
            assert done and final["won"] and final["score"] == reward == 1.0 and not final["truncated"]
    assert hops_seen == {1, 2, 3}


def test_recall_at_k_of_gold_queries(env):
    title = {t: i for i, t in enumerate(env._corpus.titles)}
    queries = [q for split in SPLITS for question in env.questions(split) for q in question.gold_queries]
    for k in (1, 3):
        hits = env._index.search_many(queries, k)
        recall = sum(title[q] in top for q, top in zip(queries, hits)) / len(queries)
        assert recall >= 0.95, (k, recall)


def test_splits_are_disjoint_and_ood_templates_are_held_out(env, cache_dir):
    questions = {split: env.questions(split) for split in SPLITS}
    texts = {split: {q.question for q in qs} for split, qs in questions.items()}
    assert (
        not texts["train"] & texts["dev"] and not texts["train"] & texts["test"] and not texts["dev"] & texts["test"]
    )
    seeds = {split: set(env.task_seeds(split)) for split in SPLITS}
    assert not seeds["train"] & seeds["dev"] and not seeds["dev"] & seeds["test"]
    held_out = {t.id for t in TEMPLATES if t.held_out}
    in_domain = {t.id for t in TEMPLATES if not t.held_out}
    assert held_out and in_domain and not held_out & in_domain
    for split in ("train", "dev"):
        assert {q.template for q in questions[split]} == in_domain
    ood = make("search", cache_dir=cache_dir, question_set="ood")
    id_ = make("search:id", cache_dir=cache_dir)
    ood_templates = {ood.questions("test")[s - SEED_OFFSETS["test"]].template for s in ood.task_seeds("test")}
    id_templates = {id_.questions("test")[s - SEED_OFFSETS["test"]].template for s in id_.task_seeds("test")}
    assert ood_templates == held_out and id_templates == in_domain
    assert sorted(ood.task_seeds("test") + id_.task_seeds("test")) == env.task_seeds("test")
    assert make("search:ood", cache_dir=cache_dir).task_seeds("test") == ood.task_seeds("test")
    assert ood.task_seeds("train") == []
    _, info = ood.reset(ood.task_seeds("test")[0], "test")
    assert info["domain"] == "ood" and info["data_source"] == "search-style-heldout"


def test_world_and_episodes_are_deterministic(env, cache_dir):
    first, second = generate_world(0, 1), generate_world(0, 1)
    assert first[0].contents == second[0].contents and first[1] == second[1]
    assert generate_world(1, 1)[0].contents != first[0].contents
    actions = ["search[The Silent]", "look around", "search[   ]", "answer[somewhere]"]
    seed = env.task_seeds("dev")[3]
    other = make("search", cache_dir=cache_dir)
    assert _play(env, seed, "dev", actions) == _play(other, seed, "dev", actions)


def test_grammar_invalid_actions_and_turn_limit(cache_dir):
    env = make("search", cache_dir=cache_dir, max_turns=3, top_k=2)
    seed = env.task_seeds("train")[0]
    observation, info = env.reset(seed, "train")
    query = info["gold_actions"][0][len("search[") : -1]
    obs, reward, done, step_info = env.step(f"  SEARCH [ {query} ] ")  # case and spacing are tolerated
    assert obs.count("\nDoc ") == 1 and obs.startswith("Doc 1 (Title: ") and not step_info["invalid_action"]
    obs, reward, done, step_info = env.step("I think it is Paris")
    assert step_info["invalid_action"] and "search[query]" in obs and "answer[text]" in obs and not done
    obs, reward, done, step_info = env.step("answer[]")
    assert step_info["invalid_action"] and done and step_info["truncated"] and reward == 0.0
    assert "Turn limit (3)" in obs and not step_info["won"]
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("answer[x]")
    env.reset(seed, "train")
    assert "No passages match" in env.step("search[the of and]")[0]


def test_f1_reward_mode_scores_partial_answers(cache_dir):
    env = make("search", cache_dir=cache_dir, reward_mode="f1")
    seed = next(s for s in env.task_seeds("train") if env.questions("train")[s].template == "work-creator")
    _, info = env.reset(seed, "train")
    name = info["gold_actions"][-1][len("answer[") : -1]  # a person: first and last name
    _, reward, done, step_info = env.step(f"answer[{name.split()[-1]}]")
    assert done and 0.0 < reward < 1.0 and step_info["score"] == reward and not step_info["won"]


def test_index_is_cached_on_disk_and_reloads(tmp_path):
    corpus, _ = generate_world(0, 1)
    index = BM25Index.build(corpus.contents)
    target = tmp_path / "index"
    index.save(target)
    index.save(target)  # a second writer finding the index in place is not an error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temporary folders left behind
    reloaded = BM25Index.load(target)
    queries = ["The Silent", "organisation founded", "river flows"]
    assert reloaded.search_many(queries, 3) == index.search_many(queries, 3)


# ------------------------------------------------------------------------------------------- Search-R1-format files
def _write_search_r1(root: Path) -> dict[str, Path]:
    """A small Search-R1-format data set: corpus JSONL, train JSONL (nq, hotpotqa), test parquet and JSON."""
    people = [(f"Person{i} Zorblax", f"City{i % 7}x") for i in range(40)]
    lines = [json.dumps({"id": str(i), "contents": f'"{name}"\n{name} was born in {city}.'}) for i, (name, city) in
             enumerate(people)]  # fmt: skip
    lines.append(json.dumps({"id": 99, "contents": "An untitled passage about nothing in particular."}))
    paths = {"corpus": root / "wiki.jsonl", "train": root / "train.jsonl", "test": root / "test.parquet"}
    paths["corpus"].write_text("\n".join(lines) + "\n")
    rows = [
        {"question": f"where was {name} born?", "golden_answers": [city], "data_source": ("nq", "hotpotqa")[i % 2]}
        for i, (name, city) in enumerate(people)
    ]
    paths["train"].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    test_rows = [
        {"question": "where was Person1 Zorblax born?", "data_source": source, "reward_model": {"ground_truth": {
            "target": ["City1x"]}}} for source in ("nq", "triviaqa", "popqa")
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(test_rows), paths["test"])
    paths["test_json"] = root / "bamboogle.json"
    paths["test_json"].write_text(json.dumps([{"question": "q?", "golden_answers": "City2x", "data_source": "bamb"}]))
    return paths


def test_search_r1_files_load_and_play(tmp_path, monkeypatch):
    paths = _write_search_r1(tmp_path)
    kwargs = dict(
        corpus_path=str(paths["corpus"]),
        train_path=str(paths["train"]),
        test_path=[str(paths["test"]), str(paths["test_json"])],
        cache_dir=str(tmp_path / "cache"),
    )
    env = make("search", **kwargs)
    assert (len(env.task_seeds("train")), len(env.task_seeds("dev")), len(env.task_seeds("test"))) == (38, 2, 4)
    observation, info = env.reset(env.task_seeds("train")[0], "train")
    assert info["gold_actions"] == ["search[where was Person0 Zorblax born?]", "answer[City0x]"]
    obs, _, _, _ = env.step(info["gold_actions"][0])
    assert obs.startswith("Doc 1 (Title: Person0 Zorblax) Person0 Zorblax was born in City0x.")
    assert env.step("answer[city0x]")[3]["won"]
    # In-domain = NQ + HotpotQA by default (Search-R1's training sources); the rest is out-of-domain.
    ood = make("search", question_set="ood", **kwargs)
    sources = [ood.questions("test")[s - SEED_OFFSETS["test"]].data_source for s in ood.task_seeds("test")]
    assert sources == ["triviaqa", "popqa", "bamb"]
    assert len(make("search:id", **kwargs).task_seeds("test")) == 1
    assert len(make("search", question_set="ood", in_domain_sources=["triviaqa"], **kwargs).task_seeds("test")) == 3
    assert len(make("search:popqa", **kwargs).task_seeds("test")) == 1
    with pytest.raises(ValueError, match="no question has data_source 'squad'"):
        make("search:squad", **kwargs)
    corpus, _ = corpus_and_index(paths["corpus"], tmp_path / "cache")
    assert corpus.titles[-1] == "" and corpus.ids[-1] == "99"
    # The same files through the environment variables.
    monkeypatch.setenv("TRL_EMPG_SEARCH_CORPUS", str(paths["corpus"]))
    monkeypatch.setenv("TRL_EMPG_SEARCH_TEST", f"{paths['test']}:{paths['test_json']}")
    from_env = make("search", cache_dir=str(tmp_path / "cache"))
    assert from_env.task_seeds("test") == env.task_seeds("test") and from_env.task_seeds("train") == []


def test_bad_paths_and_schemas_fail_at_construction_naming_file_and_field(tmp_path):
    paths = _write_search_r1(tmp_path)
    cache = str(tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        SearchEnv(corpus_path=tmp_path / "nope.jsonl", train_path=paths["train"], cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        SearchEnv(corpus_path=paths["corpus"], test_path=tmp_path / "missing.parquet", cache_dir=cache)
    with pytest.raises(ValueError, match="without question files"):
        SearchEnv(corpus_path=paths["corpus"], cache_dir=cache)
    with pytest.raises(ValueError, match="without a corpus"):
        SearchEnv(train_path=paths["train"], cache_dir=cache)
    cases = {
        "no_contents.jsonl": ('{"id": "1", "text": "x"}\n', "corpus", r"no_contents.jsonl:1: .*'contents'"),
        "no_id.jsonl": ('{"contents": "x"}\n', "corpus", r"no_id.jsonl:1: .*'id'"),
        "broken.jsonl": ('{"id": 1, "contents": "x"}\n{oops\n', "corpus", r"broken.jsonl:2: not valid JSON"),
        "no_gold.jsonl": (
            '{"question": "q?", "data_source": "nq"}\n',
            "train",
            r"no_gold.jsonl:1: .*'golden_answers'",
        ),
        "no_source.jsonl": (
            '{"question": "q?", "golden_answers": ["a"]}\n',
            "train",
            r"no_source.jsonl:1: .*'data_so",
        ),
        "bad_gold.jsonl": ('{"question": "q?", "golden_answers": [], "data_source": "nq"}\n', "test", "golden_answe"),
        "no_question.jsonl": ('{"golden_answers": ["a"], "data_source": "nq"}\n', "dev", r"no_question.jsonl:1: .*'q"),
    }
    for name, (text, kind, match) in cases.items():
        (tmp_path / name).write_text(text)
        kwargs = {"corpus_path": paths["corpus"], "train_path": paths["train"], "cache_dir": cache}
        kwargs["corpus_path" if kind == "corpus" else f"{kind}_path"] = tmp_path / name
        with pytest.raises(ValueError, match=match):
            SearchEnv(**kwargs)
    with pytest.raises(ValueError, match="question_set"):
        SearchEnv(cache_dir=cache, question_set="both")
    with pytest.raises(ValueError, match="conflicts"):
        make("search:id", cache_dir=cache, question_set="ood")


# ----------------------------------------------------------------------------------------- tool env and training
def _tool_conversation(tool_env: SearchToolEnv, row: dict) -> list[dict]:
    """A rendered gold episode: one search tool call per hop, then the answer inside <answer> tags."""
    question = tool_env.reset(**row)
    plan = tool_env._env._question
    messages = [{"role": "user", "content": TOOL_INSTRUCTION + question}]
    for query in plan.gold_queries:
        call = {"type": "function", "function": {"name": "search", "arguments": {"query": query}}}
        messages += [{"role": "assistant", "content": "", "tool_calls": [call]}]
        messages += [{"role": "tool", "name": "search", "content": tool_env.search(query)}]
    return messages + [{"role": "assistant", "content": f"<answer>{plan.golden_answers[0]}</answer>"}]


@pytest.fixture(scope="module")
def search_agent(cache_dir):
    """A tiny agent whose tokenizer knows the env's text, warm-started on the gold tool-call episodes of eight 1-hop
    train tasks (its RL tasks: a model this small learns the tool-call format quickly only on a few questions)."""
    kwargs = {"cache_dir": cache_dir, "top_k": 1, "max_turns": 2}
    tool_env = SearchToolEnv(**kwargs)
    schema = [get_json_schema(tool_env.search)]
    text_env = make("search", cache_dir=cache_dir)
    rows = [r for r in search_tool_dataset("train", num_tasks=200, **kwargs)]
    one_hop = [r for r in rows if len(text_env.questions("train")[r["task_seed"]].gold_queries) == 1][:8]
    conversations = [_tool_conversation(tool_env, row) for row in one_hop]
    texts = [text_env.task_description, *(text_env.reset(s, "train")[0] for s in text_env.task_seeds("train")[:30])]
    texts += [text_env.search(q.gold_queries[0]) for q in text_env.questions("train")[:30]]
    renderer = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[])  # renders the conversations as text only
    texts += [
        renderer.apply_chat_template(c, tools=schema, chat_template=qwen2_5_chat_template, tokenize=False)
        for c in conversations
    ]
    tokenizer = build_tokenizer(texts, vocab_size=900)
    model = build_tiny_model(tokenizer, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    encoded, labels = [], []
    for conversation in conversations:
        ids = tokenizer.apply_chat_template(conversation, tools=schema, tokenize=True, return_dict=False)
        prompt = tokenizer.apply_chat_template(
            conversation[:1], tools=schema, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        encoded.append(torch.tensor(ids))
        labels.append(torch.tensor([-100] * len(prompt) + ids[len(prompt) :]))  # learn the replies, not the prompt
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(100):
        idx = torch.randint(len(encoded), (8,), generator=generator).tolist()
        ids = torch.nn.utils.rnn.pad_sequence([encoded[i] for i in idx], True, tokenizer.pad_token_id)
        loss = model(input_ids=ids, labels=torch.nn.utils.rnn.pad_sequence([labels[i] for i in idx], True, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, tokenizer, kwargs, Dataset.from_list(one_hop)


def _config(tmp_path, **overrides) -> EMPGConfig:
    values = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        top_k=0,
        top_p=1.0,
    )
    values.update(overrides)
    return EMPGConfig(**values)


def _logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_tool_env_trains_two_steps_under_empg(tmp_path, search_agent):
    model, tokenizer, kwargs, dataset = search_agent
    config = _config(tmp_path, max_completion_length=160, temperature=0.7, max_tool_calling_iterations=1)
    trainer = EMPGTrainer(
        model,
        search_answer_reward,
        config,
        train_dataset=dataset,
        processing_class=tokenizer,
        environment_factory=search_tool_factory(**kwargs),
    )
    trainer.train()
    assert all(math.isfinite(x) for x in _logged(trainer, "loss"))
    for key in ("empg/g/mean", "empg/step_entropy/mean", "empg/bonus/mean", "search/exact_match"):
        assert _logged(trainer, key), key
    assert max(_logged(trainer, "search/searches")) > 0, "the warm-started agent should call the search tool"
    assert max(_logged(trainer, "empg/steps_per_episode")) > 1.0  # a tool call and an answer: two steps


def test_tool_reward_reads_the_final_answer(cache_dir):
    tool_env = SearchToolEnv(cache_dir=cache_dir, max_turns=2)
    tool_env.reset(task_seed=SEED_OFFSETS["dev"], task_split="dev")
    gold = tool_env._env._question.golden_answers[0]
    assert tool_env.search("  ") == "The query is empty: say what to search for."
    tool_env.search(tool_env._env._question.gold_queries[0])
    assert tool_env.search("anything").startswith("No searches left")
    replies = [
        [{"role": "assistant", "content": f"<answer>wrong</answer> no, <answer>{gold}</answer>"}],
        [{"role": "assistant", "content": "", "tool_calls": []}, {"role": "tool", "content": gold}],
        f"{gold}.",
    ]
    assert search_answer_reward(replies, [tool_env] * 3) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="task_seed"):
        tool_env.reset(prompt="x")
    assert isinstance(search_tool_dataset("test", question_set="ood", cache_dir=cache_dir), Dataset)


def test_text_env_trains_two_steps_in_worker_pool(tmp_path, search_agent, cache_dir):
    _, tokenizer, _, _ = search_agent
    model = build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64)
    config = _config(
        tmp_path,
        env_id="search",
        env_kwargs={"cache_dir": cache_dir, "max_turns": 2},
        env_num_tasks=4,
        env_workers=1,
        max_turns=2,
        max_turn_tokens=12,
        max_completion_length=320,
        prompt_style="plain",
    )
    trainer = EMPGTrainer(model, args=config, processing_class=tokenizer)
    trainer.train()
    assert all(math.isfinite(x) for x in _logged(trainer, "loss"))
    for key in ("env/success_rate", "env/invalid_action_rate", "empg/g/mean", "empg/step_entropy/mean"):
        assert _logged(trainer, key), key
    assert _logged(trainer, "env/errors") == [0.0, 0.0]


def test_gold_plans_win_in_the_worker_pool_and_replay(cache_dir):
    env = make("search", cache_dir=cache_dir)
    tasks = [(seed, "test") for seed in env.task_seeds("test")[:6]]
    with EnvPool("search", {"cache_dir": cache_dir}, num_workers=2) as pool:
        starts = pool.reset([(slot, seed, split) for slot, (seed, split) in enumerate(tasks)])
        plans = [start.info["gold_actions"] for start in starts]
        finals = {}
        for turn in range(max(map(len, plans))):
            requests = [(slot, plan[turn]) for slot, plan in enumerate(plans) if turn < len(plan)]
            for (slot, _), result in zip(requests, pool.step(requests)):
                assert result.error is None
                finals[slot] = result
        assert all(finals[slot].info["won"] and finals[slot].done for slot in range(len(tasks)))
        replayed = pool.replay([(0, tasks[0][0], "test", plans[0][:-1])])[0]
        assert replayed.error is None
        assert replayed.observation == _play(env, tasks[0][0], "test", plans[0][:-1])[-1][0]
