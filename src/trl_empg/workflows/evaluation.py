"""Evaluate an agent on held-out tasks of a text environment: ``trl-empg eval`` and :func:`evaluate_agent`.

Episodes are played by the same runner, prompts and generation-time entropies as training
(:func:`trl_empg.rollout.run_episodes` with :class:`trl_empg.rollout.policy.HFPolicy`), so an evaluation measures
exactly the policy the trainer optimised. Outcomes are summarised by the ``agent_success`` ``evaluate`` metric shipped
in this package (success rate with a Wilson confidence interval, mean score, mean steps, per-task breakdown), and the
whole evaluation becomes one JSON report that is byte-for-byte reproducible for a fixed seed (apart from
``elapsed_s``). With ``save_conversations`` each episode also keeps its conversation (:func:`episode_conversation`),
so that a low score can be read back: what the agent was shown, what it replied, and why each reply did or did not
become an action.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..envs import check_split, make
from ..envs.pool import EnvPool
from ..rollout import AgentPrompts, Episode, parse_action, run_episodes
from ..rollout.kv_cache import release_cache
from ..rollout.policy import HFPolicy, SamplingSettings
from ..rollout.settings import EnvArguments, RolloutArguments, parse_env_kwargs

__all__ = [
    "METRIC_PATH",
    "EvalArguments",
    "episode_conversation",
    "evaluate_agent",
    "load_metric",
    "main",
    "step_entropies",
    "summary_line",
    "write_report",
]

#: The ``agent_success`` metric's directory: ``evaluate.load(str(METRIC_PATH))`` loads it without the Hub.
METRIC_PATH = Path(__file__).resolve().parents[1] / "metrics" / "agent_success"


def load_metric() -> Any:
    """The ``agent_success`` metric, loaded from the package (Hub metrics cannot be fetched everywhere).

    ``keep_in_memory`` keeps ``evaluate`` from writing Arrow cache files and taking file locks, which concurrent
    evaluations on one machine would otherwise share.
    """
    try:
        import evaluate
    except ImportError as error:
        raise ImportError("Agent evaluation needs the 'evaluate' package: pip install evaluate") from error
    return evaluate.load(str(METRIC_PATH), keep_in_memory=True)


def step_entropies(episode: Episode) -> list[float] | None:
    """Mean token entropy of each model turn (turn 0, 1, ...), or None when the backend recorded no entropies.

    This is the step-level uncertainty EMPG modulates with, computed the same way from ``entropies``/``step_ids``.
    """
    if episode.entropies is None:
        return None
    per_step: dict[int, list[float]] = {}
    for step, entropy in zip(episode.step_ids, episode.entropies):
        if step >= 0:
            per_step.setdefault(step, []).append(entropy)
    return [math.fsum(values) / len(values) for _, values in sorted(per_step.items())]


def _task_list(
    env_id: str, env_kwargs: dict[str, Any], split: str, num_tasks: int | None, seeds: Sequence[int] | None
) -> tuple[list[int], str]:
    """The task seeds to play and the env's task description, checked against the split before any episode runs.

    An unknown seed would otherwise surface only as an env error inside the pool, silently counted as a failure.
    """
    env = make(env_id, **env_kwargs)
    try:
        available = list(env.task_seeds(split))
        description = getattr(env, "task_description", "") or ""
    finally:
        env.close()
    if seeds is not None:
        chosen = [int(s) for s in seeds]
        unknown = sorted(set(chosen) - set(available))
        if unknown:
            raise ValueError(f"Seeds {unknown[:10]} are not {split} seeds of {env_id}.")
    else:
        chosen = available[:num_tasks] if num_tasks is not None else available
    if not chosen:
        raise ValueError(f"No tasks to evaluate: {env_id} has no {split} seeds selected.")
    return chosen, description


def episode_conversation(episode: Episode, prompt_style: str, eos_token_id: int, eos_token: str) -> dict[str, Any]:
    """An episode's conversation for the report: ``messages`` (system, user, assistant, ..., the env's last answer
    included), ``replies`` (per model turn: its ``text``, the ``action`` parsed from it or None when malformed, and
    whether it was ``cut`` at the turn's token limit before its EOS), ``reward`` and ``end_reason``.

    A cut reply is told apart by its tokens (the model's tokens of that turn do not end with EOS), since its text
    cannot show it; a cut ReAct reply usually lacks its closing ``</action>``, the commonest reason for an invalid
    action with a small ``max_turn_tokens``.
    """
    turn_tokens: dict[int, list[int]] = {}
    for token, step in zip(episode.completion_ids, episode.step_ids):
        if step >= 0:
            turn_tokens.setdefault(step, []).append(token)
    texts = [message["content"] for message in episode.messages if message["role"] == "assistant"]
    replies = [
        {
            "text": text,
            "action": parse_action(text, prompt_style, eos_token),
            "cut": turn_tokens.get(turn, [])[-1:] != [eos_token_id],
        }
        for turn, text in enumerate(texts)
    ]
    return {
        "messages": [dict(message) for message in episode.messages],
        "replies": replies,
        "reward": float(episode.reward),
        "end_reason": episode.end_reason,
    }


def _episode_record(seed: int, episode: Episode) -> dict[str, Any]:
    return {
        "task_seed": seed,
        "won": bool(episode.won),
        "score": float(episode.score),
        "steps": int(episode.num_turns),
        "num_invalid_actions": int(episode.num_invalid_actions),
        "truncated": bool(episode.truncated),
        "error": episode.error,
        "actions": list(episode.actions),
        "step_entropies": step_entropies(episode),
    }


def evaluate_agent(
    model_name_or_path: str,
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    rollout: RolloutArguments | None = None,
    *,
    split: str = "test",
    num_tasks: int | None = 100,
    seeds: Sequence[int] | None = None,
    episodes_per_task: int = 1,
    greedy: bool = False,
    temperature: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    env_workers: int = 0,
    confidence_level: float = 0.95,
    device: str | None = None,
    time_limit_s: float | None = None,
    save_conversations: bool = False,
) -> dict[str, Any]:
    """Play ``episodes_per_task`` episodes on each task and return the JSON-able evaluation report.

    Tasks are ``seeds`` when given, else the first ``num_tasks`` seeds of ``split`` (all when None). The agent is a
    local checkpoint directory or a Hub id, loaded through one code path. Sampling is greedy or at ``temperature``
    over the full vocabulary, like training rollouts. ``rollout`` (default ``RolloutArguments()``, the defaults of
    :class:`~trl_empg.EMPGConfig`) should be the settings the agent was trained with: pass the recipe's.

    Deterministic for a fixed ``seed``: torch is seeded once after loading and episodes run in a fixed order, in
    batches of ``batch_size`` (which therefore also enters the result when sampling). ``invalid_action_rate`` is
    the mean over episodes of each episode's share of invalid turns, as ``env/invalid_action_rate`` in training.
    With ``time_limit_s``, no turn starts generating after that many seconds: :class:`TimeoutError` (a service
    bounding each request, such as the demo Space, sets it). With ``save_conversations`` every episode record gets a
    ``conversation`` (:func:`episode_conversation`).
    """
    from transformers import set_seed

    started = time.perf_counter()
    check_split(split)
    if episodes_per_task < 1 or batch_size < 1:
        raise ValueError("episodes_per_task and batch_size must be >= 1.")
    if num_tasks is not None and num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1 or None, got {num_tasks}.")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use greedy decoding instead.")
    from ..training.recipe import check_model_reference

    env_kwargs = parse_env_kwargs(env_kwargs)
    settings = rollout or RolloutArguments()
    metric = load_metric()
    policy = HFPolicy.from_pretrained(
        check_model_reference(model_name_or_path, "model"),
        SamplingSettings(do_sample=not greedy, temperature=1.0 if greedy else temperature),
        device=device,
        reuse_kv_cache=settings.reuse_kv_cache,
    )
    task_seeds, description = _task_list(env_id, env_kwargs, split, num_tasks, seeds)
    prompts = AgentPrompts(settings.prompt_style, settings.show_admissible_actions, description)
    tasks = [(task_seed, split) for task_seed in task_seeds for _ in range(episodes_per_task)]

    set_seed(seed)
    episodes: list[Episode] = []
    with EnvPool(env_id, env_kwargs, num_workers=env_workers) as pool:
        for start in range(0, len(tasks), batch_size):
            batch = tasks[start : start + batch_size]
            generate = policy if time_limit_s is None else TimeLimitedGeneration(policy, started + time_limit_s)
            episodes.extend(run_episodes(pool, batch, policy.tokenizer, generate, settings, prompts))

    records = [_episode_record(task_seed, episode) for (task_seed, _), episode in zip(tasks, episodes)]
    if save_conversations:
        tokenizer = policy.tokenizer
        for record, episode in zip(records, episodes):
            record["conversation"] = episode_conversation(
                episode, settings.prompt_style, tokenizer.eos_token_id, tokenizer.eos_token
            )
    result = metric.compute(
        won=[r["won"] for r in records],
        score=[r["score"] for r in records],
        num_steps=[r["steps"] for r in records],
        task_id=[str(r["task_seed"]) for r in records],
        confidence_level=confidence_level,
    )
    all_steps = [h for r in records for h in (r["step_entropies"] or [])]
    return {
        "model": model_name_or_path,
        "env_id": env_id,
        "split": split,
        "num_episodes": result["num_episodes"],
        "success_rate": result["success_rate"],
        "success_ci": result["success_ci"],
        "confidence_level": result["confidence_level"],
        "mean_score": result["mean_score"],
        "mean_steps": result["mean_steps"],
        "invalid_action_rate": math.fsum(e.num_invalid_actions / max(e.num_turns, 1) for e in episodes)
        / len(episodes),
        "mean_step_entropy": math.fsum(all_steps) / len(all_steps) if all_steps else None,
        "num_env_errors": sum(e.error is not None for e in episodes),
        "per_task": result["per_task"],
        "settings": {
            "env_kwargs": env_kwargs,
            "num_tasks": len(task_seeds),
            "seeds": None if seeds is None else list(task_seeds),
            "episodes_per_task": episodes_per_task,
            "greedy": greedy,
            "temperature": None if greedy else temperature,
            **asdict(settings),
            "batch_size": batch_size,
            "seed": seed,
            "env_workers": env_workers,
            "save_conversations": save_conversations,
        },
        "episodes": records,
        "elapsed_s": time.perf_counter() - started,
    }


@dataclass
class TimeLimitedGeneration:
    """A generation backend that refuses to start a turn once ``deadline`` (a ``time.perf_counter()`` value) has
    passed; its KV cache is still released by the runner at the end of a rollout."""

    policy: HFPolicy
    deadline: float

    def __call__(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[list[int]], Any]:
        if time.perf_counter() > self.deadline:
            raise TimeoutError("The evaluation ran past its time limit (time_limit_s).")
        return self.policy(prompts, max_new_tokens)

    def release_cache(self) -> None:
        release_cache(self.policy)


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as indented JSON (creating parent directories) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def summary_line(report: dict[str, Any]) -> str:
    """One line for logs: success rate with its interval, mean score and steps, invalid actions."""
    low, high = report["success_ci"]
    return (
        f"{report['model']} on {report['env_id']} ({report['split']}, {report['num_episodes']} episodes): "
        f"success {report['success_rate']:.3f} [{low:.3f}, {high:.3f}] "
        f"({report['confidence_level']:.0%} Wilson CI), mean score {report['mean_score']:.3f}, "
        f"mean steps {report['mean_steps']:.1f}, invalid actions {report['invalid_action_rate']:.3f}"
    )


@dataclass
class EvalArguments:
    """``trl-empg eval``: the agent, the tasks, the decoding and where the report goes. Environment and rollout
    settings are :class:`EnvArguments` and :class:`RolloutArguments` (use the ones the agent was trained with)."""

    model: str = field(metadata={"help": "Local checkpoint directory or Hub model id of the agent."})
    split: str = field(default="test", metadata={"help": "Task split to play: train, dev or test."})
    num_tasks: int = field(default=100, metadata={"help": "First N seeds of the split; 0 for all."})
    seeds: list[int] | None = field(
        default=None, metadata={"help": "Task seeds to play, space-separated (overrides num_tasks)."}
    )
    episodes_per_task: int = field(default=1, metadata={"help": "Episodes played on each task."})
    greedy: bool = field(default=False, metadata={"help": "Greedy decoding instead of sampling."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (ignored with greedy)."})
    batch_size: int = field(default=16, metadata={"help": "Episodes played in lockstep."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    confidence_level: float = field(default=0.95, metadata={"help": "Coverage of the Wilson confidence interval."})
    device: str | None = field(default=None, metadata={"help": "Torch device of the model (None: where it loads)."})
    output: str = field(default="eval_report.json", metadata={"help": "Path of the JSON report."})
    plot: bool = field(default=False, metadata={"help": "Also write <output stem>_step_entropy.png beside it."})
    save_conversations: bool = field(
        default=False,
        metadata={
            "help": "Keep each episode's conversation in the report: messages, replies (with the parsed action and "
            "whether the reply was cut at max_turn_tokens), reward and end reason."
        },
    )


_DESCRIPTION = (
    "Play an agent (local checkpoint or Hub id) on tasks of a text environment with the training rollout code, print "
    "the success rate with its Wilson confidence interval and write a JSON report with every episode. Use the env and "
    "rollout settings the agent was trained with (or --config its recipe's fields). Deterministic for a fixed --seed "
    "and --batch_size."
)


def main(argv: Sequence[str] | None = None, prog: str = "python -m trl_empg.workflows.evaluation") -> dict[str, Any]:
    """``trl-empg eval --model DIR_OR_ID --env_id ID [rollout settings]``: evaluate, write and summarise the report."""
    from ..training.recipe import check_model_reference, parse_command

    args, env, rollout = parse_command(
        (EvalArguments, EnvArguments, RolloutArguments), argv, prog=prog, description=_DESCRIPTION
    )
    check_model_reference(args.model, "model")
    if env.env_id is None:
        raise ValueError("eval needs --env_id: the environment the agent plays, e.g. twx:coin.")
    report = evaluate_agent(
        args.model,
        env.env_id,
        env.env_kwargs,
        rollout,
        split=args.split,
        num_tasks=args.num_tasks or None,
        seeds=args.seeds,
        episodes_per_task=args.episodes_per_task,
        greedy=args.greedy,
        temperature=args.temperature,
        batch_size=args.batch_size,
        seed=args.seed,
        env_workers=env.env_workers,
        confidence_level=args.confidence_level,
        device=args.device,
        save_conversations=args.save_conversations,
    )
    output = write_report(report, args.output)
    line = f"{summary_line(report)} -> {output}"
    if args.plot:
        from .plots import plot_eval_entropy

        line += f" (plot: {plot_eval_entropy(report, output.with_name(f'{output.stem}_step_entropy.png'))})"
    print(line)
    return report


if __name__ == "__main__":
    main()
