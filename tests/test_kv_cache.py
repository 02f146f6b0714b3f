"""KV-cache reuse across turns gives the re-encode path's results: tokens, entropies, endings, branches, training."""

from __future__ import annotations

import os
import random
import signal

import pytest
import torch

from golden_episodes import AEPO_CASE, CASES, ensure_agent
from trl_empg.envs.pool import EnvPool
from trl_empg.rollout import AgentPrompts, RolloutArguments, iter_episodes, run_episodes
from trl_empg.rollout.branching import AEPORolloutSettings, run_aepo_episodes
from trl_empg.rollout.kv_cache import TurnCache
from trl_empg.rollout.policy import HFPolicy, SamplingSettings

pytest.importorskip("textworld_express")

GREEDY = SamplingSettings(do_sample=False)


@pytest.fixture(scope="module")
def golden():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(ensure_agent())
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def policies(model, tokenizer, sampling=GREEDY) -> tuple[HFPolicy, HFPolicy]:
    return HFPolicy(model, tokenizer, sampling, reuse_kv_cache=False), HFPolicy(model, tokenizer, sampling)


def assert_same_episodes(plain, reused) -> None:
    assert len(plain) == len(reused)
    for a, b in zip(plain, reused):
        assert b.completion_ids == a.completion_ids
        assert (b.env_mask, b.step_ids, b.actions, b.messages) == (a.env_mask, a.step_ids, a.actions, a.messages)
        assert (b.reward, b.won, b.num_turns, b.end_reason) == (a.reward, a.won, a.num_turns, a.end_reason)
        assert (a.entropies is None) == (b.entropies is None)
        if a.entropies is not None:
            assert b.entropies == pytest.approx(a.entropies, abs=1e-4)


def test_rows_of_different_lengths_continue_from_their_cached_prefixes(golden):
    plain, reused = policies(*golden)
    vocab = len(golden[1])
    rng = random.Random(0)
    prompts = [[rng.randrange(5, vocab) for _ in range(n)] for n in (7, 12, 3)]
    replies, first_entropies = plain(prompts, 6)
    replies_reused, entropies_reused = reused(prompts, 6)
    assert replies_reused == replies
    for a, b in zip(first_entropies, entropies_reused):
        assert b == pytest.approx(a, abs=1e-5)
    assert reused.kv_cache.stats["reused_tokens"] == 0 and len(reused.kv_cache.rows) == 3
    # Next call: row 0 keeps only part of its reply (a turn limit), row 1 has ended, row 2 keeps its whole reply; a
    # branch of row 0 forks mid-prompt, and a fresh prompt shares nothing.
    follow = [
        prompts[0] + replies[0][:3] + [11, 12, 13],
        prompts[2] + replies[2] + [14],
        prompts[0][:5] + [15, 16],
        [rng.randrange(5, vocab) for _ in range(9)],
    ]
    ids, entropies = plain(follow, 5)
    ids_reused, entropies_reused = reused(follow, 5)
    assert ids_reused == ids
    for a, b in zip(entropies, entropies_reused):
        assert b == pytest.approx(a, abs=1e-5)
    # Each row reused at least its cached prompt (the branch: the 5 tokens it shares); the ended row was dropped.
    stats, cache = reused.kv_cache.stats, reused.kv_cache
    assert stats["reused_tokens"] >= len(prompts[0]) + 3 + len(prompts[2]) + 5
    assert stats["prefilled_tokens"] == sum(map(len, prompts)) + sum(map(len, follow)) - stats["reused_tokens"]
    assert len(cache.rows) == 4 and all(row[: len(f)] == f for row, f in zip(cache.rows, follow))
    # Sampling: the same random stream gives the same draws.
    plain, reused = policies(*golden, SamplingSettings(temperature=1.0))
    for policy in (plain, reused):
        torch.manual_seed(3)
        policy(prompts, 4)
    torch.manual_seed(4)
    sampled = plain(follow, 6)
    torch.manual_seed(4)
    assert reused(follow, 6)[0] == sampled[0]
    assert reused.kv_cache.stats["reused_tokens"] > 0


def test_a_weight_change_drops_the_cache(golden):
    _, reused = policies(*golden)
    reused([[5, 6, 7, 8]], 3)
    with torch.no_grad():
        next(golden[0].parameters()).mul_(1.0)  # an in-place update, like an optimizer step
    reused([[5, 6, 7, 8, 9, 10]], 3)
    assert reused.kv_cache.stats["reused_tokens"] == 0
    cache = TurnCache()
    assert cache.cache is None and cache.rows == []


@pytest.mark.parametrize("case", [CASES[0], CASES[1]], ids=lambda case: case[0])
def test_episodes_match_the_re_encode_path(golden, case):
    name, env_id, env_kwargs, style, seeds, max_turns, turn_tokens, budget = case
    settings = RolloutArguments(
        max_turns=max_turns, max_turn_tokens=turn_tokens, max_completion_length=budget, prompt_style=style
    )
    prompts = AgentPrompts(style, True, "Find the coin.")
    played = {}
    plain, reused = policies(*golden)
    with EnvPool(env_id, env_kwargs) as pool:
        for policy in (plain, reused):
            played[policy is reused] = run_episodes(
                pool, [(seed, "test") for seed in seeds], policy.tokenizer, policy, settings, prompts
            )
    assert_same_episodes(played[False], played[True])
    assert reused.kv_cache.stats["reused_tokens"] > 0
    assert reused.kv_cache.cache is None  # freed when the rollout ended
    if name == "coin-plain":  # episodes end at different turns (budget, env, failed reset) while others go on
        assert len({e.num_turns for e in played[True]}) > 1
        assert reused.kv_cache.stats["reused_tokens"] > reused.kv_cache.stats["prefilled_tokens"]


