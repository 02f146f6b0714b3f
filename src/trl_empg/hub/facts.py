"""The facts of a run that its model card states, read from the run's configuration and evaluation reports.

Everything here is plain data for :mod:`trl_empg.hub.cards` to render: the method's name (``DAPO+EMPG``), the
environment's display name, the rollout settings that replay the agent, the training and method hyperparameter rows,
the adapter and quantization, the reward, the package versions. Cards are public: configuration values pass through
:func:`redact` first, which drops anything that could hold a credential and replaces local absolute paths, so neither
a token nor a user's directory layout ends up on the Hub. :func:`hub_model_id` and :func:`check_repo_id` decide what
counts as a Hub id.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id

__all__ = [
    "ENV_FAMILY_NAMES",
    "METHODS",
    "active_methods",
    "adapter_description",
    "check_repo_id",
    "env_display_name",
    "hub_model_id",
    "is_local_absolute",
    "method_name",
    "modulation_rows",
    "package_versions",
    "redact",
    "reward_description",
    "rollout_settings",
    "training_rows",
]

LOCAL_PATH = "<local path>"
REDACTED = "<redacted>"

# Keys that may hold a credential. Numeric values under such keys are counts (max_turn_tokens), never secrets.
_SECRET_KEY = re.compile(r"token|secret|passw|api[_-]?key|credential", re.IGNORECASE)
# Hugging Face access tokens, wherever they appear in a value.
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")

ENV_FAMILY_NAMES = {
    "twx": ("TextWorldExpress", "textworld-express"),
    "alfworld": ("ALFWorld", "alfworld"),
    "scienceworld": ("ScienceWorld", "scienceworld"),
    "textworld": ("TextWorld", "textworld"),
}
# Step-level modulations and loss-level additions on top of the base objective: (label, arXiv id, config prefix).
METHODS = {
    "empg": ("EMPG", "2509.09265", "empg_"),
    "aem": ("AEM", "2605.00425", "aem_"),
    "aepo": ("AEPO", "2510.14545", "aepo_"),
    "epo": ("EPO", "2509.22576", "epo_"),
}
_BASE_LOSS_NAMES = {"grpo": "GRPO", "dr_grpo": "Dr. GRPO", "bnpo": "GRPO", "dapo": "GRPO"}
# The rollout settings the usage snippets repeat: an agent played with other settings is not the agent trained.
_ROLLOUT_KEYS = (
    "max_turns",
    "max_turn_tokens",
    "max_completion_length",
    "prompt_style",
    "show_admissible_actions",
    "temperature",
)
_TRAINING_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "max_steps",
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "num_iterations",
    "loss_type",
    "beta",
    "epsilon",
    "epsilon_high",
    "scale_rewards",
    "mask_truncated_completions",
    "temperature",
    "top_k",
    "top_p",
    "max_turns",
    "max_turn_tokens",
    "max_completion_length",
    "prompt_style",
    "show_admissible_actions",
    "reward_mode",
    "invalid_action_penalty",
    "use_vllm",
    "vllm_mode",
    "bf16",
    "seed",
)


def redact(value: Any) -> Any:
    """A copy of ``value`` safe to publish: credential-like keys dropped, tokens and local absolute paths replaced.

    A key matching token/secret/password/api key/credential is dropped unless its value is a number or a bool (a
    count such as ``max_turn_tokens`` is not a secret). Strings that are absolute paths (or ``~/...``) become
    ``"<local path>"``: relative paths such as ``runs/quickstart`` say nothing about the machine and are kept.
    """
    if isinstance(value, Mapping):
        return {
            str(key): redact(item)
            for key, item in value.items()
            if not (_SECRET_KEY.search(str(key)) and not isinstance(item, (bool, int, float)))
        }
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, str):
        if _HF_TOKEN.search(value):
            return REDACTED
        if is_local_absolute(value):
            return LOCAL_PATH
    return value


def is_local_absolute(text: str) -> bool:
    """Whether ``text`` is an absolute path on this machine (POSIX, ``~``, or a Windows drive): never published."""
    return bool(text) and (os.path.isabs(text) or text.startswith("~") or bool(re.match(r"^[A-Za-z]:[\\/]", text)))


def hub_model_id(name_or_path: str | None) -> str | None:
    """``name_or_path`` if it names a Hub model (``org/name`` or ``name``) rather than a local directory, else None.

    A directory that exists here is local even when its relative path looks like a Hub id (``runs/tiny-agent``).
    """
    if not name_or_path or Path(name_or_path).expanduser().exists():
        return None
    try:
        validate_repo_id(name_or_path)  # huggingface_hub's own rules ('name' or 'org/name', no '--' or '..', ...)
    except HFValidationError:
        return None
    return name_or_path


def converted_start(model_config: Mapping[str, Any], max_depth: int = 3) -> str | None:
    """What a run started from when its weights trace back to a model converted from GGUF by ``trl-empg
    convert-gguf``: that conversion's own description (e.g. "a dequantised Q4_1 copy of SmolLM2-135M-Instruct"),
    found in the start's ``gguf_provenance.json`` or, through each warm start's ``run_config.json``, in its start's."""
    from ..workflows.gguf import read_provenance

    name = model_config.get("model_name_or_path")
    for _ in range(max_depth):
        if not isinstance(name, str) or not Path(name).expanduser().is_dir():
            return None
        directory = Path(name).expanduser()
        provenance = read_provenance(directory)
        if provenance and provenance.get("description"):
            what = str(provenance["description"]).rstrip(".")
            return f"`{directory.name}`, converted from GGUF by `trl-empg convert-gguf` ({what[:1].lower()}{what[1:]})"
        try:
            config = json.loads((directory / "run_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        name = (config.get("model") or {}).get("model_name_or_path")
    return None


def check_repo_id(repo_id: str, argument: str = "repo_id") -> str:
    """``repo_id`` if huggingface_hub accepts it as a repo id, else a ValueError naming it and the rule it breaks."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        reason = str(error).split(":")[0].rstrip(".")
        raise ValueError(f"{argument} {repo_id!r} is not a valid Hugging Face Hub repo id ({reason}).") from None
    return repo_id


def env_display_name(env_id: str) -> str:
    """A readable environment name for tables and the Hub's dataset name: ``twx:coin`` -> ``TextWorldExpress coin``."""
    family, _, name = env_id.partition(":")
    if family in ENV_FAMILY_NAMES:
        return f"{ENV_FAMILY_NAMES[family][0]} {name}".strip()
    return env_id


def active_methods(training: Mapping[str, Any]) -> list[str]:
    """Keys of :data:`METHODS` that this configuration switches on, in a fixed order."""
    modulation = training.get("modulation", "empg")
    active = [modulation] if modulation in ("empg", "aem") else []
    if training.get("aepo_clip") or training.get("aepo_entropy_advantage"):
        active.append("aepo")
    if training.get("epo"):
        active.append("epo")
    return active


def method_name(training: Mapping[str, Any]) -> str:
    """``DAPO+EMPG``, ``GRPO``, ...: the base objective and the modulations a training configuration uses.

    DAPO means TRL's ``dapo`` loss together with clip-higher (``epsilon_high`` above ``epsilon``); the ``dapo`` loss
    alone is only a token-level normalisation (TRL's default), so it is reported as GRPO.
    """
    loss_type = str(training.get("loss_type", "dapo"))
    epsilon, epsilon_high = training.get("epsilon", 0.2), training.get("epsilon_high")
    if loss_type == "dapo" and epsilon_high is not None and epsilon_high > epsilon:
        base = "DAPO"
    else:
        base = _BASE_LOSS_NAMES.get(loss_type, loss_type.upper())
    return "+".join([base, *(METHODS[key][0] for key in active_methods(training))])


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value, sort_keys=True)}`"
    return str(value)


def reward_description(training: Mapping[str, Any]) -> str:
    """The reward the agent was trained on, in words: success or score, and the invalid-action penalty if any."""
    reward = (
        "1 if the episode's task is solved, else 0"
        if training.get("reward_mode", "success") == "success"
        else "the environment's task score, scaled to [0, 1]"
    )
    penalty = training.get("invalid_action_penalty") or 0.0
    if penalty:
        reward += f", minus {penalty:g} per malformed or invalid action"
    return reward


def adapter_description(model_config: Mapping[str, Any]) -> str | None:
    """The LoRA adapter and the base's quantization in words, or None for a full fine-tune."""
    if not model_config.get("use_peft"):
        return None
    targets = model_config.get("lora_target_modules")
    text = (
        f"LoRA adapters (r={model_config.get('lora_r')}, alpha={model_config.get('lora_alpha')}, "
        f"dropout={model_config.get('lora_dropout')}"
        + (f", target modules: {', '.join(targets) if isinstance(targets, list) else targets}" if targets else "")
        + ")"
    )
    if model_config.get("load_in_4bit"):
        quant_type = model_config.get("bnb_4bit_quant_type", "nf4")
        nested = ", double quantization" if model_config.get("use_bnb_nested_quant") else ""
        text += f" on a 4-bit {str(quant_type).upper()}{nested} quantized base (QLoRA, bitsandbytes)"
    elif model_config.get("load_in_8bit"):
        text += " on an 8-bit quantized base (bitsandbytes)"
    return text


def training_rows(training: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(setting, value) rows of the training hyperparameters the card lists; ``vllm_mode`` only with vLLM."""
    rows = [(key, _format(training[key])) for key in _TRAINING_KEYS if training.get(key) is not None]
    return [(key, value) for key, value in rows if key != "vllm_mode" or training.get("use_vllm")]


def modulation_rows(training: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """The title and (setting, value) rows of the active methods' hyperparameters; ("", []) for plain GRPO/DAPO."""
    active = active_methods(training)
    if not active:
        return "", []
    prefixes = tuple(METHODS[key][2] for key in active)
    rows = [(key, _format(training.get(key))) for key in ("modulation", "entropy_source")]
    rows += [
        (key, _format(value)) for key, value in training.items() if key.startswith(prefixes) and value is not None
    ]
    return f"{' / '.join(METHODS[key][0] for key in active)} hyperparameters", rows


def rollout_settings(training: Mapping[str, Any]) -> dict[str, Any]:
    """The rollout settings of the run; a configuration without them cannot say how to replay the agent."""
    missing = [key for key in _ROLLOUT_KEYS if training.get(key) is None]
    if missing:
        raise ValueError(
            f"The training configuration lacks {missing}, which the card's usage snippets must repeat. Save the "
            "configuration with trl_empg.hub.push.save_run_config (a filter on 'token' in key names drops "
            "max_turn_tokens)."
        )
    return {key: training[key] for key in _ROLLOUT_KEYS}


def package_versions(adapter: bool) -> list[tuple[str, str]]:
    """(package, version) of what trained the agent, peft included for an adapter; missing packages are skipped."""
    packages = ["trl-empg", "trl", "transformers", "torch"] + (["peft"] if adapter else [])
    versions = []
    for package in packages:
        try:
            versions.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            continue
    return versions
