"""SFT warm start: gold demonstrations are token-exact RL episodes, noise and splits behave, labels cover exactly
the model's tokens of the rollout, and a short real run teaches a tiny agent the action format."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer
from trl.chat_template_utils import qwen2_5_chat_template

from trl_empg.cli import main
from trl_empg.envs import make
from trl_empg.envs.pool import EnvPool
from trl_empg.rollout import AgentPrompts, RolloutArguments, parse_action, run_episodes
from trl_empg.rollout.policy import HFPolicy
from trl_empg.workflows import sft
from trl_empg.workflows.sft import format_reply, gold_conversations, run_sft, sft_trainer
from trl_empg.workflows.tiny import build_tiny_agent

ENV = "twx:coin"
#: Coin's gold plans are random walks drawn afresh on every reset; the shortest of 16 draws is fixed per task, so the
#: tiny agent's tokenizer and the trained demonstrations are the same on every run.
FIXED_PLANS = {"gold_plan_draws": 16}
PLAIN = RolloutArguments(prompt_style="plain")  # plain replies are the labels themselves


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory):
    return build_tiny_agent(
        ENV,
        tmp_path_factory.mktemp("agent"),
        env_kwargs=FIXED_PLANS,
        num_tasks=50,
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
    )


@pytest.fixture(scope="module")
def tokenizer(agent_dir):
    return AutoTokenizer.from_pretrained(agent_dir)


@pytest.fixture(scope="module")
def coin_pool():
    with EnvPool(ENV) as pool:
        yield pool


@pytest.fixture(scope="module")
def seeds():
    env = make(ENV)
    try:
        return {split: env.task_seeds(split) for split in ("train", "dev", "test")}
    finally:
        env.close()


@pytest.fixture
def one_thread():
    """Train on one thread: the tiny model gains nothing from two, and on a busy shared box spinning OpenMP threads
    make each step an order of magnitude slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def description():
    """The task description the RL rollout puts in the system prompt."""
    env = make(ENV)
    try:
        return env.task_description
    finally:
        env.close()


class Replay:
    """A GenerateFn saying each episode's next reply (as ids + EOS). Every episode must end exactly with its last reply
    (a won gold game), so the episodes active at turn t, which the rollout passes in slot order, are those with more
    than t replies."""

    def __init__(self, tokenizer, replies: list[list[str]]) -> None:
        self.tokenizer, self.replies, self.turn = tokenizer, replies, 0

    def __call__(self, prompts: list[list[int]], max_new_tokens: int):
        active = [replies for replies in self.replies if len(replies) > self.turn]
        assert len(active) == len(prompts), "an episode did not end with its last reply"
        ids = [
            self.tokenizer.encode(r[self.turn], add_special_tokens=False) + [self.tokenizer.eos_token_id]
            for r in active
        ]
        self.turn += 1
        return ids, None


def replay(pool, tokenizer, dataset, style: str, replies: list[list[str]], description: str):
    """Play each row's task in the RL rollout, the agent saying ``replies`` of that row."""
    settings = RolloutArguments(max_turns=20, max_turn_tokens=128, max_completion_length=4000, prompt_style=style)
    tasks = list(zip(dataset["task_seed"], dataset["task_split"]))
    prompts = AgentPrompts(style, True, description)
    return run_episodes(pool, tasks, tokenizer, Replay(tokenizer, replies), settings, prompts)


def test_format_reply_is_what_the_rollout_parses():
    for style in ("plain", "react"):
        assert parse_action(format_reply("open door to north", style), style) == "open door to north"
    assert format_reply("take coin", "react") == "<think>I should take coin.</think><action>take coin</action>"
    with pytest.raises(ValueError, match="prompt_style"):
        format_reply("take coin", "json")


@pytest.mark.parametrize("style", ["plain", "react"])
def test_conversations_are_token_exact_rollout_conversations(coin_pool, tokenizer, description, style):
    dataset = gold_conversations(ENV, tokenizer, num_tasks=6, rollout=RolloutArguments(prompt_style=style))
    assert dataset.column_names == [
        "input_ids",
        "labels",
        "messages",
        "task_seed",
        "task_split",
        "actions",
        "gold_actions",
    ]
    replies = [[format_reply(a, style) for a in row] for row in dataset["gold_actions"]]
    episodes = replay(coin_pool, tokenizer, dataset, style, replies, description)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    for row, episode in zip(dataset, episodes):
        assert episode.won and not episode.truncated and episode.num_invalid_actions == 0
        assert row["actions"] == row["gold_actions"] == episode.actions
        assert row["messages"][-1]["role"] == "assistant"
        assert episode.messages[:-1] == row["messages"]  # the rollout also records the final observation
        rendered = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False)
        # The rollout's tokens end with the last reply's EOS; the template adds its newline after it.
        assert episode.prompt_ids + episode.completion_ids + newline == rendered
        assert row["input_ids"] == episode.prompt_ids + episode.completion_ids


