"""EMPG's cost over plain GRPO: training-step time and peak memory, measured side by side.

Every configuration trains the same model (a locally initialised Qwen2 of a preset shape, or a pretrained folder:
``--model PATH`` / ``--preset smollm2``) on the same prompts with fixed-length completions (``min_new_tokens =
max_new_tokens``) and the same seed, so GRPO and EMPG do identical generation and loss work and differ only by what
EMPG adds. Each configuration trains in its own worker process, so each has its own peak memory.

Schedules. ``--schedule lockstep`` (the default): all workers start together and the parent lets exactly one of
them run one training step at a time, in rounds; a round is one step of every configuration, in an order that
reverses every round (ABBA), so the steps compared within a round run seconds apart and a change of the machine's
load hits both. Each worker trains ``--warmup`` untimed steps then ``--rounds x --steps`` timed ones (as many as the
other schedule times). ``--schedule runs`` is the older scheme: whole runs one after the other after one untimed
run, a round there is one run of every configuration; its rounds are minutes long and on a shared machine the load
can change 2x between the two runs of one round (benchmarks/results/overhead_cpu_rerun.json: GRPO's run medians
1.20 s and 2.55 s, round ratios 1.51x and 0.92x).

Per step each worker records wall time (perf_counter) and its own CPU time (process_time: user + system time of all
its threads); other processes on the machine inflate the first by the time they hold the core, the second only by
what they do to caches and memory bandwidth. Reported per configuration: median step wall and CPU time and peak
resident memory (CPU) or peak allocated CUDA memory (GPU); per EMPG variant against the GRPO baseline with the same
entropy-relevant settings: the ratio of the medians and the ratio in every round (median, quartiles, range), for
wall and CPU time, the memory ratio, and the share of rounds whose two steps scored identical completions (a hash
of them; identical from the first step, they part once the two policies' different updates change a sample).

    python benchmarks/overhead.py --rounds 3 --steps 12 --warmup 2                # CPU, ~3M-parameter Qwen2, fp32
    python benchmarks/overhead.py --preset smollm2 --configs grpo empg_generation empg_forward \\
        --rounds 1 --steps 12 --warmup 1 --output benchmarks/results/overhead_smollm2_bf16.json
                                                          # SmolLM2-135M-Instruct (runs/...-bf16), bf16, LoRA
    python benchmarks/overhead.py --preset qwen2.5-0.5b --device cuda              # GPU, Qwen2.5-0.5B shape
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "@@overhead"

PRESETS = {
    # For the smoke test only: seconds per run, numbers meaningless.
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=300,
    ),
    # ~3M parameters: big enough that the model, not Python overhead, dominates a CPU step.
    "cpu-small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=688,
        vocab_size=2048,
    ),
    # Qwen2.5-1.5B's shape (randomly initialised): the GPU check (benchmarks/gpu_check.sh).
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        vocab_size=151936,
    ),
    # Qwen2.5-0.5B's shape (randomly initialised: no weights are downloaded).
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
    ),
}


# Pretrained models: weights from a folder, with the run settings that make sense for them. SmolLM2-135M-Instruct is
# this project's CPU stand-in for a real model (`trl-empg convert-gguf --output_dir runs/smollm2-135m-instruct-bf16`
# makes the folder); it trains with LoRA as its recipes do (recipes/smollm2/*.yaml: r 16 on every projection, bf16
# weights and autocast): the cost measured is then the one those recipes pay, and the fixed part of a step (full
# optimizer state and gradients of 135M parameters) does not dilute EMPG's share. `--finetune full` measures full
# fine-tuning instead. Short prompts and completions keep a step at a few seconds on one CPU thread.
MODEL_PRESETS = {
    "smollm2": dict(
        model="runs/smollm2-135m-instruct-bf16",
        dtype="bfloat16",
        finetune="lora",
        completion_length=16,
        prompt_words=12,
    ),
}
# Defaults of the options a model preset may set (the shape presets use these).
DEFAULTS = dict(model=None, dtype=None, finetune="full", completion_length=64, prompt_words=32)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name -> (trainer, EMPGConfig overrides). Each EMPG variant is compared with the GRPO baseline of the same
# generation/accumulation settings, because those settings change what TRL itself computes.
CONFIGS = {
    "grpo": ("grpo", {}),
    "empg_generation": ("empg", {"entropy_source": "generation"}),
    "empg_forward": ("empg", {"entropy_source": "forward"}),
    "grpo_old_logps_pass": ("grpo", {"steps_per_generation": 2}),
    "empg_old_logps": ("empg", {"entropy_source": "old_logps", "steps_per_generation": 2}),
}
BASELINE = {"empg_generation": "grpo", "empg_forward": "grpo", "empg_old_logps": "grpo_old_logps_pass"}
# The options a worker needs, passed through from the parent's command line.
WORKER_OPTIONS = [
    "preset",
    "device",
    "model",
    "dtype",
    "finetune",
    "lora_r",
    "rounds",
    "steps",
    "warmup",
    "batch_size",
    "num_generations",
    "completion_length",
    "prompt_words",
    "learning_rate",
]


def _say(kind: str, payload: dict) -> None:
    """One message to the parent: a marked line on stdout (the trainer's own log lines are skipped by the parent)."""
    print(f"{MARK} {kind} {json.dumps(payload)}", flush=True)


def _load_model(args: argparse.Namespace):
    """The model and tokenizer every configuration trains: pretrained from ``--model`` or a preset shape."""
    import torch

    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype or torch.float32)
        return model, tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trl_empg.workflows.tiny import build_tokenizer

    shape = dict(PRESETS[args.preset])
    vocab_size = shape.pop("vocab_size")
    words = [f"w{i}" for i in range(4000)]
    tokenizer = build_tokenizer([" ".join(words[i : i + 50]) for i in range(0, 4000, 50)], vocab_size=vocab_size)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            max_position_embeddings=4096,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
            **shape,
        )
    )
    if dtype is not None:
        model = model.to(dtype)
    return model, tokenizer


