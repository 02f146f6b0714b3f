"""This project's rollout engine against TRL 1.16's own multi-turn tool loop, on identical work.

TRL's path is ``GRPOTrainer._generate_and_score_completions`` with an ``environment_factory`` env, run as TRL runs it
(transformers ``generate`` backend): the first turn, then ``_tool_call_loop``, which regenerates every later turn
through ``_generate_single_turn`` on the whole prompt + completion so far (no KV cache kept between turns). This
project's path is :func:`trl_empg.rollout.run_episodes` with :class:`~trl_empg.rollout.policy.HFPolicy`: the episode
layout with KV-cache reuse (``ours_kv``) and, for reference, the step layout (``ours_step``, bounded history).

Identical work by construction:

- the same model object and the same tokenizer with TRL's stock Qwen2.5 chat template (tool calling, and a response
  parser TRL knows), on a corridor environment whose observation depends only on the task seed and the turn;
- every reply is forced: a logits processor on ``generate`` masks all logits but the scripted token of that episode,
  turn and position, so each path runs the model's full forward pass at every position but emits the same tool call
  (``<tool_call>{"name": "act", ...}</tool_call><|im_end|>``, parsed by TRL and executed as its tool);
- this project's prompts reproduce TRL's text: the system prompt carries the tool block TRL's template renders, the
  observation turns the ``<tool_response>`` wrapper of its tool messages. ``prompt_ids + completion_ids`` and the
  masks of both paths are then the same tokens (checked every run: ``identical_tokens``). The step layout plays the
  same replies and env turns on its own bounded prompts, so it is not token-identical by design.

TRL plays ``turns`` model turns with ``max_tool_calling_iterations = turns - 1``; this project steps the env once more
(after the last reply), which costs it a few microseconds. Rounds interleave the paths (the order is reversed every
round) so machine-load drift hits all alike; the load average is recorded with each run.

The profile splits each rollout's wall time into the model's forward calls (timed by hooks on the model), the rest of
``generate`` (sampling, logits processors, entropies, stopping), the forcing processor (a benchmark artefact, reported
apart), and outside ``generate``: the KV-cache bookkeeping (:class:`~trl_empg.rollout.kv_cache.TurnCache`), the
policy's padding, the env, and the engine with its tokenizer calls (this project), or TRL's loop (tool parsing,
template rendering, concatenation).

    OMP_NUM_THREADS=1 python benchmarks/peer_tool_loop.py --model tiny --turns 5 10 20 40 --episodes 16 \
        --out benchmarks/results/peer/peer_tiny.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from trl_empg.envs import Info, TextEnv, check_split, make_info

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_DIR = REPO / "runs" / "smollm2-135m-instruct-bf16"
#: SmolLM2-135M-Instruct's configuration (LlamaForCausalLM, 134.5M parameters).
SMOLLM2_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
#: Qwen2.5-1.5B's configuration (its 151,936-token vocabulary included).
QWEN25_15B_SHAPE = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
)
MODELS = ("tiny", "smollm2", "smollm2-shape", "qwen2.5-1.5b-shape")
PATHS = ("trl", "ours_kv", "ours_step")
ENV_ID = "peer_tool_loop:CorridorEnv"
SYSTEM = "You are an agent exploring a corridor of rooms. Call the act tool with one command each turn."
TASK = "Find the exit of the corridor. "
COMMANDS = ["go north", "go east", "look around", "open the door", "take the lamp", "go south", "inventory", "go west"]


def observation_text(seed: int, turn: int) -> str:
    """The env's observation: a function of the task seed and the turn only, the same for any action."""
    return (
        f"Room {turn} of corridor {seed}. A narrow hall with a wooden door to the north and a dusty window to the "
        f"east. A lamp hangs on the wall. Exits: north, east, south."
    )


def reply_text(episode: int, turn: int) -> str:
    """The forced reply of ``episode`` at ``turn``: one call of the env's ``act`` tool, as Qwen2.5 writes it."""
    command = COMMANDS[(episode + turn) % len(COMMANDS)]
    return f'<tool_call>\n{{"name": "act", "arguments": {{"command": "{command}"}}}}\n</tool_call>'