def test_noise_replaces_labels_but_the_env_follows_the_gold_plan(coin_pool, tokenizer, description):
    clean = gold_conversations(ENV, tokenizer, num_tasks=150, rollout=PLAIN)
    assert all(row["actions"] == row["gold_actions"] for row in clean)

    noisy = gold_conversations(ENV, tokenizer, num_tasks=150, rollout=PLAIN, noise=0.25, seed=1)
    labels = [(a, g) for row in noisy for a, g in zip(row["actions"], row["gold_actions"])]
    wrong = sum(a != g for a, g in labels) / len(labels)
    assert len(labels) > 600 and abs(wrong - 0.25) < 0.06, wrong  # ~4 standard deviations
    for row in noisy:
        turns = row["messages"]
        assert [m["content"] for m in turns[2::2]] == row["actions"]
        for user, label in zip(turns[1::2], row["actions"]):  # every label is admissible where it is said
            assert label in user["content"].split("Admissible actions: ")[1].split(", ")
    always = gold_conversations(
        ENV, tokenizer, num_tasks=20, rollout=PLAIN, noise=1.0
    )  # coin always has other admissible actions
    assert all(a != g for row in always for a, g in zip(row["actions"], row["gold_actions"]))

    # Stepping the gold actions reproduces every observation of a noisy conversation: the demo is the gold game.
    rows = noisy.select(range(8))
    episodes = replay(coin_pool, tokenizer, rows, "plain", rows["gold_actions"], description)
    for row, episode in zip(rows, episodes):
        assert episode.won
        users = [m for m in row["messages"] if m["role"] == "user"]
        assert users == [m for m in episode.messages[:-1] if m["role"] == "user"]


def test_only_the_requested_split_and_short_plans(seeds, tokenizer):
    train = gold_conversations(ENV, tokenizer, num_tasks=40, rollout=RolloutArguments(max_turns=3))
    assert set(train["task_split"]) == {"train"}
    assert set(train["task_seed"]) <= set(seeds["train"][:40])
    assert not set(train["task_seed"]) & (set(seeds["dev"]) | set(seeds["test"]))
    assert 10 < len(train) < 40 and all(len(row["actions"]) <= 3 for row in train)  # longer plans are skipped
    test = gold_conversations(ENV, tokenizer, split="test", num_tasks=5)
    assert test["task_seed"] == seeds["test"][:5] and set(test["task_split"]) == {"test"}
    with pytest.raises(ValueError, match="noise"):
        gold_conversations(ENV, tokenizer, noise=1.5)


def test_loss_covers_exactly_the_tokens_the_policy_generates(agent_dir, tokenizer, coin_pool, description, tmp_path):
    from transformers import AutoModelForCausalLM

    dataset = gold_conversations(ENV, tokenizer, num_tasks=4, rollout=RolloutArguments(prompt_style="react"))
    model = AutoModelForCausalLM.from_pretrained(agent_dir)
    trainer = sft_trainer(model, tokenizer, dataset, tmp_path, max_steps=1)
    assert tokenizer.chat_template == qwen2_5_chat_template  # TRL never swaps in a training template
    assert trainer.train_dataset.column_names == ["input_ids", "labels"]
    prepared = {tuple(row["input_ids"]): row["labels"] for row in trainer.train_dataset}
    replies = [[m["content"] for m in row["messages"] if m["role"] == "assistant"] for row in dataset]
    episodes = replay(coin_pool, tokenizer, dataset, "react", replies, description)
    for episode in episodes:
        input_ids = episode.prompt_ids + episode.completion_ids
        labels = prepared[tuple(input_ids)]
        offset = len(episode.prompt_ids)
        generated = {offset + i for i, bit in enumerate(episode.env_mask) if bit}  # what the agent says in RL
        trained = {i for i, label in enumerate(labels) if label != -100}
        assert trained == generated  # each reply and its EOS; no template framing, no observation
        assert all(labels[i] == input_ids[i] for i in trained)
    with pytest.raises(ValueError, match="pre-tokenised"):
        sft_trainer(model, tokenizer, dataset.select_columns(["messages"]), tmp_path, max_steps=1)