def _worker(config_name: str, args: argparse.Namespace) -> dict:
    """Train one configuration, report every step (and, in lockstep, wait for the parent's go before each)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trl_empg import EMPGConfig, EMPGTrainer

    kind, overrides = CONFIGS[config_name]
    model, tokenizer = _load_model(args)
    on_cpu = args.device == "cpu"
    total_steps = args.warmup + (args.rounds * args.steps if args.lockstep else args.steps)
    common = dict(
        output_dir=tempfile.mkdtemp(),
        use_cpu=on_cpu,
        # Without --dtype: fp32 on the CPU, bf16 autocast on the GPU (as before the option existed).
        bf16=args.dtype == "bfloat16" if args.dtype else not on_cpu,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_steps=total_steps,
        per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.completion_length,
        learning_rate=args.learning_rate,
        generation_kwargs={"min_new_tokens": args.completion_length},
        seed=0,
        top_k=0,
        top_p=1.0,
        beta=0.0,
        activation_checkpointing=True,  # TRL's default, by transformers 5's name (the old one warns)
        **{k: v for k, v in overrides.items() if k != "entropy_source"},
    )
    words = [f"w{i}" for i in range(4000)]
    dataset = Dataset.from_dict({"prompt": [" ".join(words[i : i + args.prompt_words]) for i in range(512)]})
    seen: list[str] = []  # the completions scored during the current step

    def reward(completions, **kwargs):
        seen.extend(str(c) for c in completions)
        return [float(len(str(c)) % 7) for c in completions]

    steps: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if args.lockstep:
                _say("READY", {"step": len(steps)})
                if sys.stdin.readline().strip() != "go":
                    raise SystemExit("overhead worker: the parent went away")
            seen.clear()
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
            digest = hashlib.sha256("\x00".join(seen).encode()).hexdigest()[:16] if seen else None
            steps.append({"wall_s": wall, "cpu_s": cpu, "rollout": digest})
            _say("STEP", steps[-1])

    peft_config = None
    if args.finetune == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            task_type="CAUSAL_LM",
        )
    shared = dict(train_dataset=dataset, processing_class=tokenizer, callbacks=[StepTimer()], peft_config=peft_config)
    if kind == "grpo":
        trainer = GRPOTrainer(model, reward, args=GRPOConfig(**common), **shared)
    else:
        config = EMPGConfig(**common, entropy_source=overrides["entropy_source"])
        trainer = EMPGTrainer(model, reward, args=config, **shared)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timed = steps[args.warmup :]
    return {
        "config": config_name,
        "step_times": [s["wall_s"] for s in timed],
        "step_cpu_times": [s["cpu_s"] for s in timed],
        "rollouts": [s["rollout"] for s in timed],
        "peak_mib": peak,
        "entropy_source": getattr(trainer, "entropy_source", None),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "weight_dtype": str(next(trainer.model.parameters()).dtype),
        "torch_threads": torch.get_num_threads(),
    }


class _Worker:
    """One configuration's worker process, spoken to through its stdin (go) and marked stdout lines."""

    def __init__(self, name: str, args: argparse.Namespace, lockstep: bool) -> None:
        self.name, self.timeout = name, args.worker_timeout
        command = [sys.executable, __file__, "--worker", name, *args.passthrough]
        if lockstep:
            command.append("--lockstep")
        env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env
        )
        self.buffer = b""

    def go(self) -> None:
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def expect(self, *kinds: str) -> tuple[str, dict]:
        """The next marked message of one of these kinds (others are skipped)."""
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if line.startswith(MARK.encode() + b" "):
                    _, kind, payload = line.decode().split(" ", 2)
                    if kind in kinds:
                        return kind, json.loads(payload)
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail(f"sent no {'/'.join(kinds)} within {self.timeout} s")
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 1 << 16)
                if not chunk:
                    self.fail(f"exited with status {self.process.wait()} before {'/'.join(kinds)}")
                self.buffer += chunk

    def fail(self, why: str) -> None:
        self.close()
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace")[-4000:]
        raise RuntimeError(f"worker {self.name} {why}:\n{tail}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _run_worker(config_name: str, args: argparse.Namespace) -> dict:
    """A whole run of one configuration (the ``runs`` schedule)."""
    worker = _Worker(config_name, args, lockstep=False)
    try:
        _, result = worker.expect("DONE")
        worker.process.wait(timeout=60)
        return result
    finally:
        worker.close()


def _load() -> float:
    return os.getloadavg()[0]


def _schedule_runs(args: argparse.Namespace) -> tuple[dict[str, list[dict]], list[dict]]:
    """Whole runs one after the other, ABBA by round, one untimed run first; a round's value is a run's median."""
    runs: dict[str, list[dict]] = {name: [] for name in args.configs}
    # The first process of a session pays for cold caches (shared libraries, bytecode, allocator): measured here as
    # GRPO at ~1.0 s a step against EMPG's ~0.79 s when GRPO ran first. One untimed run takes that cost for nobody.
    _run_worker(args.configs[0], args)
    rounds = []
    for round_index in range(args.rounds):
        order = args.configs if round_index % 2 == 0 else list(reversed(args.configs))
        record = {"round": round_index, "order": order, "load_1min": _load(), "steps": {}}
        for name in order:
            result = _run_worker(name, args)
            runs[name].append(result)
            record["steps"][name] = {
                "wall_s": statistics.median(result["step_times"]),
                "cpu_s": statistics.median(result["step_cpu_times"]),
                "rollout": None,
            }
            print(f"round {round_index} {name}: median step {record['steps'][name]['wall_s']:.3f}s", flush=True)
        rounds.append(record)
    return runs, rounds


def _schedule_lockstep(args: argparse.Namespace) -> tuple[dict[str, list[dict]], list[dict]]:
    """All workers alive at once, one step of one of them at a time; a round is one step of each (ABBA order)."""
    workers = {}
    try:
        for name in args.configs:
            workers[name] = _Worker(name, args, lockstep=True)
        for worker in workers.values():
            worker.expect("READY")  # loading and trainer set-up, concurrent and untimed
        total = args.warmup + args.rounds * args.steps
        rounds, results = [], {}
        for index in range(total):
            order = args.configs if index % 2 == 0 else list(reversed(args.configs))
            record = {"round": index - args.warmup, "order": order, "load_1min": _load(), "steps": {}}
            for name in order:
                workers[name].go()
                record["steps"][name] = workers[name].expect("STEP")[1]
                # Wait until the worker is idle again (its logging done) before the next one starts.
                kind, payload = workers[name].expect("READY", "DONE")
                if kind == "DONE":
                    results[name] = [payload]
            if index >= args.warmup:
                rounds.append(record)
            line = " ".join(f"{name} {record['steps'][name]['wall_s']:.3f}s" for name in args.configs)
            print(f"{'warm-up' if index < args.warmup else 'round'} {record['round']}: {line}", flush=True)
        for worker in workers.values():
            worker.process.wait(timeout=120)
    finally:
        for worker in workers.values():
            worker.close()
    return {name: results[name] for name in args.configs}, rounds


def _spread(values: list[float]) -> dict:
    """Median, quartiles, range and a bootstrap 95% interval of the median (seeded) of the per-round ratios."""
    quartiles = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    draw = random.Random(0)
    medians = sorted(statistics.median(draw.choices(values, k=len(values))) for _ in range(2000))
    return {
        "median": statistics.median(values),
        "median_ci95": [medians[49], medians[1949]],
        "quartiles": [quartiles[0], quartiles[2]],
        "range": [min(values), max(values)],
    }


def _summarise(runs: dict[str, list[dict]], rounds: list[dict]) -> dict:
    summary = {}
    for name, results in runs.items():
        times = [t for r in results for t in r["step_times"]]
        cpu_times = [t for r in results for t in r["step_cpu_times"]]
        summary[name] = {
            "median_step_s": statistics.median(times),
            "median_step_cpu_s": statistics.median(cpu_times),
            "peak_mib": statistics.median(r["peak_mib"] for r in results),
            "steps_timed": len(times),
            "entropy_source": results[0]["entropy_source"],
            # The value of every round: a step (lockstep) or a run's median step (runs).
            "run_median_step_s": [record["steps"][name]["wall_s"] for record in rounds],
            "round_step_cpu_s": [record["steps"][name]["cpu_s"] for record in rounds],
        }
    for name, baseline in BASELINE.items():
        if name not in summary or baseline not in summary:
            continue
        row, base = summary[name], summary[baseline]
        row["time_ratio_vs_" + baseline] = row["median_step_s"] / base["median_step_s"]
        per_round = [mine / theirs for mine, theirs in zip(row["run_median_step_s"], base["run_median_step_s"])]
        row["time_ratio_per_round"] = per_round
        row["time_ratio_range"] = [min(per_round), max(per_round)]
        row["time_ratio_round_spread"] = _spread(per_round)
        row["cpu_time_ratio_vs_" + baseline] = row["median_step_cpu_s"] / base["median_step_cpu_s"]
        cpu_per_round = [mine / theirs for mine, theirs in zip(row["round_step_cpu_s"], base["round_step_cpu_s"])]
        row["cpu_time_ratio_per_round"] = cpu_per_round
        row["cpu_time_ratio_round_spread"] = _spread(cpu_per_round)
        row["memory_ratio_vs_" + baseline] = row["peak_mib"] / base["peak_mib"]
        pairs = [(r["steps"][name]["rollout"], r["steps"][baseline]["rollout"]) for r in rounds]
        if any(mine is not None for mine, _ in pairs):
            row["same_rollouts_share"] = sum(mine == theirs for mine, theirs in pairs) / len(pairs)
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS) + sorted(MODEL_PRESETS), default="cpu-small")
    parser.add_argument("--model", default=None, help="a pretrained model folder (instead of a preset's shape)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="weights and autocast")
    parser.add_argument("--finetune", choices=["full", "lora"], default=None)
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2 r, every projection)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--schedule", choices=["lockstep", "runs"], default="lockstep")
    parser.add_argument("--rounds", type=int, default=3, help="runs per config (runs schedule)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run (lockstep: rounds x steps)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=None)
    parser.add_argument("--prompt-words", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--worker-timeout", type=int, default=3600, help="seconds a worker may take per message")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/overhead_cpu.json"))
    parser.add_argument(
        "--plot-only", action="store_true", help="measure nothing: redraw the PNG of the --output JSON"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--lockstep", action="store_true", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with a model preset's settings filled in where not given (and the model path resolved)."""
    args = _parser().parse_args(argv)
    preset = MODEL_PRESETS.get(args.preset, {})
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
    if args.model and not Path(args.model).exists() and (REPO / args.model).exists():
        args.model = str(REPO / args.model)
    if args.model and not args.worker and not Path(args.model).is_dir():
        hint = " (make it: trl-empg convert-gguf --output_dir runs/smollm2-135m-instruct-bf16)" if preset else ""
        raise SystemExit(f"--model {args.model}: no such model folder{hint}")
    return args


NOT_SETTINGS = ("passthrough", "worker", "lockstep", "output", "plot_only")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plot_only:
        print(plot(json.loads(args.output.read_text()), args.output.with_suffix(".png")))
        return
    if args.worker:
        _say("DONE", _worker(args.worker, args))
        return
    args.passthrough = [
        item
        for key in WORKER_OPTIONS
        if getattr(args, key) is not None
        for item in (f"--{key.replace('_', '-')}", str(getattr(args, key)))
    ]
    load_before, started = os.getloadavg(), time.perf_counter()
    schedule = _schedule_lockstep if args.schedule == "lockstep" else _schedule_runs
    runs, rounds = schedule(args)
    summary = _summarise(runs, rounds)
    first = runs[args.configs[0]][0]
    loads = [record["load_1min"] for record in rounds]
    report = {
        "benchmark": "overhead",
        "settings": {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS},
        "parameters": first["parameters"],
        "trainable_parameters": first["trainable_parameters"],
        "weight_dtype": first["weight_dtype"],
        "torch_threads": first["torch_threads"],
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
            "load_1min_rounds": [min(loads), max(loads)] if loads else None,
        },
        "wall_s": time.perf_counter() - started,
        "targets": {"time_ratio_generation": 1.02, "memory_ratio_generation": 1.05},
        "summary": summary,
        "rounds": rounds,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2))
    print(plot(report, args.output.with_suffix(".png")))


