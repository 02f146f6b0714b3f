"""EMPGTrainer: TRL's GRPOTrainer with step-level Entropy-Modulated Policy Gradients and multi-turn env rollouts."""

from __future__ import annotations

import json
import logging
import os
import textwrap
from typing import Any

import torch
from torch import Tensor
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.trainer.utils import pad, use_adapter

from ..methods.aem import aem_terms
from ..methods.aepo import aepo_clip_term, aepo_token_advantages, entropy_zscore
from ..methods.empg import empg_terms
from ..methods.epo import epo_beta, epo_smoothing, trajectory_mean
from ..methods.segmentation import StepLayout, step_ids_from_mask
from .checkpoints import checkpoint_complete, last_complete_checkpoint
from .config import EMPGConfig
from .entropy_capture import EntropyCapture
from .step_batch import step_samples

logger = logging.getLogger(__name__)

EPO_STATE_FILE = "epo_state.json"


class EMPGTrainer(EntropyCapture):
    """GRPOTrainer with Entropy-Modulated Policy Gradients (EMPG, arXiv:2509.09265) and its seed family.

    The only change to the parent's training math is the advantage handed to TRL's unchanged loss: after TRL computes
    the per-episode group advantage A_i, every completion is segmented into steps (maximal runs of model tokens, or
    the explicit per-turn step ids of multi-turn env rollouts), each step gets its mean token entropy under the rollout
    policy, the steps of the whole batch (gathered over all processes) are modulated with
    :func:`trl_empg.modulation.empg_terms`, and each token of step (i, t) receives A_final(i, t) as a (B, T)
    advantage. Tokens outside steps get 0 and stay masked.

    The seed-family options of :class:`EMPGConfig` change the same two places and nothing else: ``modulation="aem"``
    swaps the step modulation for AEM's group-scoped scaling (:mod:`trl_empg.methods.aem`), ``aepo_entropy_advantage``
    multiplies the token advantages by AEPO's ``1 + a z(H)``, and ``aepo_clip`` / ``epo`` add AEPO's stop-gradient
    clip correction (:mod:`trl_empg.methods.aepo`) and EPO's entropy regulariser (:mod:`trl_empg.methods.epo`) to the
    loss TRL computes.

    GRPOTrainer methods overridden here, and why (each calls ``super()`` and keeps TRL 1.16's signature):

    - ``__init__``: requires an :class:`EMPGConfig`; with ``args.env_id`` set, installs the multi-turn env rollout
      (:mod:`trl_empg.training.env_rollout`) as TRL's ``rollout_func``, one completion per episode, and defaults the
      training dataset to the env's task seeds and the reward to the episode outcome; sets up entropy capture and
      EPO's running state.
    - ``train`` (from ``transformers.Trainer``): closes the env worker processes when training ends or fails.
    - ``_generate_and_score_completions``: after TRL's rollout, rewards and group advantages, re-cuts episodes into one
      sample per turn (``rollout_layout="step"``), records the (B, T) step ids, and replaces the (B,) advantages by
      the modulated (B, T) token advantages; the entropies come from the capture below.
    - ``_compute_loss``: with ``aepo_clip`` or ``epo``, adds to TRL's loss AEPO's clip correction, reduced exactly like
      TRL reduces its per-token loss for the configured ``loss_type`` (``_aggregate_like_loss``, pinned against TRL
      by tests/test_loss_aggregation.py), and EPO's regulariser; otherwise TRL's loss is returned unchanged.
    - ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: write and read EPO's running entropy history
      (``epo_state.json``) and the env rollout's own random state (``env_rollout_state.json``: AEPO's branching
      draws) with each checkpoint, before transformers' save, so a resumed run continues exactly.
    - ``train``: ``resume_from_checkpoint=True`` resumes from the last *complete* checkpoint
      (:mod:`trl_empg.training.checkpoints`), never from one a killed run left half-written.

    Inherited from :class:`~trl_empg.training.entropy_capture.EntropyCapture` (rollout-time entropy at no extra
    forward pass where possible, ``args.entropy_source``):

    - ``_generate_single_turn``: records the rollout policy's token entropies with a forward hook while TRL's
      transformers backend generates (``"generation"``).
    - ``_get_per_token_logps_and_entropies``: keeps the entropies of TRL's no-grad old-log-prob pass when it runs one
      (``"old_logps"``) and hands the loss's own forward (log-probs and entropies, with grad) to AEPO's clip and EPO.
      Otherwise one no-grad chunked pass computes them (``"forward"``).

    Supported rollouts: single-turn prompts with reward functions (one step per completion), TRL
    ``environment_factory`` tool-calling environments (each assistant turn is a step), and multi-turn env rollouts in
    the episode or the step layout.
    """

    _tag_names = ["trl", "trl-empg", "empg", "grpo"]
    _name = "EMPG"
    _paper = {
        "title": "Harnessing Uncertainty: Entropy-Modulated Policy Gradients for Long-Horizon LLM Agents",
        "id": "2509.09265",
        "citation": textwrap.dedent("""\
            @article{wang2025harnessing,
                title        = {{Harnessing Uncertainty: Entropy-Modulated Policy Gradients for Long-Horizon LLM
                                 Agents}},
                author       = {Jiawei Wang and Jiacai Liu and Yuqian Fu and Yingru Li and Xintao Wang and Yuan Lin
                                and Yu Yue and Lin Zhang and Yang Wang and Ke Wang},
                year         = 2025,
                eprint       = {arXiv:2509.09265},
            }"""),
    }

    def __init__(self, model: Any, reward_funcs: Any = None, args: EMPGConfig | None = None, **kwargs: Any) -> None:
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = EMPGConfig(output_dir=f"{str(name).split('/')[-1] or 'model'}-EMPG")
        if not isinstance(args, EMPGConfig):
            raise TypeError(f"EMPGTrainer needs an EMPGConfig, got {type(args).__name__}.")
        self._env_rollout = None
        if args.env_id is not None:
            from .env_rollout import EnvRollout

            if kwargs.get("rollout_func") is not None or kwargs.get("environment_factory") is not None:
                raise ValueError(
                    "args.env_id runs its own multi-turn rollout: do not also pass rollout_func or "
                    "environment_factory."
                )
            self._env_rollout = EnvRollout(args)
            kwargs["rollout_func"] = self._env_rollout
            if kwargs.get("train_dataset") is None:
                kwargs["train_dataset"] = self._env_rollout.task_dataset(args.env_split, args.env_num_tasks)
            if reward_funcs is None:
                reward_funcs = self._env_rollout.reward_funcs()
        super().__init__(model, reward_funcs, args, **kwargs)
        self._init_entropy_capture()
        self._epo_entropy_sum = 0.0  # EPO's running history of batch-mean token entropies (saved in checkpoints)
        self._epo_steps = 0
        self._epo_window: Tensor | None = None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True or (
            isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() == "true"
        ):
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}.")
        elif isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() == "false":
            resume_from_checkpoint = None
        elif resume_from_checkpoint and not checkpoint_complete(resume_from_checkpoint):
            raise ValueError(
                f"{resume_from_checkpoint} is not a complete checkpoint (its trainer_state.json is missing, truncated "
                f"or names another step: the run was killed while saving it). Resume from "
                f"{last_complete_checkpoint(os.path.dirname(os.path.abspath(resume_from_checkpoint)))} instead."
            )
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            if self._env_rollout is not None:
                self._env_rollout.close()  # the env workers are started again on the next rollout

    # ----------------------------------------------------------------------------------------------------------------
    # Step modulation
    # ----------------------------------------------------------------------------------------------------------------

    def _step_ids(self, model_mask: Tensor) -> Tensor:
        explicit = [row.get("step_ids") for row in self._current_inputs]
        if explicit and all(s is not None for s in explicit):
            step_ids = pad(
                [torch.tensor(s, dtype=torch.long) for s in explicit], padding_value=-1, padding_side="right"
            )
            width = model_mask.size(1)
            if step_ids.size(1) < width:
                step_ids = torch.nn.functional.pad(step_ids, (0, width - step_ids.size(1)), value=-1)
            step_ids = step_ids[:, :width].to(model_mask.device)
        else:
            step_ids = step_ids_from_mask(model_mask)
        return torch.where(model_mask.bool(), step_ids, torch.full_like(step_ids, -1))

    def _gather_steps(self, columns: Tensor) -> tuple[Tensor, slice]:
        """Gather (N, C) per-step rows from every process; returns all rows and the slice of this process's rows."""
        local_count = torch.tensor([columns.size(0)], device=columns.device)
        counts = self.accelerator.gather(local_count).tolist()
        padded = self.accelerator.pad_across_processes(columns, dim=0, pad_index=0)
        gathered = self.accelerator.gather(padded)
        width = padded.size(0)
        parts = [gathered[p * width : p * width + n] for p, n in enumerate(counts)]
        start = sum(counts[: self.accelerator.process_index])
        return torch.cat(parts, dim=0), slice(start, start + columns.size(0))

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._current_inputs = inputs
        self._generation_entropies.clear()
        self._old_pass_entropies = None
        self._capture_old_pass_entropy = self.entropy_source == "old_logps"
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._capture_old_pass_entropy = False
        if self.args.rollout_layout == "step":
            output = self._step_samples(output)
        model_mask = (
            output["completion_mask"] * output["tool_mask"] if "tool_mask" in output else output["completion_mask"]
        )
        output["step_ids"] = self._step_ids(model_mask)  # kept per row for EPO's per-turn averaging in the loss
        needs_entropy = self.args.modulation != "none" or self.args.aepo_entropy_advantage
        if needs_entropy or self.entropy_source != "forward":  # with modulation off, log entropies only when free
            self._modulate(output, model_mask)
        self._generation_entropies.clear()
        return output

    def _step_samples(self, output: dict[str, Any]) -> dict[str, Any]:
        """Step layout: TRL's per-episode batch (rewards and group advantages done) as one sample per turn.

        See :mod:`trl_empg.training.step_batch` for the batch shape and how each sample weighs in the loss. TRL's
        reference and old-log-prob passes (when they run) were taken on the episode rows; they are taken again on the
        step samples, whose prompts are the ones the policy answered.
        """
        training = self.model.training
        truncation_ids = (
            [*self.eos_token_ids, self._tokenizer.pad_token_id] if self.mask_truncated_completions else None
        )
        columns, rows = step_samples(
            output["completion_ids"],
            self._current_inputs,
            output["advantages"],
            self._tokenizer.pad_token_id,
            self.args.steps_per_generation if training else 1,
            truncation_ids,
        )
        episodes = self.accelerator.gather(
            torch.tensor([len(self._current_inputs)], device=columns["advantages"].device)
        )
        first_episode = int(episodes[: self.accelerator.process_index].sum())
        ids = columns["trajectory_ids"]
        columns["trajectory_ids"] = torch.where(ids >= 0, ids + first_episode, ids)  # unique across processes
        columns["num_items_in_batch"] = self.accelerator.gather(columns["completion_mask"].sum()).sum()
        self._current_inputs = rows
        self._old_pass_entropies = None
        input_ids = torch.cat([columns["prompt_ids"], columns["completion_ids"]], dim=1)
        attention_mask = torch.cat([columns["prompt_mask"], columns["completion_mask"]], dim=1)
        keep = columns["completion_ids"].size(1)
        batch_size = self.args.per_device_train_batch_size if training else self.args.per_device_eval_batch_size
        with torch.no_grad(), self._without_activation_checkpointing():
            if "old_per_token_logps" in output:
                self._capture_old_pass_entropy = self.entropy_source == "old_logps"
                columns["old_per_token_logps"], _, _ = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, keep, batch_size=batch_size
                )
                self._capture_old_pass_entropy = False
            if "ref_per_token_logps" in output:
                if self.ref_model is not None:
                    columns["ref_per_token_logps"], _, _ = self._get_per_token_logps_and_entropies(
                        self.ref_model, input_ids, attention_mask, keep, batch_size=batch_size
                    )
                else:
                    model = self.accelerator.unwrap_model(self.model)
                    with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
                        columns["ref_per_token_logps"], _, _ = self._get_per_token_logps_and_entropies(
                            self.model, input_ids, attention_mask, keep, batch_size=batch_size
                        )
        return columns

    def _modulate(self, output: dict[str, Any], model_mask: Tensor) -> None:
        """Replace TRL's (B,) episode advantages by (B, T) token advantages from the batch's step entropies."""
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        entropies, source = self._token_entropies(output, model_mask)
        layout = StepLayout.from_step_ids(output["step_ids"])
        advantages = output["advantages"]
        rows_per_process = self.accelerator.gather(torch.tensor([advantages.size(0)], device=advantages.device))
        first_row = int(rows_per_process[: self.accelerator.process_index].sum())
        if "trajectory_ids" in output:  # step layout: one row per turn, the episode is explicit
            episode = output["trajectory_ids"][layout.rows]
        else:  # global row index, unique across ranks; TRL's groups are consecutive rows
            episode = layout.rows + first_row
        columns = torch.stack(
            [
                advantages[layout.rows].double(),
                layout.mean(entropies).double(),
                episode.double(),
                layout.steps.double(),
            ],
            dim=1,
        )
        steps, local = self._gather_steps(columns)
        step_advantage, step_entropy, step_episode = steps[:, 0], steps[:, 1], steps[:, 2].long()
        episodes = torch.unique(step_episode).numel() if "trajectory_ids" in output else int(rows_per_process.sum())
        metrics["empg/steps_per_episode"].append(steps.size(0) / max(episodes, 1))
        for name in ("generation", "old_logps", "forward"):
            metrics[f"empg/entropy_source/{name}"].append(float(source == name))
        if steps.size(0):
            metrics["empg/step_entropy/mean"].append(step_entropy.mean().item())
            metrics["empg/step_entropy/min"].append(step_entropy.min().item())
            metrics["empg/step_entropy/max"].append(step_entropy.max().item())

        token_advantages = None
        if self.args.modulation == "empg":
            terms = empg_terms(
                step_advantage,
                step_entropy,
                step_episode,
                steps[:, 3].long(),
                k=self.args.empg_k,
                k_future=self.args.empg_k_future,
                zeta=self.args.empg_zeta,
                eps=self.args.empg_eps,
                center=self.args.empg_center,
            )
            token_advantages = layout.to_tokens(terms.advantages[local].to(advantages.dtype))
            if steps.size(0):
                metrics["empg/g/min"].append(terms.g.min().item())
                metrics["empg/g/mean"].append(terms.g.mean().item())
                metrics["empg/g/max"].append(terms.g.max().item())
                metrics["empg/frac_g_above_1"].append((terms.g > 1).double().mean().item())
                metrics["empg/bonus/mean"].append(terms.future_clarity_bonus.mean().item())
        elif self.args.modulation == "aem":
            num_generations = self.num_generations if mode == "train" else self.num_generations_eval
            terms = aem_terms(
                step_advantage,
                step_entropy,
                step_episode // num_generations,
                lam=self.args.aem_lambda,
                min_range=self.args.aem_min_range,
            )
            token_advantages = layout.to_tokens(terms.advantages[local].to(advantages.dtype))
            if steps.size(0):
                metrics["aem/alpha/min"].append(terms.alpha.min().item())
                metrics["aem/alpha/mean"].append(terms.alpha.mean().item())
                metrics["aem/alpha/max"].append(terms.alpha.max().item())
                metrics["aem/guarded_frac"].append(terms.guarded.double().mean().item())
        if self.args.aepo_entropy_advantage:
            base = advantages.unsqueeze(1).expand_as(model_mask) if token_advantages is None else token_advantages
            token_advantages = aepo_token_advantages(
                base, self._global_entropy_zscores(entropies, model_mask), self.args.aepo_a
            )
            scale = (token_advantages / base.where(base != 0, torch.ones_like(base)))[model_mask.bool() & (base != 0)]
            if scale.numel():
                metrics["aepo/advantage_scale/mean"].append(self.accelerator.gather(scale.mean()).mean().item())
        if token_advantages is not None:
            output["advantages"] = token_advantages * model_mask

    def _global_entropy_zscores(self, entropies: Tensor, mask: Tensor) -> Tensor:
        """z-scores of token entropies with mean and std over every valid token of all processes."""
        valid = entropies[mask.bool()].double()
        totals = torch.stack([valid.sum(), (valid**2).sum(), valid.new_tensor(float(valid.numel()))])
        total, squares, count = self.accelerator.reduce(totals, reduction="sum")
        mean = total / count.clamp(min=1)
        std = (squares / count.clamp(min=1) - mean**2).clamp(min=0).sqrt()
        return entropy_zscore(entropies, mask, mean, std)

    # ----------------------------------------------------------------------------------------------------------------
    # Loss-level additions: AEPO stop-gradient clip, EPO entropy regulariser
    # ----------------------------------------------------------------------------------------------------------------

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> Tensor:
        if not (self.args.aepo_clip or self.args.epo):
            return super()._compute_loss(model, inputs)
        self._policy_forward = None
        loss = super()._compute_loss(model, inputs)
        per_token_logps, entropies = self._policy_forward
        self._policy_forward = None
        mode = "train" if self.model.training else "eval"
        mask = inputs["completion_mask"] * inputs["tool_mask"] if "tool_mask" in inputs else inputs["completion_mask"]
        if self.args.aepo_clip:
            old = inputs.get("old_per_token_logps")
            old = per_token_logps.detach() if old is None else old
            term, clipped = aepo_clip_term(per_token_logps, old, inputs["advantages"], self.epsilon_high)
            if self.use_vllm and self.vllm_importance_sampling_correction:
                term = term * inputs["importance_sampling_ratio"]
            loss = loss + self._aggregate_like_loss(term, mask, inputs, mode)
            clipped_share = (clipped * mask).sum() / mask.sum().clamp(min=1)
            self._metrics[mode]["aepo/sg_clipped_tokens"].append(self.accelerator.gather(clipped_share).mean().item())
        if self.args.epo:
            loss = loss + self._epo_term(entropies, mask, inputs["step_ids"], mode)
        return loss

    def _aggregate_like_loss(self, per_token: Tensor, mask: Tensor, inputs: dict[str, Any], mode: str) -> Tensor:
        """Reduce a per-token term exactly as TRL reduces its policy loss for ``loss_type``."""
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self.loss_type == "grpo":
            return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
        if self.loss_type == "bnpo":
            return (per_token * mask).sum() / mask.sum().clamp(min=1.0) / accumulation
        if self.loss_type == "dr_grpo":
            return (per_token * mask).sum() / (per_token.size(0) * self.max_completion_length) / accumulation
        if self.loss_type == "dapo":
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            return (per_token * mask).sum() / normalizer
        if self.loss_type == "luspo":
            return (per_token * mask).sum(-1).mean() / accumulation
        raise ValueError(f"No aggregation for loss_type {self.loss_type!r}.")

    def _epo_term(self, entropies: Tensor, mask: Tensor, step_ids: Tensor, mode: str) -> Tensor:
        """-lambda * (L_H - beta_k * L_smooth), averaged per turn, per trajectory, then over the batch."""
        args = self.args
        layout = StepLayout.from_step_ids(torch.where(mask.bool(), step_ids, torch.full_like(step_ids, -1)))
        num_rows = entropies.size(0)
        entropy_term = trajectory_mean(entropies, layout, num_rows)
        history = self._epo_history_mean()
        if history is None:  # no past step yet: the corridor is undefined, the smoothing term is 0
            smoothing, outside = entropy_term * 0.0, entropy_term.new_zeros(())
        else:
            hinge = epo_smoothing(entropies, history, args.epo_kl, args.epo_kr, args.epo_alpha)
            smoothing = trajectory_mean(hinge, layout, num_rows)
            outside = ((hinge > 0) & mask.bool()).sum() / mask.sum().clamp(min=1)
        beta = epo_beta(self.state.global_step, max(self.state.max_steps, 1), args.epo_gamma)
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        metrics = self._metrics[mode]
        metrics["epo/entropy"].append(self.accelerator.gather(entropy_term.detach()).mean().item())
        metrics["epo/smoothing"].append(self.accelerator.gather(smoothing.detach()).mean().item())
        metrics["epo/corridor_violation"].append(self.accelerator.gather(outside).mean().item())
        metrics["epo/beta"].append(beta)
        if history is not None:
            metrics["epo/history_entropy"].append(history)
        if mode == "train":
            self._epo_record(entropies.detach(), mask)
        return -args.epo_lambda * (entropy_term - beta * smoothing) / accumulation

    def _epo_history_mean(self) -> float | None:
        return self._epo_entropy_sum / self._epo_steps if self._epo_steps else None

    def _epo_record(self, entropies: Tensor, mask: Tensor) -> None:
        """Accumulate this optimizer step's batch-mean token entropy; fold it into the history at the step's end."""
        window = torch.stack([(entropies * mask).sum(), mask.sum()]).double()
        self._epo_window = window if self._epo_window is None else self._epo_window + window
        if self.accelerator.sync_gradients:
            total, count = self.accelerator.reduce(self._epo_window, reduction="sum").tolist()
            self._epo_window = None
            if count > 0:
                self._epo_entropy_sum += total / count
                self._epo_steps += 1

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # Written before transformers' save, whose trainer_state.json (written last) marks the checkpoint complete.
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.epo and self.args.should_save:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, EPO_STATE_FILE), "w") as handle:
                json.dump({"entropy_sum": self._epo_entropy_sum, "steps": self._epo_steps}, handle)
        if self._env_rollout is not None:  # per process, like transformers' rng_state_<rank>.pth
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, _rollout_state_file(self.args.process_index)), "w") as handle:
                json.dump(self._env_rollout.state_dict(), handle)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, EPO_STATE_FILE)
        if self.args.epo and os.path.exists(path):
            with open(path) as handle:
                state = json.load(handle)
            self._epo_entropy_sum, self._epo_steps = state["entropy_sum"], state["steps"]
        path = os.path.join(checkpoint, _rollout_state_file(self.args.process_index))
        if self._env_rollout is not None and os.path.exists(path):
            with open(path) as handle:
                self._env_rollout.load_state_dict(json.load(handle))


def _rollout_state_file(process_index: int) -> str:
    return f"env_rollout_state_{process_index}.json"
