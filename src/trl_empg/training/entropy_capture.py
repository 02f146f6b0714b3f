"""Where rollout-policy token entropies come from, without an extra forward pass where possible.

:class:`EntropyCapture` is the part of :class:`~trl_empg.EMPGTrainer` that overrides GRPOTrainer's generation and
log-prob passes to keep the entropies they see: recorded by a forward hook during ``generate`` (transformers
backend), kept from TRL's no-grad old-log-prob pass when it runs one, and only otherwise computed in one chunked
no-grad pass (``args.entropy_source``, see :mod:`trl_empg.methods.entropy`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import Tensor
from trl import GRPOTrainer
from trl.trainer.utils import pad

from ..methods.entropy import GenerationEntropyRecorder, GenerationEntropyStore

logger = logging.getLogger(__name__)

__all__ = ["EntropyCapture"]


class EntropyCapture(GRPOTrainer):
    """GRPOTrainer that records the rollout policy's token entropies of every generation batch.

    Overrides ``_generate_single_turn`` (record entropies while generating) and
    ``_get_per_token_logps_and_entropies`` (keep the old-log-prob pass's entropies; note the loss's own forward).
    """

    def _init_entropy_capture(self) -> None:
        self.entropy_source = self._resolve_entropy_source()
        self._generation_entropies = GenerationEntropyStore()
        self._last_generation_entropies: list[list[float]] | None = None
        self._capture_old_pass_entropy = False
        self._old_pass_entropies: Tensor | None = None
        self._current_inputs: list[dict[str, Any]] = []
        self._policy_forward: tuple[Tensor, Tensor | None] | None | bool = False  # None: capture the next loss forward

    def _old_logps_pass_runs(self) -> bool:
        """Whether TRL computes old_per_token_logps in _generate_and_score_completions (same test as TRL's)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or bool(
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _resolve_entropy_source(self) -> str:
        requested = self.args.entropy_source
        can_record = not self.use_vllm and not self.use_transformers_continuous_batching
        if requested == "auto":
            if can_record:
                return "generation"
            return "old_logps" if self._old_logps_pass_runs() else "forward"
        if requested == "generation" and not can_record:
            raise ValueError(
                "entropy_source='generation' needs the transformers generate() backend; with vLLM or continuous "
                "batching use 'auto', 'old_logps' or 'forward'."
            )
        if requested == "old_logps" and not self._old_logps_pass_runs():
            raise ValueError(
                "entropy_source='old_logps' needs TRL's old-log-prob pass, which runs only with vLLM importance "
                "sampling correction or when gradient_accumulation_steps is not a multiple of steps_per_generation * "
                "num_iterations. Use 'auto' or 'forward'."
            )
        return requested

    @contextmanager
    def _recording_generation_entropies(self):
        model = self.accelerator.unwrap_model(self.model)
        model = model.get_base_model() if is_peft_model(model) else model
        recorder = GenerationEntropyRecorder(self.temperature)
        handle = recorder.attach(model)
        try:
            yield recorder
        finally:
            handle.remove()

    @contextmanager
    def _without_activation_checkpointing(self) -> Iterator[None]:
        """Turn activation checkpointing off for a no-grad pass, and back on after it.

        TRL's ``disable_gradient_checkpointing`` does the same through transformers 5's deprecated
        ``gradient_checkpointing_*`` aliases, which warn on every call. A no-grad pass recomputes nothing, and with
        reentrant checkpointing calling the model under ``no_grad`` warns, so it is off there either way.
        """
        was_enabled = self.model.is_activation_checkpointing
        if was_enabled:
            self.model.activation_checkpointing_disable()
        try:
            yield
        finally:
            if was_enabled:
                self.model.activation_checkpointing_enable(self.args.activation_checkpointing_kwargs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.entropy_source != "generation":
            self._last_generation_entropies = None
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        with self._recording_generation_entropies() as recorder:
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        entropies = recorder.per_row([len(ids) for ids in completion_ids])
        for prompt, completion, row_entropies in zip(prompt_ids, completion_ids, entropies, strict=True):
            self._generation_entropies.add(prompt, completion, row_entropies)
        self._last_generation_entropies = entropies
        return completion_ids, logprobs

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        # The first no-grad policy pass of a batch is TRL's old-log-prob pass (the reference pass comes after it):
        # its fused head computes entropies anyway, so keep them instead of dropping them.
        capture = self._capture_old_pass_entropy and model is self.model and not torch.is_grad_enabled()
        if not capture:
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
            if self._policy_forward is None and torch.is_grad_enabled():
                self._policy_forward = (logps, entropies)  # the loss's own forward, for AEPO's clip and EPO
            return logps, entropies, aux
        self._capture_old_pass_entropy = False
        wanted = kwargs.pop("compute_entropy", False)
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, compute_entropy=True, **kwargs
        )
        self._old_pass_entropies = entropies
        return logps, entropies if wanted else None, aux

    def _forward_pass_entropies(self, output: dict[str, Any]) -> Tensor:
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        with torch.no_grad(), self._without_activation_checkpointing():
            _, entropies, _ = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                output["completion_ids"].size(1),
                batch_size=batch_size,
                compute_entropy=True,
            )
        return entropies

    def _recorded_entropies(self, output: dict[str, Any], model_mask: Tensor) -> Tensor | None:
        """(B, T) entropies of the generation calls of this batch, or None if a completion cannot be matched."""
        explicit = [row.get("token_entropies") for row in self._current_inputs]
        if explicit and all(e is not None for e in explicit):
            rows = [torch.tensor(e, dtype=torch.float32) for e in explicit]
        else:
            rows = []
            prompt_mask = output["prompt_mask"].bool().cpu()
            completion_mask = output["completion_mask"].bool().cpu()
            prompt_ids, completion_ids = output["prompt_ids"].cpu(), output["completion_ids"].cpu()
            mask = model_mask.cpu()
            for i in range(prompt_ids.size(0)):
                length = int(completion_mask[i].sum())
                try:
                    values = self._generation_entropies.lookup(
                        prompt_ids[i][prompt_mask[i]].tolist(),
                        completion_ids[i][:length].tolist(),
                        mask[i][:length].tolist(),
                    )
                except KeyError as error:
                    logger.warning("Falling back to a forward pass for entropies: %s", error)
                    return None
                rows.append(torch.tensor(values, dtype=torch.float32))
        table = pad(rows, padding_value=0.0, padding_side="right") if rows else model_mask.new_zeros(model_mask.shape)
        width = model_mask.size(1)
        table = (
            table[:, :width] if table.size(1) >= width else torch.nn.functional.pad(table, (0, width - table.size(1)))
        )
        return table.to(model_mask.device)

    def _token_entropies(self, output: dict[str, Any], model_mask: Tensor) -> tuple[Tensor, str]:
        if self.entropy_source == "generation":
            recorded = self._recorded_entropies(output, model_mask)
            if recorded is not None:
                return recorded, "generation"
        if self.entropy_source == "old_logps" and self._old_pass_entropies is not None:
            return self._old_pass_entropies, "old_logps"
        return self._forward_pass_entropies(output), "forward"