def _paired(row: dict, name: str, baseline: str) -> tuple[float | None, list[float] | None]:
    """A time ratio as plotted: the median of the per-round ratios and their range (the paired estimate: both steps
    of a round share the machine's state), or, in result files written before the spread was kept, the ratio of
    the medians and the range of the round ratios."""
    spread = row.get(name + "_round_spread")
    if spread:
        return spread["median"], spread["range"]
    return row.get(f"{name}_vs_{baseline}"), row.get(name + "_range")


def plot(report: dict, path: Path) -> Path:
    """Every EMPG variant's step-time (wall and, where recorded, CPU: median of the per-round ratios, their range as
    error bars) and peak-memory ratio to its baseline; targets dashed. Also redraws result files written before CPU
    time was recorded."""
    from matplotlib.figure import Figure

    rows = []
    for name, row in report["summary"].items():
        for key in row:
            if key.startswith("time_ratio_vs_"):
                baseline = key.removeprefix("time_ratio_vs_")
                rows.append(
                    (
                        name,
                        baseline,
                        [
                            _paired(row, "time_ratio", baseline),
                            _paired(row, "cpu_time_ratio", baseline),
                            (row["memory_ratio_vs_" + baseline], None),
                        ],
                    )
                )
    labels = ["step time ratio (wall)", "step time ratio (CPU)", "peak memory ratio"]
    figure = Figure(figsize=(8, 3.5))
    axis = figure.subplots()
    width = 0.27
    for series, label in enumerate(labels):
        xs, heights, errors = [], [], [[], []]
        for position, (_, _, values) in enumerate(rows):
            value, spread = values[series]
            if value is None:
                continue
            xs.append(position + (series - 1) * width)
            heights.append(value)
            low, high = spread if spread else (value, value)
            errors[0].append(max(value - low, 0.0))
            errors[1].append(max(high - value, 0.0))
        if xs:
            axis.bar(xs, heights, width=width, label=label, yerr=errors, capsize=3)
    for value, style in ((report["targets"]["time_ratio_generation"], "--"), (1.0, ":")):
        axis.axhline(value, color="gray", linestyle=style, linewidth=1)
    axis.set_xticks(list(range(len(rows))), [f"{name}\nvs {baseline}" for name, baseline, _ in rows], fontsize=8)
    axis.set_ylabel("EMPG / baseline\n(median of rounds, range)")
    settings = report["settings"]
    model = Path(settings["model"]).name if settings.get("model") else settings["preset"]
    dtype = report.get("weight_dtype", "").removeprefix("torch.")
    tuning = settings.get("finetune", "full")
    axis.set_title(
        f"EMPG overhead: {model} ({report['parameters'] / 1e6:.2f}M parameters{', ' + dtype if dtype else ''}, "
        f"{tuning}), {settings['device']}, {settings.get('schedule', 'runs')}",
        fontsize=9,
    )
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main()