def action_rates(policy: HFPolicy, pool, seeds: list[int], description: str) -> tuple[float, float]:
    """Per turn over the first 3 turns, sampled at temperature 1: the share of invalid actions (malformed or not
    admissible where said) and of well-formed ones (an action the env admits in some state the episodes visited)."""
    settings = RolloutArguments(max_turns=3, max_turn_tokens=8, max_completion_length=2000, prompt_style="plain")
    prompts = AgentPrompts("plain", True, description)
    episodes = run_episodes(pool, [(s, "test") for s in seeds], policy.tokenizer, policy, settings, prompts)
    listed = [m["content"] for e in episodes for m in e.messages if m["role"] == "user"]
    known = {action for text in listed for action in text.split("Admissible actions: ")[1].split(", ")}
    turns = sum(e.num_turns for e in episodes)
    invalid = sum(e.num_invalid_actions for e in episodes) / turns
    return invalid, sum(action in known for e in episodes for action in e.actions) / turns


def test_short_sft_run_lowers_loss_and_teaches_valid_actions(
    agent_dir, coin_pool, seeds, description, tmp_path, one_thread
):
    test_seeds = seeds["test"][:16]
    torch.manual_seed(0)
    before = action_rates(HFPolicy.from_pretrained(str(agent_dir)), coin_pool, test_seeds, description)
    # Short demonstrations (plans of up to 4 actions) keep the run to ~40 s of CPU time.
    path = run_sft(
        str(agent_dir),
        tmp_path / "sft",
        ENV,
        FIXED_PLANS,
        RolloutArguments(prompt_style="plain", max_turns=4),
        num_tasks=200,
        max_steps=160,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=10,
    )
    history = json.loads((path / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 16 and losses[-1] < 0.1 * losses[0], losses
    assert AutoTokenizer.from_pretrained(path).chat_template == qwen2_5_chat_template
    taught = json.loads((path / "run_config.json").read_text())["training"]
    assert (taught["env_id"], taught["prompt_style"], taught["max_turns"]) == (ENV, "plain", 4)
    torch.manual_seed(0)
    after = action_rates(HFPolicy.from_pretrained(str(path)), coin_pool, test_seeds, description)
    # (invalid, well-formed) measured: (1.0, 0.0) before, (0.525, 0.95) after, the same on every run with FIXED_PLANS
    # (at 1e-2 the run gave (0.725, 0.575): too high a learning rate for batches of 8 breaks the action format).
    assert before[0] > 0.95 and before[1] < 0.05, before
    assert after[0] < 0.75 and after[1] > 0.8, after


def test_cli_runs_sft_on_train_tasks(agent_dir, tmp_path, capsys, monkeypatch, one_thread):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return gold_conversations(*args, **kwargs)

    monkeypatch.setattr(sft, "gold_conversations", spy)
    out = tmp_path / "cli"
    flags = {
        "--model": str(agent_dir),
        "--output_dir": str(out),
        "--env_id": ENV,
        "--env-kwargs": "{}",  # both spellings
        "--num_tasks": "6",
        "--max_steps": "2",
        "--per_device_train_batch_size": "2",
        "--learning_rate": "1e-3",
        "--noise": "0.5",
        "--prompt_style": "react",
        "--max_turns": "7",
        "--seed": "3",
    }
    main(["sft", *[item for flag in flags.items() for item in flag]])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    (call,) = calls
    assert {key: call[key] for key in ("split", "num_tasks", "noise", "seed")} == {
        "split": "train",
        "num_tasks": 6,
        "noise": 0.5,
        "seed": 3,
    }
    # The rollout settings reach the demonstrations as one RolloutArguments, under EMPGConfig's names.
    assert call["rollout"] == RolloutArguments(prompt_style="react", max_turns=7)
    taught = json.loads((out / "run_config.json").read_text())["training"]
    assert {key: taught[key] for key in ("prompt_style", "max_turns", "max_completion_length")} == {
        "prompt_style": "react",
        "max_turns": 7,
        "max_completion_length": RolloutArguments().max_completion_length,
    }
    assert AutoTokenizer.from_pretrained(out).chat_template == qwen2_5_chat_template
    assert (out / "model.safetensors").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--noise" in help_text and "--show_admissible_actions" in help_text and "--hide" not in help_text
    with pytest.raises(ValueError, match="noise_level"):  # unknown flags are an error
        main(["sft", "--model", str(agent_dir), "--output_dir", str(out), "--env_id", ENV, "--noise_level", "1"])
