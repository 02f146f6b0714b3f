"""EMPGConfig: GRPOConfig plus EMPG's hyperparameters and the multi-turn environment rollout settings."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from trl import GRPOConfig

from ..envs.base import SPLITS
from ..methods.entropy import ENTROPY_SOURCES
from ..rollout.settings import EnvArguments, RolloutArguments, check_choice

MODULATIONS = ("empg", "aem", "none")
AEPO_CLIP_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


@dataclass
class EMPGConfig(RolloutArguments, EnvArguments, GRPOConfig):
    r"""
    Configuration for [`EMPGTrainer`]: everything in [`~trl.GRPOConfig`] plus the fields below, grouped by the paper
    they come from. The defaults train plain EMPG on TRL's GRPO; the seed-family options are off unless asked for.

    Parameters:
        > EMPG, Entropy-Modulated Policy Gradients (arXiv:2509.09265): each step's advantage is rescaled by the step's
        > entropy under the rollout policy, `A_mod = g(H) * A + zeta * f(H_next)`, then centred. Defaults follow the
        > paper's project page. With `empg_k=0`, `empg_zeta=0` and `empg_center=False`, training equals GRPO exactly.

        modulation (`str`, defaults to `"empg"`): step-level advantage modulation: `"empg"`, `"aem"` (AEM, below) or
            `"none"` (TRL's GRPO/DAPO advantage unchanged).
        empg_k (`float`, defaults to `1.0`): k in `g = exp(-k Hn) / mean(exp(-k Hn))`, the self-calibrating scale
            (confident steps get g > 1); 0 disables the scaling.
        empg_k_future (`float`, defaults to `1.0`): k' in the future-clarity weight `f = exp(-k' Hn)`.
        empg_zeta (`float`, defaults to `0.1`): zeta, weight of the future-clarity bonus `zeta * f(H_{t+1})`.
        empg_eps (`float`, defaults to `1e-8`): epsilon of the batch min-max normalisation `Hn` of step entropies.
        empg_center (`bool`, defaults to `True`): subtract the batch mean of the modulated step advantages (no std).

        > AEM, Adaptive Entropy Modulation (arXiv:2605.00425), with `modulation="aem"`: the base advantage is scaled by
        > `alpha = exp(-lam Hn) / mean_group(exp(-lam Hn))`, min-max normalised within each task's rollout group; no
        > bonus, no centering.

        aem_lambda (`float`, defaults to `1.0`): lam in alpha.
        aem_min_range (`float`, defaults to `0.1`): a group whose step-entropy range is below it keeps alpha = 1.

        > AEPO, Agentic Entropy-Balanced Policy Optimization (arXiv:2510.14545). Loss side: a stop-gradient upper clip
        > and an entropy-aware token advantage (which up-weights high-entropy tokens, the opposite of EMPG; combining
        > it with `modulation="empg"` warns). Rollout side: entropy-balanced branching of multi-turn episodes.

        aepo_clip (`bool`, defaults to `False`): clipped positive-advantage tokens keep the gradient
            `(1 + epsilon_high) * A`; the forward loss is TRL's. Only for PPO-clipped losses (`grpo`, `bnpo`,
            `dr_grpo`, `dapo`, `luspo`) with token-level importance sampling.
        aepo_entropy_advantage (`bool`, defaults to `False`): token advantages `A * (1 + aepo_a * z(H))`, z the
            z-score of token entropies over the batch.
        aepo_a (`float`, defaults to `0.2`): a in `1 + a * z(H)`.
        aepo_rollout (`bool`, defaults to `False`): entropy pre-monitoring splits each group between full episodes
            and branches from high-entropy turns (needs `env_id`).
        aepo_beta (`float`, defaults to `0.5`): beta in the branch budget
            `m = k * sigmoid(beta * (H_root - mean H_tool))`.
        aepo_branch_alpha (`float` or `None`, defaults to `None`): alpha in `P_t = (alpha + gamma * dH) * (1 - P(l))`;
            None draws it uniformly per step.
        aepo_branch_gamma (`float`, defaults to `0.2`): gamma, weight of the entropy change dH in `P_t`.
        aepo_branch_tau (`float`, defaults to `0.5`): a turn branches when `P_t` exceeds tau.
        aepo_branch_penalty (`float`, defaults to `0.05`): consecutive-branch penalty slope: `P(l) = min(1, slope * l)`
            for l consecutive branches.
        aepo_branch_factor (`int`, defaults to `1`): Z, new branches per branching event.

        > EPO, Entropy-regularized Policy Optimization (arXiv:2509.22576, v2 form): `L = L_pg - lam * (L_H - beta_k *
        > L_smooth)`, token entropies averaged per turn, per trajectory, then over the batch; the running historical
        > entropy mean is saved with every checkpoint.

        epo (`bool`, defaults to `False`): add EPO's entropy regulariser to TRL's loss.
        epo_lambda (`float`, defaults to `1e-3`): lam, weight of the regulariser.
        epo_kl (`float`, defaults to `0.0`): lower corridor factor: the hinge acts below `kl * Hbar`.
        epo_kr (`float`, defaults to `2.0`): upper corridor factor: the hinge acts above `kr * Hbar`.
        epo_gamma (`float`, defaults to `3.0`): gamma in `beta_k = 1 + exp(-gamma * k / floor(K / 2))`.
        epo_alpha (`float`, defaults to `0.1`): smoothing weight (paper: 0.1 ALFWorld, 0.05 ScienceWorld).

        > Entropy source: every method above needs the rollout policy's token entropies, temperature-scaled like TRL's
        > log-probs (see `trl_empg.methods.entropy`).

        entropy_source (`str`, defaults to `"auto"`): `"generation"` (recorded while the transformers backend
            generates), `"old_logps"` (kept from TRL's old-log-prob pass when it runs), `"forward"` (one extra no-grad
            chunked pass) or `"auto"` (the first of these that is free).

        > Multi-turn environment settings (`EnvArguments`, shared with every subcommand that plays episodes).

        env_id (`str` or `None`, defaults to `None`): text environment of multi-turn rollouts, e.g. `"twx:coin"`,
            `"scienceworld:boil"`, `"alfworld"`, `"webshop"`, `"search"` or `"package.module:Class"`; None trains on
            single-turn prompts or TRL tool environments.
        env_kwargs (`dict` or `str`, defaults to `None`): environment constructor arguments (a JSON object on the CLI).
        env_workers (`int`, defaults to `0`): worker processes stepping environments in parallel (0: in-process).
        env_step_timeout (`float`, defaults to `30.0`): seconds a step may take before the episode ends as a failure.
        env_reset_timeout (`float`, defaults to `120.0`): the same for a reset (which may start a JVM first).
        env_split (`str`, defaults to `"train"`): split whose task seeds build the default training dataset.
        env_num_tasks (`int` or `None`, defaults to `None`): use only the first N task seeds of that split.

        > Rollout settings (`RolloutArguments`, shared likewise): how an episode is played, laid out and scored. The
        > two layouts give EMPG the same step table (see the project's METHODS.md).

        max_turns (`int`, defaults to `20`): agent turns per episode; episodes that reach it end truncated.
        max_turn_tokens (`int`, defaults to `128`): tokens the agent may generate in one turn.
        max_completion_length (`int`, defaults to `512`): token budget of one completion: the whole episode after the
            first prompt in the episode layout, one reply in the step layout.
        prompt_style (`str`, defaults to `"react"`): `"react"` (`<think>` then `<action>`) or `"plain"` (the action).
        show_admissible_actions (`bool`, defaults to `True`): list the env's admissible actions in observations.
        reward_mode (`str`, defaults to `"success"`): episode reward, `"success"` (1 if won) or `"score"` (in [0, 1]).
        invalid_action_penalty (`float`, defaults to `0.0`): subtracted per malformed or inadmissible action.
        reuse_kv_cache (`bool`, defaults to `True`): keep each episode's KV cache across turns (transformers backend).
        rollout_layout (`str`, defaults to `"episode"`): `"episode"` (one completion per episode, observation tokens
            masked; EMPG's pseudocode) or `"step"` (one sample per turn with a bounded-history prompt; verl-agent).
        history_turns (`int`, defaults to `2`): step layout: earlier (observation, reply) pairs in each prompt.

        > Inherited with a new default: `activation_checkpointing` (transformers 5's name; `gradient_checkpointing` is
        > its deprecated alias) stays on unless either name turns it off, as in TRL's GRPOConfig, without the alias
        > warning that TRL's `gradient_checkpointing=True` default raises on every config.
    """

    # EMPG
    modulation: str = field(
        default="empg",
        metadata={
            "help": "Step-level advantage modulation: 'empg' (EMPG, arXiv:2509.09265), 'aem' (AEM, arXiv:2605.00425) "
            "or 'none' (plain GRPO/DAPO)."
        },
    )
    empg_k: float = field(
        default=1.0,
        metadata={"help": "k in g(H) = exp(-k Hn) / mean(exp(-k Hn)); 0 disables the scaling. Paper default 1.0."},
    )
    empg_k_future: float = field(
        default=1.0,
        metadata={"help": "k' in the future-clarity weight f(H) = exp(-k' Hn). Paper default 1.0."},
    )
    empg_zeta: float = field(
        default=0.1,
        metadata={"help": "zeta, weight of the future-clarity bonus zeta * f(H_{t+1}); 0 disables it. Paper: 0.1."},
    )
    empg_eps: float = field(
        default=1e-8,
        metadata={"help": "Epsilon in the batch min-max normalisation of step entropies. Paper default 1e-8."},
    )
    empg_center: bool = field(
        default=True,
        metadata={"help": "Subtract the batch mean of the modulated step advantages (no std division), as the paper."},
    )
    aem_lambda: float = field(
        default=1.0,
        metadata={"help": "AEM's lambda in alpha = exp(-lambda Hn) / mean_group(exp(-lambda Hn)). Paper default 1.0."},
    )
    aem_min_range: float = field(
        default=0.1,
        metadata={
            "help": "AEM's range guard: a group whose step-entropy range is below it keeps alpha = 1. Paper: 0.1."
        },
    )
    aepo_clip: bool = field(
        default=False,
        metadata={
            "help": "AEPO's stop-gradient upper clip (arXiv:2510.14545): clipped positive-advantage tokens keep the "
            "gradient (1 + epsilon_high) * A; the forward loss is unchanged."
        },
    )
    aepo_entropy_advantage: bool = field(
        default=False,
        metadata={
            "help": "AEPO's entropy-aware token advantage A * (1 + a * z(H)) (up-weights high-entropy tokens; "
            "opposite in spirit to EMPG's down-weighting)."
        },
    )
    aepo_a: float = field(default=0.2, metadata={"help": "AEPO's a in A * (1 + a * z(H)). Paper default 0.2."})
    aepo_rollout: bool = field(
        default=False,
        metadata={
            "help": "AEPO's dynamic entropy-balanced rollout (multi-turn env training): entropy pre-monitoring splits "
            "each group between full rollouts and branches from high-entropy turns, with a consecutive-branch penalty."
        },
    )
    aepo_beta: float = field(
        default=0.5, metadata={"help": "AEPO's beta in m = k * sigmoid(beta * (H_root - mean H_tool))."}
    )
    aepo_branch_alpha: float | None = field(
        default=None,
        metadata={
            "help": "AEPO's alpha in P_t = (alpha + gamma * dH) * (1 - P(l)); None draws it uniformly per step."
        },
    )
    aepo_branch_gamma: float = field(default=0.2, metadata={"help": "AEPO's gamma, weight of the entropy change dH."})
    aepo_branch_tau: float = field(default=0.5, metadata={"help": "AEPO's branching threshold on P_t."})
    aepo_branch_penalty: float = field(
        default=0.05, metadata={"help": "AEPO's consecutive-branch penalty slope: P(l) = min(1, slope * l)."}
    )
    aepo_branch_factor: int = field(default=1, metadata={"help": "AEPO's Z: new branches per branching event."})
    epo: bool = field(
        default=False,
        metadata={
            "help": "EPO's entropy regulariser (arXiv:2509.22576 v2): L = L_pg - lambda * (L_H - beta_k * L_smooth), "
            "with a hinge keeping entropy near its running historical mean."
        },
    )
    epo_lambda: float = field(default=1e-3, metadata={"help": "EPO's lambda, weight of the regulariser. Paper: 1e-3."})
    epo_kl: float = field(default=0.0, metadata={"help": "EPO's lower corridor factor kl (hinge below kl * Hbar)."})
    epo_kr: float = field(default=2.0, metadata={"help": "EPO's upper corridor factor kr (hinge above kr * Hbar)."})
    epo_gamma: float = field(default=3.0, metadata={"help": "EPO's gamma in beta_k = 1 + exp(-gamma k / floor(K/2))."})
    epo_alpha: float = field(
        default=0.1, metadata={"help": "EPO's smoothing weight alpha: 0.1 (ALFWorld) or 0.05 (ScienceWorld)."}
    )
    entropy_source: str = field(
        default="auto",
        metadata={
            "help": "Source of rollout-policy token entropies: 'generation' (recorded while generating, transformers "
            "backend), 'old_logps' (kept from TRL's old-log-prob pass when it runs), 'forward' (one extra no-grad "
            "chunked pass), or 'auto' (the first of these that is free)."
        },
    )

    # Multi-turn text-environment rollouts (the env and rollout settings themselves: EnvArguments, RolloutArguments)
    env_split: str = field(
        default="train",
        metadata={"help": "Environment split whose task seeds build the training dataset: train, dev or test."},
    )
    env_num_tasks: int | None = field(
        default=None,
        metadata={"help": "Use only the first N task seeds of the split for the training dataset (None: all)."},
    )
    # None marks "not given", so __post_init__ can tell an explicit old name from the default (TRL: on).
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Recompute activations in the backward pass to save memory (None: on, TRL's default)."},
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing` (transformers 5)."}
    )

    def __post_init__(self) -> None:
        check_choice("modulation", self.modulation, MODULATIONS)
        check_choice("entropy_source", self.entropy_source, ENTROPY_SOURCES)
        check_choice("env_split", self.env_split, SPLITS)
        for name in (
            "empg_k",
            "empg_k_future",
            "empg_zeta",
            "aem_lambda",
            "aem_min_range",
            "aepo_a",
            "epo_lambda",
            "epo_kl",
            "epo_kr",
            "epo_gamma",
            "epo_alpha",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.empg_eps <= 0:
            raise ValueError(f"empg_eps must be > 0, got {self.empg_eps}.")
        if self.env_num_tasks is not None and self.env_num_tasks < 1:
            raise ValueError(f"env_num_tasks must be >= 1 or None, got {self.env_num_tasks}.")
        if self.rollout_layout == "step" and self.env_id is None:
            raise ValueError("rollout_layout='step' lays out multi-turn env episodes turn by turn: set env_id.")
        if self.aepo_rollout and self.env_id is None:
            raise ValueError("aepo_rollout branches multi-turn env episodes: set env_id.")
        if self.epo_kl > self.epo_kr:
            raise ValueError(f"epo_kl ({self.epo_kl}) must not exceed epo_kr ({self.epo_kr}).")
        if self.aepo_entropy_advantage and self.modulation == "empg":
            warnings.warn(
                "aepo_entropy_advantage up-weights high-entropy tokens while EMPG down-weights high-entropy steps; "
                "combining them mixes opposite signals.",
                UserWarning,
                stacklevel=2,
            )
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True
        super().__post_init__()
        if self.aepo_rollout and (self.per_device_train_batch_size * self.steps_per_generation) % self.num_generations:
            raise ValueError(
                "aepo_rollout branches within each task's group, so every process's generation batch "
                "(per_device_train_batch_size * steps_per_generation) must be a multiple of num_generations."
            )
        if self.aepo_clip:
            self._check_aepo_clip_support()
        if self.rollout_layout == "step" and self.use_vllm and self.vllm_importance_sampling_correction:
            raise ValueError(
                "rollout_layout='step' re-lays TRL's episode rows as step samples after scoring; vLLM's importance-"
                "sampling correction is computed on the episode rows: set vllm_importance_sampling_correction=False."
            )

    def _check_aepo_clip_support(self) -> None:
        if self.loss_type not in AEPO_CLIP_LOSSES:
            raise ValueError(
                f"aepo_clip needs a clipped loss ({list(AEPO_CLIP_LOSSES)}), got loss_type={self.loss_type!r}."
            )
        unsupported = {
            "importance_sampling_level='sequence'": self.importance_sampling_level != "token",
            "top_entropy_quantile < 1": self.top_entropy_quantile < 1.0,
            "off_policy_mask_threshold": self.off_policy_mask_threshold is not None,
            "delta (two-sided clipping)": self.delta is not None,
        }
        clashes = [name for name, on in unsupported.items() if on]
        if clashes:
            raise ValueError(f"aepo_clip is defined for PPO's token-level clip only; unset {', '.join(clashes)}.")