class CorridorEnv(TextEnv):
    """This project's side of the environment (``peer_tool_loop:CorridorEnv``): never ends, ignores the action."""

    task_description = "Find the exit of the corridor."

    def task_seeds(self, split: str = "train") -> list[int]:
        check_split(split)
        return list(range(1000))

    def reset(self, seed: int = 0, split: str = "train") -> tuple[str, Info]:
        self.seed, self.turn = seed, 0
        return observation_text(seed, 0), make_info()

    def step(self, action: str) -> tuple[str, float, bool, Info]:
        self.turn += 1
        return observation_text(self.seed, self.turn), 0.0, False, make_info()


class ToolCorridor:
    """TRL's side of the environment (an ``environment_factory`` class): the same observations, through a tool."""

    def reset(self, seed: int = 0, **kwargs: Any) -> str:
        self.seed, self.turn = seed, 0
        return observation_text(seed, 0)

    def act(self, command: str) -> str:
        """Do one thing in the corridor.

        Args:
            command: what to do, e.g. "go north".
        """
        self.turn += 1
        return observation_text(self.seed, self.turn)

    def get_reward(self) -> float:
        return 0.0


# -- models -----------------------------------------------------------------------------------------------------------


def load_model(name: str, dtype: torch.dtype, device: str) -> tuple[Any, Any]:
    """The model and its tokenizer, the tokenizer's chat template set to TRL's stock Qwen2.5 template."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )
    from trl.chat_template_utils import qwen2_5_chat_template

    from trl_empg.workflows.tiny import build_tiny_agent

    if name == "tiny" or (name == "qwen2.5-1.5b-shape" and not (SMOLLM2_DIR / "tokenizer.json").exists()):
        folder = Path(tempfile.mkdtemp()) / "agent"
        build_tiny_agent("twx:coin", folder, num_tasks=20)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype) if name == "tiny" else None
    else:
        if not SMOLLM2_DIR.exists():
            raise SystemExit(f"{SMOLLM2_DIR} is missing: run `python -m trl_empg convert-gguf` first.")
        tokenizer = AutoTokenizer.from_pretrained(SMOLLM2_DIR)
        model = AutoModelForCausalLM.from_pretrained(SMOLLM2_DIR, dtype=dtype) if name == "smollm2" else None
    if model is None:  # a randomly initialised model of a real configuration
        torch.manual_seed(0)
        special = dict(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None, use_cache=True
        )
        if name == "smollm2-shape":
            model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_SHAPE, rope_theta=100000.0, **special))
        else:
            model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_15B_SHAPE, rope_theta=1e6, **special))
        model = model.to(dtype)
    # TRL drops an episode whose context reaches max_position_embeddings (the tiny agent's is 4,096): raise it so
    # both paths play every turn (RoPE positions are computed, nothing is sized by it).
    model.config.max_position_embeddings = max(model.config.max_position_embeddings, 32768)
    tokenizer.chat_template = qwen2_5_chat_template
    if tokenizer.eos_token != "<|im_end|>":
        raise SystemExit(f"The tokenizer's EOS is {tokenizer.eos_token!r}; the Qwen2.5 template needs <|im_end|>.")
    return model.to(device).eval(), tokenizer


# -- forcing and timing -----------------------------------------------------------------------------------------------


class Probe:
    """Forces the scripted replies through ``model.generate`` and times the model's forward calls and ``generate``.

    ``replies[episode][turn]`` are token ids ending with EOS. Every ``generate`` call is one turn of every episode
    (forced episodes never end before the turn limit, so row i is episode i in both paths).
    """

    def __init__(self, model: Any, replies: list[list[list[int]]], eos: int) -> None:
        from transformers import LogitsProcessor, LogitsProcessorList

        self.model, self.replies, self.eos = model, replies, eos
        self.counters: dict[str, float] = {}
        self.contexts: list[list[int]] = []  # per call, each row's attended input length
        probe = self

        class Force(LogitsProcessor):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                start = time.perf_counter()
                step = min(input_ids.shape[1] - probe.start, probe.table.shape[1] - 1)
                forced = torch.full_like(scores, float("-inf"))
                forced.scatter_(1, probe.table[:, step : step + 1].to(scores.device), 0.0)
                probe.add("force_s", time.perf_counter() - start)
                return forced

        self.processors = LogitsProcessorList([Force()])
        self.table = torch.zeros((0, 1), dtype=torch.long)
        self.start = 0
        self.turn = 0
        self._forward_start = 0.0
        self._original = model.generate

    def add(self, key: str, value: float) -> None:
        self.counters[key] = self.counters.get(key, 0.0) + value

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        rows = input_ids.shape[0]
        if rows != len(self.replies):
            raise RuntimeError(f"generate got {rows} rows for {len(self.replies)} episodes: an episode ended early.")
        scripted = [self.replies[e][self.turn] for e in range(rows)]
        width = max(len(r) for r in scripted)
        self.table = torch.tensor([r + [self.eos] * (width - len(r)) for r in scripted], dtype=torch.long)
        self.start = input_ids.shape[1]
        mask = kwargs.get("attention_mask")
        self.contexts.append(mask.sum(dim=1).tolist() if mask is not None else [input_ids.shape[1]] * rows)
        self.turn += 1
        kwargs["logits_processor"] = self.processors
        start = time.perf_counter()
        try:
            return self._original(*args, **kwargs)
        finally:
            self.add("generate_s", time.perf_counter() - start)
            self.add("generate_calls", 1)

    def _sync(self) -> None:
        if self.model.device.type == "cuda":  # kernels run asynchronously: time them, not their launch
            torch.cuda.synchronize()

    def _pre(self, *_: Any) -> None:
        self._sync()
        self._forward_start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self._sync()
        self.add("forward_s", time.perf_counter() - self._forward_start)
        self.add("forward_calls", 1)

    @contextlib.contextmanager
    def attached(self) -> Iterator[Probe]:
        self.counters, self.contexts, self.turn = {}, [], 0
        self.model.generate = self._generate
        handles = [self.model.register_forward_pre_hook(self._pre), self.model.register_forward_hook(self._post)]
        try:
            yield self
        finally:
            del self.model.generate
            for handle in handles:
                handle.remove()


def scripted_replies(tokenizer: Any, episodes: int, turns: int) -> list[list[list[int]]]:
    eos = tokenizer.eos_token_id
    return [
        [tokenizer.encode(reply_text(e, t), add_special_tokens=False) + [eos] for t in range(turns)]
        for e in range(episodes)
    ]


# -- the two paths ----------------------------------------------------------------------------------------------------


def build_trl(model: Any, tokenizer: Any, episodes: int, turns: int, budget: int) -> Any:
    """A GRPOTrainer with the corridor as its ``environment_factory``, generating as TRL does on this device."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        use_cpu=model.device.type == "cpu",
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=episodes,
        num_generations=min(4, episodes) if episodes % min(4, episodes) == 0 else 1,
        max_completion_length=budget,
        max_tool_calling_iterations=turns - 1,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=0.0,
        bf16=False,
        fp16=False,
        logging_steps=1,
        activation_checkpointing=True,  # TRL's default, under transformers 5's name (the old one warns)
    )
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": TASK}]] * episodes})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GRPOTrainer(
            model, args=config, train_dataset=dataset, processing_class=tokenizer, environment_factory=ToolCorridor
        )


