"""Any chat template that ends an assistant turn with EOS: the rollout and the warm start render it token-exactly.

Four templates, each on a tokenizer built here: SmolLM2's ChatML (it injects a default system prompt when none is
given and renders a newline after ``<|im_end|>``), a Llama-3-style one (``<|start_header_id|>``, ``<|eot_id|>``,
content trimmed), a Gemma-style one that refuses a system message, and one that silently drops it. For each, every
context the policy is given equals ``tokenizer.apply_chat_template`` of the conversation so far, including after a
reply cut at ``max_turn_tokens`` (closed with the template's end of turn, outside the loss), and the warm start's
labels are exactly the model's tokens of those renderings. ``trl-empg sft`` then runs on a tiny ChatML model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from transformers import AutoTokenizer

from trl_empg.cli import main
from trl_empg.envs import Info, TextEnv, check_split, make_info
from trl_empg.envs.pool import EnvPool
from trl_empg.rollout import AgentPrompts, RolloutArguments, run_episodes
from trl_empg.rollout.policy import HFPolicy, SamplingSettings
from trl_empg.rollout.prompts import ChatFormat
from trl_empg.workflows.sft import format_reply, gold_conversations
from trl_empg.workflows.tiny import build_tiny_model, build_tokenizer, save_tiny_agent

KEY_ENV = f"{__name__}:KeyEnv"
PLAN = ["open the box", "take the key", "unlock the door"]

#: SmolLM2-135M-Instruct's template, as its GGUF file ships it.
SMOLLM2_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
#: Gemma-style: no system role (it raises), roles must alternate, the assistant is called "model".
REFUSES_SYSTEM = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
#: Like REFUSES_SYSTEM, but a system message is left out of the rendering without an error.
DROPS_SYSTEM = (
    "{{ bos_token }}{% for message in messages if message['role'] != 'system' %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TemplateCase:
    name: str
    chat_template: str
    special_tokens: dict[str, str]
    extra_tokens: tuple[str, ...]
    #: The template cannot show a system message: the engine folds the system prompt into the first user message.
    folds_system: bool
    end_of_turn: str


CASES = [
    TemplateCase("smollm2-chatml", SMOLLM2_CHATML, {}, (), False, "<|im_end|>"),
    TemplateCase(
        "llama3-style",
        LLAMA3_STYLE,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        ("<|start_header_id|>", "<|end_header_id|>"),
        False,
        "<|eot_id|>",
    ),
    TemplateCase(
        "refuses-system",
        REFUSES_SYSTEM,
        {"bos_token": "<bos>", "eos_token": "<end_of_turn>"},
        ("<start_of_turn>",),
        True,
        "<end_of_turn>",
    ),
    TemplateCase(
        "drops-system",
        DROPS_SYSTEM,
        {"bos_token": "<bos>", "eos_token": "<end_of_turn>"},
        ("<start_of_turn>",),
        True,
        "<end_of_turn>",
    ),
]


class KeyEnv(TextEnv):
    """Open the box, take the key, unlock the door: a three-action gold plan with multi-line observations."""

    task_description = "Get out of the room."

    def task_seeds(self, split: str = "train") -> list[int]:
        return {"train": [0, 1, 2, 3], "dev": [10], "test": [20, 21]}[check_split(split)]

    def reset(self, seed: int = 0, split: str = "train") -> tuple[str, Info]:
        self.seed, self.done = seed, 0
        return f"Room {seed}. A box and a locked door.", self._info()

    def step(self, action: str) -> tuple[str, float, bool, Info]:
        if self.done < len(PLAN) and action == PLAN[self.done]:
            self.done += 1
        won = self.done == len(PLAN)
        return f"You did: {action}.\nDone {self.done} of {len(PLAN)}.", float(won), won, self._info(won)

    def _info(self, won: bool = False) -> Info:
        return make_info(admissible_actions=[*PLAN, "wait"], gold_actions=list(PLAN), won=won, score=float(won))


def build_case_tokenizer(case: TemplateCase):
    replies = [format_reply(action, style) for action in [*PLAN, "wait"] for style in ("react", "plain")]
    texts = [KeyEnv.task_description, "Room 0. A box and a locked door.", "You did: wait.\nDone 1 of 3.", *replies]
    tokenizer = build_tokenizer(texts * 5, vocab_size=500)
    tokenizer.add_special_tokens(
        {**case.special_tokens, "additional_special_tokens": ["<|im_start|>", *case.extra_tokens]}
    )
    tokenizer.chat_template = case.chat_template
    return tokenizer


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.name)
def case_tokenizer(request):
    return request.param, build_case_tokenizer(request.param)


@pytest.fixture(scope="module")
def key_pool():
    with EnvPool(KEY_ENV) as pool:
        yield pool


def as_template_sees(case: TemplateCase, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation as these templates take it: with the system prompt in front of the first user message where
    the template cannot show a system message (Gemma 3's own way of folding it)."""
    if not case.folds_system:
        return messages
    system, first, *rest = messages
    return [{"role": "user", "content": f"{system['content']}\n\n{first['content']}"}, *rest]


