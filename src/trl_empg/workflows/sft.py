"""Warm start: supervised fine-tuning on an environment's gold (expert) trajectories with TRL's ``SFTTrainer``.

RL from a randomly initialised or format-naive model wastes most rollouts on malformed replies, so agents first
imitate the environment's expert plans. The demonstrations are RL episodes: each gold plan is replayed through the
rollout's own :class:`~trl_empg.rollout.EpisodeEngine`, the agent "saying" the plan's replies, with the same
:class:`~trl_empg.rollout.AgentPrompts` texts (system prompt with the env's task description, first observation,
observation turns with the admissible actions), the same reply format per prompt style and the same token-exact chat
rendering (:class:`~trl_empg.rollout.prompts.ChatFormat`). During RL the agent sees the whole growing conversation, so
every assistant turn is trained in its full-history context.

Rows are pre-tokenised: ``input_ids`` are the episode's ``prompt_ids + completion_ids`` and ``labels`` keep exactly
the tokens the rollout marks as the model's (``env_mask`` 1: each reply and its EOS), -100 elsewhere. What is trained
is therefore token for token what the RL policy generates, for any chat template the engine can render (ChatML with a
default system prompt, Llama 3, templates without a system role), not only the templates TRL knows how to patch for
its assistant-only loss; TRL's ``SFTTrainer`` only runs the training loop and never touches the chat template.

Label noise (``noise``): an expert-perfect start leaves RL nothing to improve and collapses exploration, so a fraction
of the assistant labels is replaced by a different admissible action, drawn uniformly. The environment is still
stepped with the gold action, so every demonstration stays a winning trajectory and the observations keep following
the plan; a noisy turn is therefore followed by an observation that does not match its label. The model still learns
``P(action | history)`` as a mix of the expert and a uniform valid-action policy: competent, clearly imperfect.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from datasets import Dataset

from ..envs import make
from ..envs.pool import StepResult
from ..hub.push import RUN_CONFIG_NAME
from ..rollout import PROMPT_STYLES, AgentPrompts, Episode, EpisodeEngine
from ..rollout.settings import EnvArguments, RolloutArguments

__all__ = ["SFTArguments", "format_reply", "gold_conversations", "main", "run_sft", "sft_trainer"]

logger = logging.getLogger(__name__)

#: Extra resets tried for a task whose gold plan does not fit ``max_turns``. TWX coin draws its plan as a fresh
#: random walk on every reset (not a function of the seed), so a later draw is often short enough; for games with
#: fixed plans the extra resets cost a few milliseconds before the task is skipped.
PLAN_REDRAWS = 4

#: Token limits of the replay that records a demonstration: no gold reply or plan is ever cut (see gold_conversations).
UNLIMITED_TOKENS = 10**9


def format_reply(action: str, style: str) -> str:
    """The assistant reply that plays ``action`` in ``style``: the action itself (plain) or a short templated thought
    plus the action in tags (react), the form :func:`trl_empg.rollout.parse_action` reads back and
    :func:`trl_empg.workflows.tiny.env_corpus` trains tiny tokenizers on."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"Unknown prompt_style {style!r}; expected one of {list(PROMPT_STYLES)}.")
    if style == "react":
        return f"<think>I should {action}.</think><action>{action}</action>"
    return action