def trl_inputs(episodes: int) -> list[dict]:
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK}]
    return [{"prompt": prompt, "seed": seed} for seed in range(episodes)]


def run_trl(trainer: Any, episodes: int, probe: Probe) -> tuple[float, dict, list[tuple[list[int], list[int]]]]:
    """One TRL rollout: seconds of ``_generate`` (the multi-turn generation), the whole step, and its tokens."""
    captured: dict[str, Any] = {}
    original = trainer._generate

    def timed(prompts: list) -> Any:
        start = time.perf_counter()
        out = original(prompts)
        captured["seconds"] = time.perf_counter() - start
        captured["out"] = out
        return out

    trainer._generate = timed
    env_seconds = [0.0]
    act = ToolCorridor.act

    @functools.wraps(act)  # TRL looks its tools up by __name__
    def timed_act(self: ToolCorridor, command: str) -> str:
        start = time.perf_counter()
        try:
            return act(self, command)
        finally:
            env_seconds[0] += time.perf_counter() - start

    ToolCorridor.act = timed_act  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        with probe.attached():
            trainer._generate_and_score_completions(trl_inputs(episodes))
        step_seconds = time.perf_counter() - start
    finally:
        ToolCorridor.act = act  # type: ignore[method-assign]
        del trainer._generate
    if probe.turn != len(probe.contexts) or probe.turn != trainer.args.max_tool_calling_iterations + 1:
        raise RuntimeError(f"TRL's loop made {probe.turn} generate calls, not one per turn: unequal work.")
    prompt_ids, completion_ids, tool_mask = captured["out"][:3]
    tokens = [(list(p) + list(c), list(m)) for p, c, m in zip(prompt_ids, completion_ids, tool_mask)]
    extra = {"step_s": round(step_seconds, 3), "env_s": env_seconds[0]}
    return captured["seconds"], extra, tokens


