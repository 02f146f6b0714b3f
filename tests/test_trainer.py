"""EMPGTrainer on a tiny self-built Qwen2: single-turn rewards, TRL tool environments, entropy sources, GRPO parity."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from transformers import Qwen2Tokenizer
from trl import GRPOTrainer

from trl_empg import EMPGConfig, EMPGTrainer
from trl_empg.segmentation import step_ids_from_mask
from trl_empg.workflows.tiny import build_tiny_model, build_tokenizer


def _config(tmp_path, **overrides) -> EMPGConfig:
    values = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=12,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    )
    values.update(overrides)
    return EMPGConfig(**values)


def _prompts(n: int = 8) -> Dataset:
    return Dataset.from_dict({"prompt": [f"What is the sum of two and {i}?" for i in range(n)]})


def length_reward(completions, **kwargs):
    return [float(len(c)) / 10.0 for c in completions]


def _logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_single_turn_trains_with_metrics(tmp_path, tiny_model, tiny_tokenizer):
    trainer = EMPGTrainer(
        tiny_model, length_reward, _config(tmp_path), train_dataset=_prompts(), processing_class=tiny_tokenizer
    )
    assert trainer.entropy_source == "generation"
    trainer.train()
    losses = _logged(trainer, "loss")
    assert losses and all(math.isfinite(x) for x in losses)
    for key in ("empg/step_entropy/mean", "empg/g/mean", "empg/frac_g_above_1", "empg/bonus/mean"):
        assert _logged(trainer, key), key
    assert _logged(trainer, "empg/g/mean")[0] == pytest.approx(1.0, abs=1e-6)
    # One step per single-turn completion (every completion has at least one token).
    assert _logged(trainer, "empg/steps_per_episode")[0] == pytest.approx(1.0)
    assert _logged(trainer, "empg/entropy_source/generation")[0] == 1.0


def _captured_batch(trainer):
    """One generation batch through the trainer: its output dict and the model-token mask."""
    trainer.model.train()
    batch = [dict(row) for row in trainer.train_dataset.select(range(trainer.args.generation_batch_size))]
    output = trainer._generate_and_score_completions(batch)
    mask = output["completion_mask"] * output.get("tool_mask", 1)
    return output, mask


def _trl_entropies(trainer, output):
    input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    with torch.no_grad():
        _, entropies, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            trainer, trainer.model, input_ids, attention, output["completion_ids"].size(1), compute_entropy=True
        )
    return entropies


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generation_entropies_equal_trl_entropies(tmp_path, tiny_model, tiny_tokenizer, temperature):
    trainer = EMPGTrainer(
        tiny_model,
        length_reward,
        _config(tmp_path, temperature=temperature, top_k=5, top_p=0.9),
        train_dataset=_prompts(),
        processing_class=tiny_tokenizer,
    )
    trainer._generation_entropies.clear()
    trainer._current_inputs = []
    output = GRPOTrainer._generate_and_score_completions(
        trainer, [dict(r) for r in trainer.train_dataset.select(range(4))]
    )
    mask = output["completion_mask"]
    recorded = trainer._recorded_entropies(output, mask)
    reference = _trl_entropies(trainer, output)
    assert recorded is not None and mask.sum() > 0
    torch.testing.assert_close(recorded[mask.bool()], reference[mask.bool()], atol=1e-4, rtol=0)


def test_old_logps_source_reuses_trl_pass(tmp_path, tiny_model, tiny_tokenizer):
    # steps_per_generation=2 with one accumulation step: TRL runs its old-log-prob pass.
    config = _config(tmp_path, entropy_source="old_logps", steps_per_generation=2, per_device_train_batch_size=2)
    trainer = EMPGTrainer(tiny_model, length_reward, config, train_dataset=_prompts(), processing_class=tiny_tokenizer)
    assert trainer.entropy_source == "old_logps"
    calls = []
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def counting(self, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return original(self, *args, **kwargs)

    GRPOTrainer._get_per_token_logps_and_entropies = counting
    try:
        output, mask = _captured_batch(trainer)
    finally:
        GRPOTrainer._get_per_token_logps_and_entropies = original
    assert calls == [False], "exactly one no-grad pass (TRL's own old-log-prob pass), no extra one"
    assert trainer._old_pass_entropies is not None
    torch.testing.assert_close(trainer._old_pass_entropies, _trl_entropies(trainer, output))
    assert output["advantages"].shape == output["completion_ids"].shape


def test_forward_source_and_auto_resolution(tmp_path, tiny_model, tiny_tokenizer):
    trainer = EMPGTrainer(
        tiny_model,
        length_reward,
        _config(tmp_path, entropy_source="forward"),
        train_dataset=_prompts(),
        processing_class=tiny_tokenizer,
    )
    output, mask = _captured_batch(trainer)
    assert trainer._metrics["train"]["empg/entropy_source/forward"][-1] == 1.0
    assert output["advantages"].dim() == 2
    with pytest.raises(ValueError, match="old-log-prob pass"):
        EMPGTrainer(
            tiny_model,
            length_reward,
            _config(tmp_path, entropy_source="old_logps"),
            train_dataset=_prompts(),
            processing_class=tiny_tokenizer,
        )


def test_token_advantages_follow_steps(tmp_path, tiny_model, tiny_tokenizer):
    trainer = EMPGTrainer(
        tiny_model, length_reward, _config(tmp_path), train_dataset=_prompts(), processing_class=tiny_tokenizer
    )
    output, mask = _captured_batch(trainer)
    advantages = output["advantages"]
    assert advantages.shape == mask.shape
    assert torch.all(advantages[~mask.bool()] == 0)
    # Single-turn: one step per row, so each row's advantage is constant on its tokens, and centered over steps.
    per_row = [advantages[i][mask[i].bool()] for i in range(mask.size(0)) if mask[i].any()]
    assert all(torch.allclose(r, r[0].expand_as(r)) for r in per_row)
    assert sum(r[0].item() for r in per_row) == pytest.approx(0.0, abs=1e-5)


def _loss_and_grads(trainer_cls, args, tokenizer):
    model = build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2, seed=1)
    trainer = trainer_cls(model, length_reward, args, train_dataset=_prompts(), processing_class=tokenizer)
    torch.manual_seed(123)
    batch = [dict(row) for row in trainer.train_dataset.select(range(4))]
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test bypasses
    inputs = trainer._generate_and_score_completions(batch)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    return inputs, loss.detach(), grads


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_k0_zeta0_no_center_reproduces_grpo_exactly(tmp_path, tiny_tokenizer, loss_type):
    from trl import GRPOConfig

    empg_args = _config(tmp_path, empg_k=0.0, empg_zeta=0.0, empg_center=False, loss_type=loss_type)
    grpo_fields = {
        name: getattr(empg_args, name)
        for name in (
            "output_dir",
            "use_cpu",
            "bf16",
            "num_generations",
            "per_device_train_batch_size",
            "max_completion_length",
            "learning_rate",
            "report_to",
            "seed",
            "temperature",
            "top_k",
            "top_p",
            "loss_type",
            "activation_checkpointing",
        )
    }
    empg_inputs, empg_loss, empg_grads = _loss_and_grads(EMPGTrainer, empg_args, tiny_tokenizer)
    grpo_inputs, grpo_loss, grpo_grads = _loss_and_grads(GRPOTrainer, GRPOConfig(**grpo_fields), tiny_tokenizer)
    torch.testing.assert_close(empg_inputs["completion_ids"], grpo_inputs["completion_ids"])
    mask = empg_inputs["completion_mask"].bool()
    expanded = grpo_inputs["advantages"].unsqueeze(1).expand_as(mask)
    torch.testing.assert_close(empg_inputs["advantages"][mask], expanded[mask])
    assert empg_loss.item() == grpo_loss.item()
    torch.testing.assert_close(empg_grads, grpo_grads, atol=0, rtol=0)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"empg_k": -1.0}, "empg_k"),
        ({"empg_zeta": -0.1}, "empg_zeta"),
        ({"empg_k_future": -2.0}, "empg_k_future"),
        ({"modulation": "magic"}, "modulation"),
        ({"entropy_source": "psychic"}, "entropy_source"),
        ({"empg_eps": 0.0}, "empg_eps"),
        ({"env_kwargs": "{not json"}, "env_kwargs"),
    ],
)
def test_bad_config_values_raise(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, **overrides)


def test_activation_checkpointing_defaults_on_without_the_alias_warning(tmp_path, recwarn):
    assert _config(tmp_path).activation_checkpointing is True  # TRL's GRPOConfig default, kept
    assert not [w for w in recwarn if "checkpointing" in str(w.message)]
    assert _config(tmp_path, activation_checkpointing=False).activation_checkpointing is False


def test_no_grad_passes_turn_activation_checkpointing_off_and_back_on(tmp_path, tiny_model, tiny_tokenizer, recwarn):
    trainer = EMPGTrainer(
        tiny_model, length_reward, _config(tmp_path), train_dataset=_prompts(), processing_class=tiny_tokenizer
    )
    trainer.model.activation_checkpointing_enable({"use_reentrant": False})
    with trainer._without_activation_checkpointing():
        assert not trainer.model.is_activation_checkpointing
    assert trainer.model.is_activation_checkpointing
    trainer.model.activation_checkpointing_disable()
    with trainer._without_activation_checkpointing():  # off stays off
        assert not trainer.model.is_activation_checkpointing
    assert not trainer.model.is_activation_checkpointing
    assert not [w for w in recwarn if "checkpointing" in str(w.message)]


def test_the_deprecated_gradient_checkpointing_name_still_decides(tmp_path):
    """An explicit old name is honoured (not overridden by the new name's default) and warned about by transformers."""
    with pytest.warns(FutureWarning, match="`gradient_checkpointing` is deprecated"):
        config = _config(tmp_path, gradient_checkpointing=False)
    assert config.activation_checkpointing is False and config.gradient_checkpointing is False


# ---------------------------------------------------------------------------------------------------------------------
# TRL environment_factory (tool calling): each assistant turn is a step
# ---------------------------------------------------------------------------------------------------------------------


class MultiplyEnv:
    def reset(self, **kwargs) -> str | None:
        self.calls = 0
        return None

    def multiply(self, a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first integer.
            b: The second integer.

        Returns:
            The product of a and b.
        """
        self.calls += 1
        return a * b

    def get_reward(self) -> float:
        return float(self.calls > 0)


def _tool_conversation(a: int, b: int) -> list[dict]:
    call = {"type": "function", "function": {"name": "multiply", "arguments": {"a": a, "b": b}}}
    return [
        {"role": "user", "content": f"Multiply {a} and {b}."},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "multiply", "content": str(a * b)},
        {"role": "assistant", "content": f"The result is {a * b}."},
    ]


@pytest.fixture(scope="module")
def tool_agent():
    """A tiny agent taught (by a short supervised warm start) to call the multiply tool."""
    from transformers.utils import get_json_schema

    schema = [get_json_schema(MultiplyEnv.multiply)]
    renderer = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[])
    from trl.chat_template_utils import qwen2_5_chat_template

    conversations = [_tool_conversation(a, b) for a in range(2, 10) for b in range(2, 10)]
    texts = [
        renderer.apply_chat_template(c, tools=schema, chat_template=qwen2_5_chat_template, tokenize=False)
        for c in conversations
    ]
    tokenizer = build_tokenizer(texts, vocab_size=600)
    model = build_tiny_model(tokenizer, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    encoded = [tokenizer.apply_chat_template(c, tools=schema, tokenize=True, return_dict=False) for c in conversations]
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(80):
        idx = torch.randint(len(encoded), (8,), generator=generator).tolist()
        batch = [torch.tensor(encoded[i]) for i in idx]
        ids = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=tokenizer.pad_token_id)
        labels = ids.masked_fill(ids == tokenizer.pad_token_id, -100)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, tokenizer


def test_environment_factory_tool_turns_are_steps(tmp_path, tool_agent):
    model, tokenizer = tool_agent
    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": f"Multiply {a} and {a + 1}."}] for a in range(2, 10)]}
    )
    config = _config(tmp_path, max_completion_length=96, temperature=0.7, max_steps=1)
    trainer = EMPGTrainer(
        model, None, config, train_dataset=dataset, processing_class=tokenizer, environment_factory=MultiplyEnv
    )
    output, mask = _captured_batch(trainer)
    assert "tool_mask" in output, "the warm-started agent should call the tool"
    steps = step_ids_from_mask(mask)
    multi_step_rows = [i for i in range(mask.size(0)) if steps[i].max() >= 1]
    assert multi_step_rows, "at least one completion has a tool call followed by a second assistant turn"
    advantages = output["advantages"]
    for i in multi_step_rows:
        for s in range(int(steps[i].max()) + 1):
            values = advantages[i][steps[i] == s]
            assert torch.allclose(values, values[0].expand_as(values))  # one advantage per step
    assert torch.all(advantages[~mask.bool()] == 0)
    trainer.train()
    assert all(math.isfinite(x) for x in _logged(trainer, "loss"))
    assert _logged(trainer, "empg/steps_per_episode")[0] > 1.0


def test_tool_turn_entropies_equal_trl_entropies(tmp_path, tool_agent):
    model, tokenizer = tool_agent
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": "Multiply 3 and 7."}]] * 4})
    config = _config(tmp_path, max_completion_length=96, temperature=0.7)
    trainer = EMPGTrainer(
        model, None, config, train_dataset=dataset, processing_class=tokenizer, environment_factory=MultiplyEnv
    )
    trainer._generation_entropies.clear()
    trainer._current_inputs = []
    trainer.model.train()
    output = GRPOTrainer._generate_and_score_completions(trainer, [dict(r) for r in dataset])
    mask = output["completion_mask"] * output["tool_mask"]
    assert (mask == 0).logical_and(output["completion_mask"] == 1).any(), "some tool-result tokens are present"
    recorded = trainer._recorded_entropies(output, mask)
    reference = _trl_entropies(trainer, output)
    assert recorded is not None
    torch.testing.assert_close(recorded[mask.bool()], reference[mask.bool()], atol=1e-4, rtol=0)
