"""Loss-level terms of the seed family, as pure tensor math: AEPO's stop-gradient clip and EPO's regulariser.

Both are *added* to TRL's unchanged clipped policy loss, so each is written as a per-token term that the trainer
aggregates exactly like the loss it is added to.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .segmentation import StepLayout


def aepo_clip_term(
    per_token_logps: Tensor, old_per_token_logps: Tensor, advantages: Tensor, epsilon_high: float
) -> tuple[Tensor, Tensor]:
    """AEPO's stop-gradient upper clip (arXiv:2510.14545), as a correction added to PPO's per-token loss.

    PPO's clipped value on a positive-advantage token with ratio r > 1 + eps_high is the constant (1 + eps_high) * A,
    so the token gets no gradient. AEPO uses ``(1 + eps_high) / sg(r) * r * A`` instead: the same forward value, but
    gradient ``(1 + eps_high) * A * grad log pi``. The correction ``-(1 + eps_high) * A * (r / sg(r) - 1)`` is exactly
    zero in the forward pass and carries that gradient. Returns (per-token correction, clipped-token mask).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    log_ratio = per_token_logps - old_per_token_logps
    clipped = (torch.exp(log_ratio.detach()) > 1 + epsilon_high) & (advantages > 0)
    ratio_over_sg = torch.exp(per_token_logps - per_token_logps.detach())
    correction = -(1 + epsilon_high) * advantages * (ratio_over_sg - 1)
    return torch.where(clipped, correction, torch.zeros_like(correction)), clipped


def epo_beta(step: int, total_steps: int, gamma: float = 3.0) -> float:
    """EPO's phase weight ``beta_k = 1 + exp(-gamma * k / floor(K / 2))`` (arXiv:2509.22576, v2)."""
    half = max(total_steps // 2, 1)
    return 1.0 + math.exp(-gamma * step / half)


def epo_smoothing(
    entropies: Tensor, history_mean: float, kl: float = 0.0, kr: float = 2.0, alpha: float = 0.1
) -> Tensor:
    """Per-token hinge keeping entropy inside the corridor [kl * Hbar, kr * Hbar]: zero inside it."""
    return alpha * (torch.relu(kl * history_mean - entropies) + torch.relu(entropies - kr * history_mean))


def trajectory_mean(values: Tensor, layout: StepLayout, num_rows: int) -> Tensor:
    """Average token values per turn, then per trajectory, then over the trajectories that have turns (EPO's
    hierarchical averaging); differentiable. Returns a scalar (0 when there is no turn)."""
    if layout.num_steps == 0:
        return values.sum() * 0.0
    per_step = layout.mean(values)
    row_sum = torch.zeros(num_rows, dtype=per_step.dtype, device=per_step.device).index_add(0, layout.rows, per_step)
    row_count = torch.bincount(layout.rows, minlength=num_rows).to(per_step.dtype)
    has_steps = row_count > 0
    return (row_sum[has_steps] / row_count[has_steps]).mean()