class RecordingPolicy:
    """Says ``replies[turn]`` (ids + EOS, cut to the turn's limit) to every episode; records each context it gets."""

    def __init__(self, tokenizer, replies: list[str]) -> None:
        self.tokenizer, self.replies, self.contexts = tokenizer, replies, []

    def __call__(self, prompts: list[list[int]], max_new_tokens: int):
        reply = self.replies[len(self.contexts)]
        self.contexts.append([list(p) for p in prompts])
        ids = self.tokenizer.encode(reply, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return [ids[:max_new_tokens] for _ in prompts], None


def test_chat_format_reads_each_template(case_tokenizer):
    case, tokenizer = case_tokenizer
    chat = ChatFormat(tokenizer)
    assert chat.folds_system == case.folds_system
    assert tokenizer.convert_ids_to_tokens(chat.end_of_turn) == [case.end_of_turn]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Room 0."},
        {"role": "assistant", "content": "wait"},
        {"role": "user", "content": "Done 0 of 3."},
    ]
    expected = tokenizer.apply_chat_template(
        as_template_sees(case, messages), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert chat.render(messages, add_generation_prompt=True) == list(expected)
    if case.name == "smollm2-chatml":  # the engine always sends a system message, so the default one never shows
        assert "SmolLM" not in tokenizer.decode(chat.render(messages, add_generation_prompt=True))


def test_every_context_the_policy_sees_is_the_template_rendering(case_tokenizer, key_pool):
    case, tokenizer = case_tokenizer
    # Turn 1's reply is longer than max_turn_tokens: cut, it never says its end of turn.
    long_reply = "<think>I should take the key now, then unlock the door.</think><action>take the key</action>"
    replies = [format_reply("open the box", "react"), long_reply, format_reply("wait", "react")] + [
        format_reply(action, "react") for action in PLAN[1:]
    ]
    limit = 1 + max(len(tokenizer.encode(r, add_special_tokens=False)) for r in replies if r != long_reply)
    assert len(tokenizer.encode(long_reply, add_special_tokens=False)) > limit
    policy = RecordingPolicy(tokenizer, replies)
    settings = RolloutArguments(max_turns=6, max_turn_tokens=limit, max_completion_length=2000, prompt_style="react")
    prompts = AgentPrompts("react", True, KeyEnv.task_description)
    episodes = run_episodes(key_pool, [(0, "train"), (1, "train")], tokenizer, policy, settings, prompts)

    eos = tokenizer.eos_token_id
    end_of_turn = tokenizer.convert_tokens_to_ids(case.end_of_turn)
    for slot, episode in enumerate(episodes):
        assert episode.won and episode.num_turns == 5 and episode.num_invalid_actions == 1  # the cut reply
        # Turn t's context is the template's rendering of the conversation up to the t-th observation.
        for turn, contexts in enumerate(policy.contexts):
            shown = as_template_sees(case, episode.messages[: 2 + 2 * turn])
            expected = tokenizer.apply_chat_template(
                shown, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            assert contexts[slot] == list(expected), (case.name, turn)
        # The cut reply: its tokens are the model's (mask 1, step 1), the closing end of turn is not.
        turn_1 = [i for i, step in enumerate(episode.step_ids) if step == 1]
        assert len(turn_1) == limit and eos not in [episode.completion_ids[i] for i in turn_1]
        after = turn_1[-1] + 1
        assert episode.completion_ids[after] == end_of_turn
        assert (episode.env_mask[after], episode.step_ids[after]) == (0, -1)
        assert episode.messages[4]["content"] == tokenizer.decode(episode.completion_ids[turn_1[0] : after])
        # Replies that ended themselves carry their EOS as a model token, with nothing added.
        model_tokens = [t for t, bit in zip(episode.completion_ids, episode.env_mask) if bit]
        assert model_tokens.count(eos) == 4


def test_warm_start_labels_are_the_model_tokens_of_the_rendering(case_tokenizer):
    case, tokenizer = case_tokenizer
    dataset = gold_conversations(KEY_ENV, tokenizer, rollout=RolloutArguments(prompt_style="react", max_turns=5))
    assert len(dataset) == 4 and dataset["actions"] == [PLAN] * 4
    eos = tokenizer.eos_token_id
    for row in dataset:
        rendered = list(
            tokenizer.apply_chat_template(as_template_sees(case, row["messages"]), tokenize=True, return_dict=False)
        )
        last_eos = max(i for i, token in enumerate(rendered) if token == eos)
        assert row["input_ids"] == rendered[: last_eos + 1]  # what follows the last EOS (a newline) is not trained
        trained = [(i, label) for i, label in enumerate(row["labels"]) if label != -100]
        assert all(row["input_ids"][i] == label for i, label in trained)
        # The trained runs are the replies, each with its EOS: exactly what the policy generates in RL.
        runs, current = [], []
        for position, (i, label) in enumerate(trained):
            if current and i != trained[position - 1][0] + 1:
                runs.append(current)
                current = []
            current.append(label)
        runs.append(current)
        assert [tokenizer.decode(run) for run in runs] == [
            format_reply(action, "react") + tokenizer.decode([eos]) for action in PLAN
        ]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sft_cli_warm_starts_a_chatml_model(tmp_path, capsys, one_thread):
    """TRL's assistant-only loss cannot patch SmolLM2's ChatML; the engine-rendered labels need no patching, and the
    warm-started agent plays the plan it was taught through the same engine."""
    case = CASES[0]
    tokenizer = build_case_tokenizer(case)
    agent = save_tiny_agent(
        build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64), tokenizer, tmp_path / "chatml"
    )
    out = tmp_path / "sft"
    main(
        [
            "sft", "--model", str(agent), "--output_dir", str(out), "--env_id", KEY_ENV, "--prompt_style", "plain",
            "--max_steps", "100", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
            "--logging_steps", "20", "--max_turns", "5",
        ]
    )  # fmt: skip
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert AutoTokenizer.from_pretrained(out).chat_template == SMOLLM2_CHATML
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    # Measured: 3.03 -> 0.14 (four demonstrations of three short replies, memorised within 100 steps, ~10 s).
    assert len(losses) == 5 and losses[-1] < 0.1 * losses[0], losses
    policy = HFPolicy.from_pretrained(str(out), SamplingSettings(do_sample=False))
    settings = RolloutArguments(max_turns=5, prompt_style="plain")
    with EnvPool(KEY_ENV) as pool:
        episodes = run_episodes(
            pool, [(20, "test"), (21, "test")], policy.tokenizer, policy, settings,
            AgentPrompts("plain", True, KeyEnv.task_description),
        )  # fmt: skip
    assert [(episode.won, episode.actions) for episode in episodes] == [(True, PLAN)] * 2


class RecordingBackend:
    """A generation backend that records every context it is given (its KV cache is released like the policy's)."""

    def __init__(self, policy) -> None:
        self.policy, self.contexts = policy, []

    def __call__(self, prompts: list[list[int]], max_new_tokens: int):
        self.contexts.append([list(p) for p in prompts])
        return self.policy(prompts, max_new_tokens)

    def release_cache(self) -> None:
        self.policy.release_cache()


def test_smollm2_multi_turn_contexts_are_its_template_rendering(smollm2_dir, key_pool, one_thread):
    """The real model and its own template: every turn's context decodes to the template's text of the conversation
    so far, including after replies cut at max_turn_tokens (SmolLM2 zero-shot rambles past 10 tokens)."""
    policy = HFPolicy.from_pretrained(str(smollm2_dir), SamplingSettings(do_sample=False))
    tokenizer = policy.tokenizer
    assert tokenizer.chat_template == SMOLLM2_CHATML  # the template the tokenizer-only tests above use
    backend = RecordingBackend(policy)
    settings = RolloutArguments(max_turns=3, max_turn_tokens=10, max_completion_length=1024, prompt_style="react")
    prompts = AgentPrompts("react", True, KeyEnv.task_description)
    episodes = run_episodes(key_pool, [(0, "train"), (1, "train")], tokenizer, backend, settings, prompts)

    eos = tokenizer.eos_token_id
    cut_then_continued = 0
    for slot, episode in enumerate(episodes):
        assert episode.num_turns == len(backend.contexts) == 3
        for turn, contexts in enumerate(backend.contexts):
            text = tokenizer.apply_chat_template(
                episode.messages[: 2 + 2 * turn], add_generation_prompt=True, tokenize=False
            )
            assert tokenizer.decode(contexts[slot]) == text, turn
        for turn in range(1, episode.num_turns):
            reply_ids = [t for t, step in zip(episode.completion_ids, episode.step_ids) if step == turn - 1]
            cut_then_continued += reply_ids[-1] != eos
    assert cut_then_continued > 0, "no reply was cut mid-episode: the closing was not exercised"