def test_aepo_branching_matches_the_re_encode_path(golden):
    _, env_id, style, seeds, group, max_turns = AEPO_CASE
    settings = RolloutArguments(max_turns=max_turns, max_turn_tokens=8, max_completion_length=400, prompt_style=style)
    results = []
    plain, reused = policies(*golden)
    with EnvPool(env_id, {}) as pool:
        for policy in (plain, reused):
            results.append(
                run_aepo_episodes(
                    pool,
                    [(seed, "test") for seed in seeds],
                    group,
                    policy.tokenizer,
                    policy,
                    settings,
                    AEPORolloutSettings(alpha=None, tau=0.45, gamma=2.0),
                    prompts=AgentPrompts(style, True, ""),
                    rng=random.Random(3),
                )
            )
    (plain_episodes, plain_stats), (reused_episodes, reused_stats) = results
    assert [(o.kind, o.parent, o.turn) for o in reused_stats.origins] == [
        (o.kind, o.parent, o.turn) for o in plain_stats.origins
    ]
    assert any(o.kind == "branch" for o in reused_stats.origins)
    assert_same_episodes(plain_episodes, reused_episodes)
    assert reused.kv_cache.stats["reused_tokens"] > 0 and reused.kv_cache.cache is None


def test_a_worker_restart_and_replay_mid_rollout_changes_nothing(golden):
    settings = RolloutArguments(max_turns=3, max_turn_tokens=8, max_completion_length=600, prompt_style="plain")
    prompts = AgentPrompts("plain", True, "Find the coin.")
    tasks = [(seed, "test") for seed in (20000, 20001, 20002)]
    played = []
    for policy in policies(*golden):
        with EnvPool("twx:coin", num_workers=2) as pool:
            turns = iter_episodes(pool, tasks, policy.tokenizer, policy, settings, prompts)
            next(turns)
            worker = pool._workers[0]
            assert worker is not None
            os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait()
            while True:
                try:
                    next(turns)
                except StopIteration as finished:
                    played.append(finished.value)
                    break
            assert pool.num_errors == 0
    assert_same_episodes(*played)


# ---------------------------------------------------------------------------------------------------------------------
# Training: TRL's generation path with the cache patched in


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory):
    from trl_empg.workflows.tiny import build_tiny_agent

    # Width 64 keeps every linear layer a multiple of bitsandbytes' 64-value quantization block.
    return build_tiny_agent(
        "twx:coin",
        tmp_path_factory.mktemp("agent"),
        num_tasks=10,
        vocab_size=500,
        hidden_size=64,
        intermediate_size=128,
    )


def _train_one_step(tmp_path, agent_dir, variant: str, reuse: bool, monkeypatch) -> dict:
    from trl_empg import EMPGConfig, EMPGTrainer
    from trl_empg.training.env_rollout import EnvRollout

    seen: dict = {"stats": []}
    monkeypatch.undo()  # the previous run's recorders
    to_trl, release = EnvRollout._to_trl, TurnCache.release

    def recording_to_trl(self, trainer, episodes, logprobs):
        seen["episodes"] = [(list(e.completion_ids), list(e.entropies)) for e in episodes]
        return to_trl(self, trainer, episodes, logprobs)

    def recording_release(self):
        seen["stats"].append(dict(self.stats))
        release(self)

    monkeypatch.setattr(EnvRollout, "_to_trl", recording_to_trl)
    monkeypatch.setattr(TurnCache, "release", recording_release)
    config = EMPGConfig(
        output_dir=str(tmp_path / f"{variant}-{reuse}"),
        use_cpu=True,
        bf16=False,
        env_id="twx:coin",
        env_num_tasks=2,
        max_turns=2,
        max_turn_tokens=8,
        max_completion_length=160,
        prompt_style="plain",
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=1,
        learning_rate=1e-3,
        beta=0.0,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        top_k=0,
        top_p=1.0,
        activation_checkpointing=True,
        reuse_kv_cache=reuse,
    )
    kwargs: dict = {}
    if variant in ("lora", "qlora"):
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    if variant == "qlora":
        pytest.importorskip("bitsandbytes")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    trainer = EMPGTrainer(str(agent_dir), args=config, **kwargs)
    trainer.train()
    seen["loss"] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    seen["activation_checkpointing"] = trainer.accelerator.unwrap_model(trainer.model).is_activation_checkpointing
    return seen


@pytest.mark.parametrize("variant", ["full", pytest.param("lora", marks=pytest.mark.slow), "qlora"])
def test_a_training_step_samples_the_same_tokens_with_and_without_reuse(tmp_path, agent_dir, variant, monkeypatch):
    plain = _train_one_step(tmp_path, agent_dir, variant, False, monkeypatch)
    reused = _train_one_step(tmp_path, agent_dir, variant, True, monkeypatch)
    assert plain["stats"] == [] and len(reused["stats"]) == 1  # one cache for the rollout, freed at its end
    assert reused["stats"][0]["reused_tokens"] > 0
    assert reused["activation_checkpointing"]  # turned back on after generation
    assert [ids for ids, _ in reused["episodes"]] == [ids for ids, _ in plain["episodes"]]
    for (_, a), (_, b) in zip(plain["episodes"], reused["episodes"]):
        assert b == pytest.approx(a, abs=1e-4)
    assert reused["loss"] == pytest.approx(plain["loss"], rel=1e-4, abs=1e-6)
