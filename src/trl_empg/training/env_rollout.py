"""The bridge between TRL's GRPO loop and multi-turn text-environment episodes.

:class:`EnvRollout` is the ``rollout_func`` that :class:`~trl_empg.EMPGTrainer` installs when ``args.env_id`` is set:
each task row of the generation batch (a task seed; TRL's sampler repeats it ``num_generations`` times, so a GRPO
group is one task) is played as one whole episode by :func:`trl_empg.rollout.run_episodes`, generating every turn
through the trainer's own backend (transformers ``generate`` or vLLM). It also builds the task dataset from an env
split and provides the outcome reward.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from datasets import Dataset

from ..envs import make
from ..envs.pool import EnvPool, FaultCounts
from ..methods.entropy import GenerationEntropyStore
from ..rollout import AgentPrompts, Episode, run_episodes
from ..rollout.branching import AEPORolloutSettings, run_aepo_episodes
from ..rollout.kv_cache import TurnCache

if TYPE_CHECKING:
    from trl import GRPOTrainer

    from .config import EMPGConfig


def episode_reward(completions: list[Any], episode_reward: list[float], **kwargs: Any) -> list[float]:
    """The outcome reward of each episode (success or score, minus invalid-action penalties), set by the rollout."""
    return [float(r) for r in episode_reward]


class EnvRollout:
    """TRL ``rollout_func`` playing whole episodes of ``args.env_id``; one completion per episode."""

    def __init__(self, args: EMPGConfig) -> None:
        self.args = args
        self.env_id = args.env_id
        self.env_kwargs = dict(args.env_kwargs or {})
        self._task_description: str | None = None
        self._pool: EnvPool | None = None
        self.aepo = (
            AEPORolloutSettings(
                beta=args.aepo_beta,
                alpha=args.aepo_branch_alpha,
                gamma=args.aepo_branch_gamma,
                tau=args.aepo_branch_tau,
                branch_penalty=args.aepo_branch_penalty,
                branch_factor=args.aepo_branch_factor,
            )
            if args.aepo_rollout
            else None
        )
        self._rng = random.Random(args.seed + int(os.environ.get("RANK", "0")))  # branching draws, per process

    def _describe(self) -> tuple[str, dict[str, list[int]]]:
        env = make(self.env_id, **self.env_kwargs)
        try:
            seeds = {split: list(env.task_seeds(split)) for split in ("train", "dev", "test")}
            return getattr(env, "task_description", "") or "", seeds
        finally:
            env.close()

    def task_dataset(self, split: str = "train", num_tasks: int | None = None) -> Dataset:
        """One row per task seed of ``split``: ``prompt`` (a readable task id), ``task_seed`` and ``task_split``."""
        self._task_description, seeds = self._describe()
        chosen = seeds[split][:num_tasks] if num_tasks else seeds[split]
        if not chosen:
            raise ValueError(f"Environment {self.env_id!r} has no task seeds in split {split!r}.")
        return Dataset.from_dict(
            {
                "prompt": [f"{self.env_id} {split} task {seed}" for seed in chosen],
                "task_seed": chosen,
                "task_split": [split] * len(chosen),
            }
        )

    def reward_funcs(self) -> list:
        return [episode_reward]

    @property
    def agent_prompts(self) -> AgentPrompts:
        if self._task_description is None:
            self._task_description, _ = self._describe()
        return AgentPrompts(self.args.prompt_style, self.args.show_admissible_actions, self._task_description)

    def pool(self) -> EnvPool:
        if self._pool is None:
            self._pool = EnvPool(
                self.env_id,
                self.env_kwargs,
                num_workers=self.args.env_workers,
                step_timeout=self.args.env_step_timeout,
                reset_timeout=self.args.env_reset_timeout,
            )
        return self._pool

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep for a resumed run to roll out exactly like an uninterrupted one: the branching
        draws' random state (the model's sampling uses torch's RNG, which transformers saves)."""
        version, internal, gauss = self._rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __call__(self, prompts: list[Any], trainer: GRPOTrainer) -> dict[str, Any]:
        rows = trainer._current_inputs
        if len(rows) != len(prompts) or any("task_seed" not in row for row in rows):
            raise ValueError(
                "Multi-turn env training needs dataset rows with a 'task_seed' column (and optionally "
                "'task_split'); build the dataset with EnvRollout.task_dataset or leave it unset."
            )
        tasks = [(int(row["task_seed"]), str(row.get("task_split") or self.args.env_split)) for row in rows]
        logprobs = GenerationEntropyStore()  # same content addressing, used for the sampling log-probs
        cache = TurnCache() if self.reuses_kv_cache(trainer) else None  # this rollout's KV cache across turns
        generate = functools.partial(self._generate, trainer, logprobs=logprobs, cache=cache)
        faults_before = self.pool().faults
        try:
            if self.aepo is not None:
                episodes = self._branching_rollout(trainer, tasks, generate)
            else:
                episodes = run_episodes(
                    self.pool(), tasks, trainer.processing_class, generate, self.args, prompts=self.agent_prompts
                )
        finally:
            if cache is not None:
                cache.release()
        self._log(trainer, episodes, self.pool().faults - faults_before)
        return self._to_trl(trainer, episodes, logprobs)

    def _branching_rollout(self, trainer: GRPOTrainer, tasks: list[tuple[int, str]], generate: Any) -> list[Episode]:
        """AEPO's entropy-balanced rollout: each group of identical consecutive task rows is one task's budget."""
        mode = "train" if trainer.model.training else "eval"
        group_size = trainer.num_generations if mode == "train" else trainer.num_generations_eval
        unique = tasks[::group_size]
        if tasks != [task for task in unique for _ in range(group_size)]:
            raise ValueError("aepo_rollout needs each task's num_generations rows together on one process.")
        episodes, stats = run_aepo_episodes(
            self.pool(),
            unique,
            group_size,
            trainer.processing_class,
            generate,
            self.args,
            self.aepo,
            prompts=self.agent_prompts,
            rng=self._rng,
        )
        for name, value in stats.metrics().items():
            trainer._metrics[mode][name].append(value)
        return episodes

    @staticmethod
    @contextlib.contextmanager
    def _turn_length(trainer: GRPOTrainer, max_new_tokens: int) -> Iterator[None]:
        config = getattr(trainer, "generation_config", None)
        if config is None:  # vLLM samples up to max_completion_length; the runner trims to the turn budget
            yield
            return
        previous = config.max_new_tokens
        config.max_new_tokens = max_new_tokens
        try:
            yield
        finally:
            config.max_new_tokens = previous

    def reuses_kv_cache(self, trainer: GRPOTrainer) -> bool:
        """KV-cache reuse across turns applies to TRL's transformers ``generate`` path (vLLM caches prefixes)."""
        return bool(getattr(self.args, "reuse_kv_cache", False)) and not (
            trainer.use_vllm or getattr(trainer, "use_transformers_continuous_batching", False)
        )

    def _generate(
        self,
        trainer: GRPOTrainer,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        logprobs: GenerationEntropyStore,
        cache: TurnCache | None = None,
    ) -> tuple[list[list[int]], list[list[float]] | None]:
        # With a cache, TRL's own generation path runs unchanged (unwrapping, gradient checkpointing off, generation
        # config, entropy hook); only the unwrapped model's generate continues each row from its cached prefix.
        reuse = (
            cache.patch(trainer.accelerator.unwrap_model(trainer.model_wrapped))
            if cache is not None
            else contextlib.nullcontext()
        )
        with self._turn_length(trainer, max_new_tokens), reuse:
            completion_ids, sampled_logprobs = trainer._generate_single_turn(prompt_ids, None, {}, num_generations=1)
        completion_ids = [list(ids)[:max_new_tokens] for ids in completion_ids]
        if sampled_logprobs is not None:
            for prompt, ids, values in zip(prompt_ids, completion_ids, sampled_logprobs, strict=True):
                logprobs.add(prompt, ids, list(values)[: len(ids)])
        entropies = trainer._last_generation_entropies
        if entropies is not None:
            entropies = [row[: len(ids)] for row, ids in zip(entropies, completion_ids, strict=True)]
        return completion_ids, entropies

    def _to_trl(self, trainer: GRPOTrainer, episodes: list[Episode], logprobs: GenerationEntropyStore) -> dict:
        filler = trainer.processing_class.pad_token_id
        for episode in episodes:
            if not episode.completion_ids:  # an env that failed at reset: one masked token keeps TRL's shapes valid
                episode.completion_ids, episode.env_mask, episode.step_ids = [filler], [0], [-1]
                episode.entropies = [0.0]
        sampled = None
        if len(logprobs):
            sampled = [logprobs.lookup(e.prompt_ids, e.completion_ids, e.env_mask) for e in episodes]
        fields = {
            "prompt_ids": [e.prompt_ids for e in episodes],
            "completion_ids": [e.completion_ids for e in episodes],
            "logprobs": sampled,
            "env_mask": [e.env_mask for e in episodes],
            "step_ids": [e.step_ids for e in episodes],
            "token_entropies": [e.entropies for e in episodes],
            "episode_reward": [e.reward for e in episodes],
            "won": [e.won for e in episodes],
            "score": [e.score for e in episodes],
            "num_turns": [e.num_turns for e in episodes],
            "truncated": [e.truncated for e in episodes],
            "env_error": [e.error for e in episodes],
        }
        if self.args.rollout_layout == "step":
            fields["turn_prompt_ids"] = [e.turn_prompt_ids for e in episodes]
        return fields

    def _log(self, trainer: GRPOTrainer, episodes: list[Episode], faults: FaultCounts) -> None:
        """Episode means as ``env/<name>``, and this rollout's fault counters summed over processes (see
        :mod:`trl_empg.envs.pool` for which fault lands in which counter)."""
        mode = "train" if trainer.model.training else "eval"
        stats = torch.tensor(
            [
                [
                    float(e.won),
                    e.score,
                    e.num_turns,
                    e.num_invalid_actions / max(e.num_turns, 1),
                    float(e.truncated),
                ]
                for e in episodes
            ],
            device=trainer.accelerator.device,
        )
        gathered = trainer.accelerator.gather(stats)
        metrics = trainer._metrics[mode]
        for column, name in enumerate(("success_rate", "score", "turns", "invalid_action_rate", "truncated_rate")):
            metrics[f"env/{name}"].append(gathered[:, column].mean().item())
        counts = faults.as_dict()
        totals = trainer.accelerator.gather(
            torch.tensor([list(counts.values())], dtype=torch.float32, device=trainer.accelerator.device)
        ).sum(dim=0)
        for name, total in zip(counts, totals.tolist()):
            metrics[f"env/{name}"].append(total)