class PeerPrompts:
    """This project's prompts reproducing TRL's text: the tool block in the system prompt, tool-response turns."""

    def __init__(self, system: str) -> None:
        from trl_empg.rollout.prompts import AgentPrompts

        self.base = AgentPrompts("plain", show_admissible_actions=False)
        self.style = "plain"
        self._system = system

    def system(self) -> str:
        return self._system

    def first_user(self, observation: str, admissible_actions: Any) -> str:
        return TASK + observation  # TRL appends reset()'s observation to the last prompt message

    def observation(self, observation: str, admissible_actions: Any) -> str:
        return f"<tool_response>\n{observation}\n</tool_response>"  # the template's rendering of a tool message

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def trl_system_prompt(tokenizer: Any) -> str:
    """The system message's text as TRL's template renders it with the env's tool (the tool block included)."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK}]
    text = tokenizer.apply_chat_template(messages, tools=[ToolCorridor().act], tokenize=False)
    head = "<|im_start|>system\n"
    if not text.startswith(head):
        raise RuntimeError("unexpected template rendering: " + text[:80])
    return text[len(head) : text.index("<|im_end|>")]


class TimedPolicy:
    """HFPolicy as the rollout's GenerateFn, timing the call and its TurnCache bookkeeping."""

    def __init__(self, policy: Any, probe: Probe) -> None:
        self.policy, self.probe = policy, probe
        cache = policy.kv_cache
        if cache is not None:
            inner = cache.generate

            def timed(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return inner(*args, **kwargs)
                finally:
                    probe.add("turn_cache_call_s", time.perf_counter() - start)

            cache.generate = timed

    def __call__(self, prompts: list[list[int]], max_new_tokens: int) -> Any:
        start = time.perf_counter()
        try:
            return self.policy(prompts, max_new_tokens)
        finally:
            self.probe.add("policy_s", time.perf_counter() - start)

    def release_cache(self) -> None:
        self.policy.release_cache()


def run_ours(
    layout: str, policy: TimedPolicy, pool: Any, tokenizer: Any, episodes: int, turns: int, budget: int, system: str
) -> tuple[float, dict, list[tuple[list[int], list[int]]]]:
    from trl_empg.rollout import RolloutArguments, run_episodes

    settings = RolloutArguments(
        max_turns=turns,
        max_turn_tokens=64,
        max_completion_length=budget if layout == "episode" else 64,
        prompt_style="plain",
        show_admissible_actions=False,
        rollout_layout=layout,
        history_turns=2,
        reuse_kv_cache=True,
    )
    env_seconds = [0.0]
    step, reset = pool.step, pool.reset

    def timed(method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                env_seconds[0] += time.perf_counter() - start

        return call

    pool.step, pool.reset = timed(step), timed(reset)
    tasks = [(seed, "train") for seed in range(episodes)]
    try:
        with policy.probe.attached():
            start = time.perf_counter()
            played = run_episodes(pool, tasks, tokenizer, policy, settings, PeerPrompts(system))  # type: ignore[arg-type]
            seconds = time.perf_counter() - start
    finally:
        del pool.step, pool.reset
    if any(e.num_turns != turns or e.end_reason != "max_turns" for e in played):
        raise RuntimeError(f"an episode of the {layout} layout did not play its {turns} turns")
    tokens = [(e.prompt_ids + e.completion_ids, e.env_mask) for e in played]
    return seconds, {"env_s": env_seconds[0]}, tokens


def split(path: str, seconds: float, counters: dict[str, float], extra: dict) -> dict:
    """The profile of one rollout (seconds): model forward calls against everything else."""
    forward = counters.get("forward_s", 0.0)
    generate = counters.get("generate_s", 0.0)
    force = counters.get("force_s", 0.0)
    env = extra.get("env_s", 0.0)
    parts = {
        "model_forward": forward,
        "generate_other": generate - forward - force,
        "forcing_processor": force,
        "env": env,
    }
    if path == "trl":
        parts["trl_loop_other"] = seconds - generate - env
    else:
        cache = counters.get("turn_cache_call_s", 0.0)
        parts["turn_cache_bookkeeping"] = cache - generate
        parts["policy_padding_entropy_setup"] = counters.get("policy_s", 0.0) - cache
        parts["engine_tokenizer_other"] = seconds - counters.get("policy_s", 0.0) - env
    profile = {key: round(value, 4) for key, value in parts.items()}
    # The forcing processor is this benchmark's own cost, so it counts neither as model time nor as overhead.
    measured = seconds - force
    profile["not_model_share"] = round((measured - forward) / measured, 4) if measured > 0 else None
    profile["forward_calls"] = int(counters.get("forward_calls", 0))
    return profile


def measure(args: argparse.Namespace) -> dict:
    from trl_empg.envs.pool import EnvPool
    from trl_empg.rollout.policy import HFPolicy, SamplingSettings

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model, dtype, device)
    system = trl_system_prompt(tokenizer)
    longest = max(args.turns)
    replies = scripted_replies(tokenizer, args.episodes, longest)
    probe = Probe(model, replies, tokenizer.eos_token_id)
    reply_tokens = sum(len(r) for r in replies[0]) / longest
    budget = 64 * longest * 4  # no episode is cut by the completion budget in either path
    # top_k=0 and top_p=1: both paths sample from the full (forced) distribution
    policy = TimedPolicy(
        HFPolicy(model, tokenizer, SamplingSettings(do_sample=True, top_k=0, top_p=1.0), reuse_kv_cache=True), probe
    )
    rows: list[dict] = []
    with EnvPool(ENV_ID) as pool:
        trainers = {turns: build_trl(model, tokenizer, args.episodes, turns, budget) for turns in args.turns}
        # untimed warm-up of every path (allocator, kernels, template compilation), two turns each
        warm = 2
        run_trl(build_trl(model, tokenizer, args.episodes, warm, budget), args.episodes, probe)
        for layout in ("episode", "step"):
            run_ours(layout, policy, pool, tokenizer, args.episodes, warm, budget, system)
        for index, turns in enumerate(args.turns):
            for round_ in range(args.rounds):
                order = [p for p in PATHS if p in args.paths]
                if (index + round_) % 2:
                    order.reverse()
                for path in order:
                    load_before = os.getloadavg()
                    torch.manual_seed(0)
                    if path == "trl":
                        seconds, extra, tokens = run_trl(trainers[turns], args.episodes, probe)
                    else:
                        layout = "episode" if path == "ours_kv" else "step"
                        seconds, extra, tokens = run_ours(
                            layout, policy, pool, tokenizer, args.episodes, turns, budget, system
                        )
                    contexts = probe.contexts
                    row = {
                        "path": path,
                        "turns": turns,
                        "round": round_,
                        "episodes": args.episodes,
                        "seconds": round(seconds, 3),
                        "episodes_per_s": round(args.episodes / seconds, 4),
                        "seconds_per_turn": round(seconds / turns, 4),
                        "generate_calls": int(probe.counters.get("generate_calls", 0)),
                        "attended_tokens": int(sum(sum(c) for c in contexts)),
                        "final_context_mean": round(sum(len(t) for t, _ in tokens) / len(tokens), 1),
                        "profile": split(path, seconds, probe.counters, extra),
                        "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                        "_tokens": tokens,
                    }
                    if path == "trl":
                        row["trl_full_step_s"] = extra["step_s"]
                    rows.append(row)
                    printable = {k: v for k, v in row.items() if k != "_tokens"}
                    print(json.dumps(printable), flush=True)
    identical = {}
    for turns in args.turns:
        trl = [r["_tokens"] for r in rows if r["path"] == "trl" and r["turns"] == turns]
        ours = [r["_tokens"] for r in rows if r["path"] == "ours_kv" and r["turns"] == turns]
        if trl and ours:
            identical[str(turns)] = all(t == trl[0] for t in trl) and all(o == trl[0] for o in ours)
    for row in rows:
        del row["_tokens"]
    summary = summarise(rows, args.turns)
    ceiling = batching_ceiling(model) if args.batching_ceiling else None
    return {
        "model": args.model,
        "dtype": args.dtype,
        "device": device,
        "parameters": sum(p.numel() for p in model.parameters()),
        "episodes": args.episodes,
        "mean_reply_tokens": round(reply_tokens, 1),
        "identical_tokens": identical,
        "runs": rows,
        "summary": summary,
        "batching_ceiling": ceiling,
    }


def batching_ceiling(model: Any, context: int = 512, steps: int = 16, batches: tuple[int, ...] = (1, 16)) -> dict:
    """What batching can buy in the model alone: decode and prefill tokens/s at batch 1 and 16 (no engine, no env).

    A rollout's batched speed-up over one episode at a time cannot exceed the model's own (its decode is most of a
    turn): ``speedup_ceiling = rows/s at 16 / rows/s at 1``.
    """
    from transformers import DynamicCache

    out: dict[str, Any] = {"context": context, "decode_steps": steps}
    vocab = model.config.get_text_config().vocab_size
    for batch in batches:
        ids = torch.randint(0, vocab, (batch, context), device=model.device)
        with torch.no_grad():
            model(ids[:, :8])  # warm-up
            cache = DynamicCache(config=model.config)
            start = time.perf_counter()
            logits = model(ids, past_key_values=cache, use_cache=True).logits
            prefill = time.perf_counter() - start
            token = logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(steps):
                token = model(token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
            decode = time.perf_counter() - start
        out[f"batch_{batch}"] = {
            "prefill_tokens_per_s": round(batch * context / prefill, 1),
            "decode_tokens_per_s": round(batch * steps / decode, 1),
        }
    low, high = out[f"batch_{batches[0]}"], out[f"batch_{batches[-1]}"]
    out["decode_speedup_ceiling"] = round(high["decode_tokens_per_s"] / low["decode_tokens_per_s"], 2)
    out["prefill_speedup_ceiling"] = round(high["prefill_tokens_per_s"] / low["prefill_tokens_per_s"], 2)
    return out


def summarise(rows: list[dict], horizons: list[int]) -> list[dict]:
    """Per horizon: the best (least-loaded) round of each path, and TRL's time over ours."""
    out = []
    for turns in horizons:
        best = {}
        for path in PATHS:
            runs = [r for r in rows if r["path"] == path and r["turns"] == turns]
            if runs:
                best[path] = min(runs, key=lambda r: r["seconds"])
        entry: dict[str, Any] = {"turns": turns}
        for path, run in best.items():
            entry[path] = {
                "seconds": run["seconds"],
                "episodes_per_s": run["episodes_per_s"],
                "seconds_per_turn": run["seconds_per_turn"],
                "not_model_share": run["profile"]["not_model_share"],
                "rounds": [r["seconds"] for r in rows if r["path"] == path and r["turns"] == turns],
            }
        if "trl" in best and "ours_kv" in best:
            entry["speedup_ours_kv_vs_trl"] = round(best["trl"]["seconds"] / best["ours_kv"]["seconds"], 3)
        if "trl" in best and "ours_step" in best:
            entry["speedup_ours_step_vs_trl"] = round(best["trl"]["seconds"] / best["ours_step"]["seconds"], 3)
        out.append(entry)
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    summary = report["summary"]
    for name in PATHS:
        points = [(s["turns"], s[name]["seconds_per_turn"]) for s in summary if name in s]
        if points:
            left.plot(*zip(*points), marker="o", label=name)
    left.set_xlabel(f"turns ({report['episodes']} episodes in lockstep)")
    left.set_ylabel("seconds per turn")
    left.set_ylim(bottom=0)
    left.legend()
    left.set_title(f"{report['model']} ({report['dtype']}, {report['device']})")
    for key, label in (("speedup_ours_kv_vs_trl", "ours_kv"), ("speedup_ours_step_vs_trl", "ours_step")):
        points = [(s["turns"], s[key]) for s in summary if key in s]
        if points:
            right.plot(*zip(*points), marker="o", label=label)
    right.axhline(1.0, color="grey", lw=0.8)
    right.set_xlabel("turns")
    right.set_ylabel("TRL rollout time / ours")
    right.set_ylim(bottom=0)
    right.legend()
    right.set_title("Speed-up over TRL's tool loop")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_merged(files: list[Path], path: Path) -> None:
    """One figure from several result files (e.g. horizons measured in separate runs), one line per model and path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = {}
    for file in files:
        report = json.loads(file.read_text())
        key = f"{report['model']} {report['dtype']}, {report['episodes']} ep"
        series.setdefault(key, []).extend(report["summary"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, summary in series.items():
        summary.sort(key=lambda s: s["turns"])
        for name in PATHS:
            points = [(s["turns"], s[name]["seconds_per_turn"]) for s in summary if name in s]
            if points:
                left.plot(*zip(*points), marker="o", label=f"{name} ({key})")
        for speed, name in (("speedup_ours_kv_vs_trl", "ours_kv"), ("speedup_ours_step_vs_trl", "ours_step")):
            points = [(s["turns"], s[speed]) for s in summary if speed in s]
            if points:
                right.plot(*zip(*points), marker="o", label=f"{name} ({key})")
    left.set_xlabel("turns")
    left.set_ylabel("seconds per turn")
    left.set_yscale("log")
    left.legend(fontsize=7)
    left.set_title("Rollout cost per turn (CPU, one thread)")
    right.axhline(1.0, color="grey", lw=0.8)
    right.set_xlabel("turns")
    right.set_ylabel("TRL's rollout time / ours")
    right.set_ylim(bottom=0)
    right.legend(fontsize=7)
    right.set_title("Speed-up over TRL's tool loop (identical work)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="tiny")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--turns", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per horizon")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument(
        "--batching-ceiling", action="store_true", help="also time the model alone at batch 1 and 16 (decode/prefill)"
    )
    parser.add_argument("--out", default="benchmarks/results/peer/peer_tiny.json")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="only plot these result files to --out")
    args = parser.parse_args(argv)
    if args.merge:
        plot_merged(args.merge, Path(args.out))
        return {}
    if min(args.turns) < 2:
        parser.error("--turns must be >= 2 (TRL's loop needs one tool call)")
    report = measure(args)
    report = {
        "command": "python benchmarks/peer_tool_loop.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        **report,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(json.dumps({"identical_tokens": report["identical_tokens"], "summary": report["summary"]}, indent=2))
    return report


if __name__ == "__main__":
    main()
