"""Step-level advantage modulation, as pure tensor math with no trainer state.

EMPG (Entropy-Modulated Policy Gradients, arXiv:2509.09265), for every step (i, t) of every trajectory in the batch:

    Hn(i,t)     = (H(i,t) - min H) / (max H - min H + eps)          batch-level min-max normalisation
    g(i,t)      = exp(-k * Hn) / mean(exp(-k * Hn))                 self-calibrating scale, batch mean 1
    f(i,t)      = exp(-k_future * Hn)                               future clarity, not mean-normalised
    A_mod(i,t)  = g(i,t) * A_i + zeta * f(i,t+1)                    bonus 0 when step t+1 does not exist
    A_final     = A_mod - mean(A_mod)                               centering, no std division

All statistics run over steps (each step counts once, whatever its token length). Rows may come in any order: the
"next step" of row n is the row with the same trajectory id and step index + 1.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def normalized_entropy(entropies: Tensor, eps: float = 1e-8) -> Tensor:
    """Hn: min-max normalisation over every step of the batch."""
    if entropies.numel() == 0:
        return entropies
    return (entropies - entropies.min()) / (entropies.max() - entropies.min() + eps)


def g(normalized: Tensor, k: float = 1.0) -> Tensor:
    """g(H) = exp(-k Hn) / mean(exp(-k Hn)): confident steps (low entropy) get g > 1, batch mean exactly 1."""
    weights = torch.exp(-k * normalized)
    return weights / weights.mean()


def f(normalized: Tensor, k_future: float = 1.0) -> Tensor:
    """f(H) = exp(-k' Hn): the future-clarity weight of a step, in (0, 1]."""
    return torch.exp(-k_future * normalized)


def next_step_index(trajectory_ids: Tensor, step_indices: Tensor) -> Tensor:
    """For each row, the row holding step t+1 of the same trajectory, or -1 when there is none."""
    n = trajectory_ids.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=trajectory_ids.device)
    trajectory_ids = trajectory_ids.long()
    step_indices = step_indices.long()
    if (step_indices < 0).any():
        raise ValueError("step_indices must be non-negative.")
    stride = int(step_indices.max().item()) + 2  # +2 so that step + 1 never collides with the next trajectory
    keys = (trajectory_ids - trajectory_ids.min()) * stride + step_indices
    sorted_keys, order = torch.sort(keys)
    if (sorted_keys[1:] == sorted_keys[:-1]).any():
        raise ValueError("Each (trajectory_id, step_index) pair must appear once.")
    wanted = keys + 1
    position = torch.searchsorted(sorted_keys, wanted).clamp(max=n - 1)
    found = sorted_keys[position] == wanted
    return torch.where(found, order[position], torch.full_like(position, -1))


class EMPGTerms(NamedTuple):
    """Every intermediate of EMPG per step, for logging and tests."""

    normalized_entropy: Tensor
    g: Tensor
    future_clarity_bonus: Tensor  # zeta * f(i, t+1), 0 for the last step of a trajectory
    has_next: Tensor
    modulated: Tensor  # A_mod
    advantages: Tensor  # A_final (centered when center=True)


def empg_terms(
    advantages: Tensor,
    entropies: Tensor,
    trajectory_ids: Tensor,
    step_indices: Tensor,
    k: float = 1.0,
    k_future: float = 1.0,
    zeta: float = 0.1,
    eps: float = 1e-8,
    center: bool = True,
) -> EMPGTerms:
    """EMPG with all its intermediates; see :func:`empg_step_advantages`."""
    tensors = (advantages, entropies, trajectory_ids, step_indices)
    if any(t.dim() != 1 for t in tensors) or len({t.numel() for t in tensors}) != 1:
        raise ValueError("advantages, entropies, trajectory_ids and step_indices must be 1-D tensors of equal length.")
    dtype = torch.promote_types(advantages.dtype, torch.float32)
    advantages = advantages.to(dtype)
    entropies = entropies.to(dtype)
    normalized = normalized_entropy(entropies, eps)
    scale = g(normalized, k) if normalized.numel() else normalized
    clarity = f(normalized, k_future)
    next_index = next_step_index(trajectory_ids, step_indices)
    has_next = next_index >= 0
    bonus = torch.where(has_next, zeta * clarity[next_index.clamp(min=0)], torch.zeros_like(clarity))
    modulated = scale * advantages + bonus
    final = modulated - modulated.mean() if center and modulated.numel() else modulated
    return EMPGTerms(normalized, scale, bonus, has_next, modulated, final)