def gold_conversations(
    env_id: str,
    tokenizer: Any,
    env_kwargs: dict[str, Any] | None = None,
    split: str = "train",
    num_tasks: int | None = None,
    rollout: RolloutArguments | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """One demonstration per task of ``split`` (its first ``num_tasks`` seeds, as the RL task dataset picks them):
    the env's gold plan played from ``reset`` through the RL rollout's episode engine for ``tokenizer``, under
    ``rollout`` (its ``prompt_style``, ``show_admissible_actions`` and ``max_turns``; default RolloutArguments()).

    Columns: ``input_ids`` (the episode's tokens, ending with the winning reply's EOS), ``labels`` (those ids on the
    model's tokens, -100 elsewhere), ``messages`` (system, user, assistant, ..., ending with the winning assistant
    turn; the final observation is not trained and left out), ``task_seed``, ``task_split``, ``actions`` (the
    assistant labels) and ``gold_actions`` (what the env was stepped with; they differ where noise replaced a label).

    Only plans that win within ``max_turns`` actions are kept, so no demonstration is longer than an RL episode may be:
    a longer plan is re-drawn up to :data:`PLAN_REDRAWS` times (coin's plans are random walks that differ on every
    reset, so its dataset is reproducible only in distribution), then its task is skipped, as are tasks whose plan is
    empty or does not win. The token limits (``max_turn_tokens``, ``max_completion_length``) do not apply: a whole
    demonstration is kept, since cutting one would drop its late turns, whose long contexts RL shows the agent too.
    ``noise`` is the probability that a label is replaced by another admissible action (kept gold when there is none);
    the draws are seeded by ``(seed, task seed)``. Use ``split="train"`` for training: the dev and test seeds are the
    held-out tasks agents are evaluated on.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}.")
    rollout = rollout or RolloutArguments()
    if num_tasks is not None and num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1 or None, got {num_tasks}.")
    # The RL run's settings (an EMPGConfig works too), with the token limits lifted (see above) and the episode layout,
    # whose one sample per episode is the whole conversation.
    settings = RolloutArguments(
        **{
            **{f.name: getattr(rollout, f.name) for f in fields(RolloutArguments)},
            "max_turn_tokens": UNLIMITED_TOKENS,
            "max_completion_length": UNLIMITED_TOKENS,
            "rollout_layout": "episode",
        }
    )
    env = make(env_id, **(env_kwargs or {}))
    try:
        prompts = AgentPrompts(
            settings.prompt_style, settings.show_admissible_actions, getattr(env, "task_description", "") or ""
        )
        engine = EpisodeEngine(tokenizer, settings, prompts)
        seeds = list(env.task_seeds(split))[:num_tasks]
        rows: dict[str, list[Any]] = {
            name: []
            for name in ("input_ids", "labels", "messages", "task_seed", "task_split", "actions", "gold_actions")
        }
        skipped = 0
        for task_seed in seeds:
            demo = _play_gold(env, engine, task_seed, split, noise, random.Random(f"{seed}:{task_seed}"))
            if demo is None:
                skipped += 1
                continue
            episode, actions, gold = demo
            last = max(i for i, bit in enumerate(episode.env_mask) if bit) + 1  # the winning reply's EOS
            completion, mask = episode.completion_ids[:last], episode.env_mask[:last]
            rows["input_ids"].append(episode.prompt_ids + completion)
            rows["labels"].append(
                [-100] * len(episode.prompt_ids) + [t if m else -100 for t, m in zip(completion, mask)]
            )
            final = max(i for i, message in enumerate(episode.messages) if message["role"] == "assistant")
            rows["messages"].append(episode.messages[: final + 1])
            for key, value in (
                ("task_seed", task_seed),
                ("task_split", split),
                ("actions", actions),
                ("gold_actions", gold),
            ):
                rows[key].append(value)
    finally:
        env.close()
    if skipped:
        logger.warning(
            "%s: skipped %d of %d %s tasks whose gold plan is empty, does not win or needs more than %d turns.",
            env_id,
            skipped,
            len(seeds),
            split,
            settings.max_turns,
        )
    if not rows["messages"]:
        raise ValueError(
            f"{env_id} gave no usable gold plan on {len(seeds)} {split} tasks (max_turns={settings.max_turns}); "
            "supervised warm starts need an environment that reports info['gold_actions'] on reset."
        )
    return Dataset.from_dict(rows)


def _play_gold(
    env: Any, engine: EpisodeEngine, task_seed: int, split: str, noise: float, rng: random.Random
) -> tuple[Episode, list[str], list[str]] | None:
    """Replay one task's gold plan through ``engine``; the episode, labels and stepped actions of a win, or None."""
    max_turns = engine.settings.max_turns
    for _ in range(1 + PLAN_REDRAWS):
        observation, info = env.reset(seed=task_seed, split=split)
        plan = list(info.get("gold_actions") or [])
        if len(plan) <= max_turns:
            break
    if not plan or len(plan) > max_turns:
        return None
    state = engine.start(0, StepResult(observation=observation, reward=0.0, done=False, info=info))
    labels: list[str] = []
    for gold in plan:
        alternatives = [action for action in state.admissible_actions if action != gold]
        label = rng.choice(alternatives) if alternatives and rng.random() < noise else gold
        labels.append(label)
        record = engine.apply_reply(state, engine.reply_ids(format_reply(label, engine.prompts.style)), None)
        observation, reward, done, info = env.step(gold)
        engine.apply_result(state, record, StepResult(observation, float(reward), bool(done), info))
        if state.episode.won:  # a plan may win before the env reports done; nothing after the win is trained
            return state.episode, labels, plan[: len(labels)]
        if not state.active:
            return None
    return None


def sft_trainer(
    model: Any,
    tokenizer: Any,
    dataset: Dataset,
    output_dir: str | Path,
    *,
    max_steps: int = 400,
    learning_rate: float = 1e-2,
    per_device_train_batch_size: int = 16,
    logging_steps: int = 10,
    seed: int = 0,
) -> Any:
    """The ``SFTTrainer`` :func:`run_sft` trains with: pre-tokenised demonstrations (``dataset`` has the
    ``input_ids`` and ``labels`` of :func:`gold_conversations`), loss on the labelled tokens only,
    ``per_device_train_batch_size`` demonstrations per optimizer step.

    On the GPU (bf16 where supported) a step is one padded batch. On the CPU (fp32) it accumulates the gradients of
    one conversation at a time: demonstrations range from ~200 to ~3000 tokens, and a padded batch both wastes compute
    on padding and, because it needs an attention mask, takes PyTorch's slow non-fused attention path, ~2.5x slower
    per token at 3000 tokens. Gradient accumulation normalises by the number of trained tokens across the
    accumulated conversations, so the loss is the same as the batch's.
    """
    import torch
    from trl import SFTConfig, SFTTrainer

    use_gpu = torch.cuda.is_available()
    micro_batch = per_device_train_batch_size if use_gpu else 1
    config = SFTConfig(
        output_dir=str(output_dir),
        max_steps=max_steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=per_device_train_batch_size // micro_batch,
        # The labels already mask all but the model's tokens; TRL's template-based assistant mask would need
        # generation markers or a template it knows how to patch, and could disagree with what the rollout trains.
        assistant_only_loss=False,
        # Whole conversations: cutting one would drop its late turns, whose long contexts RL shows the agent too.
        max_length=None,
        use_cpu=not use_gpu,
        bf16=use_gpu and torch.cuda.is_bf16_supported(),
        # TRL's default recomputes activations to save memory; that bounds long padded batches on a GPU, but on the
        # CPU memory is not the limit and the recomputation costs a third more time.
        activation_checkpointing=use_gpu,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        seed=seed,
    )
    missing = {"input_ids", "labels"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"sft_trainer needs pre-tokenised demonstrations (gold_conversations); missing {missing}.")
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset.select_columns(["input_ids", "labels"]),
        processing_class=tokenizer,
    )


def run_sft(
    model_name_or_path: str,
    output_dir: str | Path,
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    rollout: RolloutArguments | None = None,
    *,
    num_tasks: int | None = None,
    noise: float = 0.0,
    max_steps: int = 400,
    learning_rate: float = 1e-2,
    per_device_train_batch_size: int = 16,
    logging_steps: int = 10,
    seed: int = 0,
) -> Path:
    """Fine-tune ``model_name_or_path`` on :func:`gold_conversations` of ``env_id``'s train split and save the agent.

    The defaults suit the offline tiny agents (randomly initialised, hence the high learning rate); use ~1e-5 for
    pretrained models. ``rollout`` (prompt style, ``show_admissible_actions``, ``max_turns``) must be the RL run's, so
    that both show the agent the same texts: pass the recipe's :class:`~trl_empg.EMPGConfig` fields. Saves model,
    tokenizer and ``trainer_state.json`` (the loss history) to ``output_dir`` and returns it; fails if the saved
    tokenizer's chat template is not the one it was given. Also writes ``run_config.json`` with the environment and
    rollout settings the agent was taught, which ``eval``-style consumers (the demo Space) read to play the agent the
    way it was trained.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output_dir = Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    chat_template = tokenizer.chat_template
    dataset = gold_conversations(
        env_id,
        tokenizer,
        env_kwargs,
        split="train",
        num_tasks=num_tasks,
        rollout=rollout,
        noise=noise,
        seed=seed,
    )
    # On the CPU, train fp32 weights whatever the checkpoint's dtype: there is no mixed precision to keep master
    # weights in fp32 there.
    dtype = "auto" if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype)
    rollout = rollout or RolloutArguments()
    trainer = sft_trainer(
        model,
        tokenizer,
        dataset,
        output_dir,
        max_steps=max_steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=per_device_train_batch_size,
        logging_steps=logging_steps,
        seed=seed,
    )
    trainer.train()
    trainer.save_model(str(output_dir))
    trainer.save_state()
    tokenizer.save_pretrained(output_dir)
    warm_start_config = {
        "script": {"stage": "sft", "noise": noise, "num_tasks": num_tasks},
        "training": {
            "env_id": env_id,
            "env_kwargs": dict(env_kwargs or {}),
            **asdict(rollout),
            "max_steps": max_steps,
            "learning_rate": learning_rate,
            "per_device_train_batch_size": per_device_train_batch_size,
            "seed": seed,
        },
        "model": {"model_name_or_path": model_name_or_path},
    }
    (output_dir / RUN_CONFIG_NAME).write_text(json.dumps(warm_start_config, indent=2, sort_keys=True) + "\n")
    saved = AutoTokenizer.from_pretrained(output_dir).chat_template
    if saved != chat_template:
        raise RuntimeError(
            f"The tokenizer saved to {output_dir} has a different chat template than {model_name_or_path}; the RL "
            "rollout would render the conversations the agent was taught differently."
        )
    return output_dir


@dataclass
class SFTArguments:
    """``trl-empg sft``: the agent to fine-tune, where to save it, and the optimisation."""

    model: str = field(metadata={"help": "Model to fine-tune: a local directory or a Hub id."})
    output_dir: str = field(metadata={"help": "Where to save the fine-tuned model and tokenizer."})
    num_tasks: int | None = field(default=None, metadata={"help": "Use the first N train tasks (None: all)."})
    noise: float = field(
        default=0.0, metadata={"help": "Fraction of labels replaced by other admissible actions, in [0, 1]."}
    )
    max_steps: int = field(default=400, metadata={"help": "Optimizer steps."})
    learning_rate: float = field(default=1e-2, metadata={"help": "Peak learning rate (linear decay)."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Conversations per optimizer step."})
    logging_steps: int = field(default=10, metadata={"help": "Log the loss every N steps."})
    seed: int = field(default=0, metadata={"help": "Seed of the label noise and of training."})


def main(argv: Sequence[str] | None = None, prog: str = "python -m trl_empg.workflows.sft") -> Path:
    """``trl-empg sft --model DIR --output_dir DIR --env_id ID [rollout settings of the RL run]``."""
    from ..training.recipe import check_model_reference, parse_command

    args, env, rollout = parse_command(
        (SFTArguments, EnvArguments, RolloutArguments), argv, prog=prog, description=run_sft.__doc__
    )
    check_model_reference(args.model)
    if env.env_id is None:
        raise ValueError("sft needs --env_id: the environment whose gold plans are the demonstrations, e.g. twx:coin.")
    path = run_sft(
        args.model,
        args.output_dir,
        env.env_id,
        env.env_kwargs,
        rollout,
        **{f.name: getattr(args, f.name) for f in fields(SFTArguments) if f.name not in ("model", "output_dir")},
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