def empg_step_advantages(
    advantages: Tensor,
    entropies: Tensor,
    trajectory_ids: Tensor,
    step_indices: Tensor,
    k: float = 1.0,
    k_future: float = 1.0,
    zeta: float = 0.1,
    eps: float = 1e-8,
    center: bool = True,
) -> Tensor:
    """EMPG's modulated step advantages A_final, one per input row.

    Args:
        advantages: (N,) trajectory-level advantage A_i of the trajectory each step belongs to.
        entropies: (N,) step entropy H(i,t): mean token entropy of the step under the rollout policy.
        trajectory_ids: (N,) id of the trajectory of each step.
        step_indices: (N,) index t of the step within its trajectory.
        k, k_future, zeta, eps: EMPG's hyperparameters (paper defaults 1.0, 1.0, 0.1, 1e-8).
        center: subtract the batch mean of A_mod (no division by a std).
    """
    return empg_terms(advantages, entropies, trajectory_ids, step_indices, k, k_future, zeta, eps, center).advantages


# ---------------------------------------------------------------------------------------------------------------------
# AEM: Adaptive Entropy Modulation (arXiv:2605.00425)
# ---------------------------------------------------------------------------------------------------------------------


class AEMTerms(NamedTuple):
    alpha: Tensor  # per-step scale, mean 1 within each unguarded group
    guarded: Tensor  # per-step: its group's entropy range is below min_range, so alpha = 1
    advantages: Tensor  # alpha * A_base


def aem_terms(
    advantages: Tensor, entropies: Tensor, group_ids: Tensor, lam: float = 1.0, min_range: float = 0.1
) -> AEMTerms:
    """AEM with its intermediates; see :func:`aem_step_advantages`."""
    tensors = (advantages, entropies, group_ids)
    if any(t.dim() != 1 for t in tensors) or len({t.numel() for t in tensors}) != 1:
        raise ValueError("advantages, entropies and group_ids must be 1-D tensors of equal length.")
    dtype = torch.promote_types(advantages.dtype, torch.float32)
    advantages, entropies = advantages.to(dtype), entropies.to(dtype)
    if advantages.numel() == 0:
        return AEMTerms(advantages, advantages.bool(), advantages)
    _, group = torch.unique(group_ids, return_inverse=True)
    num_groups = int(group.max()) + 1
    low = torch.full((num_groups,), float("inf"), dtype=dtype).scatter_reduce(0, group, entropies, "amin")
    high = torch.full((num_groups,), float("-inf"), dtype=dtype).scatter_reduce(0, group, entropies, "amax")
    spread = (high - low)[group]
    guarded = spread < min_range
    normalized = torch.where(guarded, torch.zeros_like(entropies), (entropies - low[group]) / spread.clamp(min=1e-12))
    weights = torch.exp(-lam * normalized)
    group_sum = torch.zeros(num_groups, dtype=dtype).index_add_(0, group, weights)
    group_count = torch.zeros(num_groups, dtype=dtype).index_add_(0, group, torch.ones_like(weights))
    alpha = torch.where(guarded, torch.ones_like(weights), weights / (group_sum / group_count)[group])
    return AEMTerms(alpha, guarded, alpha * advantages)


def aem_step_advantages(
    advantages: Tensor, entropies: Tensor, group_ids: Tensor, lam: float = 1.0, min_range: float = 0.1
) -> Tensor:
    """AEM's step advantages: A = alpha * A_base, one per input row (rows in any order).

    Entropies are min-max normalised within each rollout group (all steps of all trajectories of one task),
    ``alpha = exp(-lam Hn) / mean_group(exp(-lam Hn))``, and a group whose entropy range is below ``min_range`` keeps
    ``alpha = 1``. No bonus, no centering.
    """
    return aem_terms(advantages, entropies, group_ids, lam, min_range).advantages


# ---------------------------------------------------------------------------------------------------------------------
# AEPO: entropy-aware token advantage (arXiv:2510.14545)
# ---------------------------------------------------------------------------------------------------------------------


def entropy_zscore(entropies: Tensor, mask: Tensor, mean: Tensor | None = None, std: Tensor | None = None) -> Tensor:
    """z(H) over the valid tokens (``mask``); a zero std counts as 1. ``mean``/``std`` may come from a wider batch."""
    valid = entropies[mask.bool()].to(torch.float64)
    if mean is None:
        mean = valid.mean() if valid.numel() else valid.new_zeros(())
    if std is None:
        std = valid.std(unbiased=False) if valid.numel() else valid.new_ones(())
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = (entropies.to(torch.float64) - mean) / std
    return torch.where(mask.bool(), z, torch.zeros_like(z)).to(entropies.dtype)


def aepo_token_advantages(advantages: Tensor, zscores: Tensor, a: float = 0.2) -> Tensor:
    """AEPO's entropy-aware advantage ``A_tok = A * (1 + a * z(H_tok))``: high-entropy tokens are up-weighted."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    return advantages * (1 + a * zscores.detach())
