"""EMPG's cost over plain GRPO: training-step time and peak memory, measured side by side.

Every configuration trains the same locally initialised Qwen2 on the same prompts with fixed-length completions
(``min_new_tokens = max_new_tokens``), so GRPO and EMPG do identical generation and loss work and differ only by
what EMPG adds. Runs are separate worker processes (so each has its own peak memory), launched in alternating order
for several rounds (ABBA: the order reverses every round) after one untimed warm-up run, so that machine-load drift
and cold caches hit every configuration alike. Reported: the median step time over
all post-warm-up steps and the peak resident memory (CPU) or peak allocated CUDA memory (GPU), and their ratios to
the GRPO baseline with the same entropy-relevant settings.

    python benchmarks/overhead.py --rounds 3 --steps 12 --warmup 2                # CPU, tiny-ish model
    python benchmarks/overhead.py --preset qwen2.5-0.5b --device cuda              # GPU, Qwen2.5-0.5B shape
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def _worker(config_name: str, args: argparse.Namespace) -> dict:
    """Train one configuration and report its per-step times and peak memory."""
    import torch
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trl_empg import EMPGConfig, EMPGTrainer
    from trl_empg.workflows.tiny import build_tokenizer

    kind, overrides = CONFIGS[config_name]
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
    on_cpu = args.device == "cpu"
    common = dict(
        output_dir=tempfile.mkdtemp(),
        use_cpu=on_cpu,
        bf16=not on_cpu,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.completion_length,
        learning_rate=1e-5,
        generation_kwargs={"min_new_tokens": args.completion_length},
        seed=0,
        top_k=0,
        top_p=1.0,
        beta=0.0,
        activation_checkpointing=True,  # TRL's default, by transformers 5's name (the old one warns)
        **{k: v for k, v in overrides.items() if k != "entropy_source"},
    )
    dataset = Dataset.from_dict({"prompt": [" ".join(words[i : i + args.prompt_words]) for i in range(512)]})

    def reward(completions, **kwargs):
        return [float(len(c) % 7) for c in completions]

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    if kind == "grpo":
        trainer = GRPOTrainer(
            model,
            reward,
            args=GRPOConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
    else:
        config = EMPGConfig(**common, entropy_source=overrides["entropy_source"])
        trainer = EMPGTrainer(
            model, reward, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[StepTimer()]
        )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    source = getattr(trainer, "entropy_source", None)
    return {
        "config": config_name,
        "step_times": times[args.warmup :],
        "peak_mib": peak,
        "entropy_source": source,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _run_worker(config_name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", config_name, *args.passthrough]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.worker_timeout)
    if result.returncode != 0:
        raise RuntimeError(f"worker {config_name} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (each config once per round)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run, after warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=32)
    parser.add_argument("--worker-timeout", type=int, default=3600)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/overhead_cpu.json"))
    parser.add_argument(
        "--plot-only", action="store_true", help="measure nothing: redraw the PNG of the --output JSON"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plot_only:
        print(plot(json.loads(args.output.read_text()), args.output.with_suffix(".png")))
        return
    if args.worker:
        print(json.dumps(_worker(args.worker, args)))
        return
    args.passthrough = [
        "--preset",
        args.preset,
        "--device",
        args.device,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        "--num-generations",
        str(args.num_generations),
        "--completion-length",
        str(args.completion_length),
        "--prompt-words",
        str(args.prompt_words),
    ]
    runs: dict[str, list[dict]] = {name: [] for name in args.configs}
    # The first process of a session pays for cold caches (shared libraries, bytecode, allocator): measured here as
    # GRPO at ~1.0 s a step against EMPG's ~0.79 s when GRPO ran first. One untimed run takes that cost for nobody.
    _run_worker(args.configs[0], args)
    for round_index in range(args.rounds):
        order = args.configs if round_index % 2 == 0 else list(reversed(args.configs))
        for name in order:
            runs[name].append(_run_worker(name, args))
            print(
                f"round {round_index} {name}: median step {statistics.median(runs[name][-1]['step_times']):.3f}s",
                flush=True,
            )
    summary = {}
    for name, results in runs.items():
        times = [t for r in results for t in r["step_times"]]
        summary[name] = {
            "median_step_s": statistics.median(times),
            "peak_mib": statistics.median(r["peak_mib"] for r in results),
            "steps_timed": len(times),
            "entropy_source": results[0]["entropy_source"],
        }
    for name, results in runs.items():
        summary[name]["run_median_step_s"] = [statistics.median(r["step_times"]) for r in results]
    for name, baseline in BASELINE.items():
        if name in summary and baseline in summary:
            summary[name]["time_ratio_vs_" + baseline] = (
                summary[name]["median_step_s"] / summary[baseline]["median_step_s"]
            )
            # The spread: the same ratio round by round (both runs of a round share the machine's state).
            per_round = [
                mine / theirs
                for mine, theirs in zip(summary[name]["run_median_step_s"], summary[baseline]["run_median_step_s"])
            ]
            summary[name]["time_ratio_per_round"] = per_round
            summary[name]["time_ratio_range"] = [min(per_round), max(per_round)]
            summary[name]["memory_ratio_vs_" + baseline] = summary[name]["peak_mib"] / summary[baseline]["peak_mib"]
    report = {
        "benchmark": "overhead",
        "settings": {k: v for k, v in vars(args).items() if k not in ("passthrough", "worker", "output", "plot_only")},
        "parameters": runs[args.configs[0]][0]["parameters"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "targets": {"time_ratio_generation": 1.02, "memory_ratio_generation": 1.05},
        "summary": summary,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2))
    print(plot(report, args.output.with_suffix(".png")))


def plot(report: dict, path: Path) -> Path:
    """Median step time and peak memory of every configuration, as ratios to its baseline (targets dashed)."""
    from matplotlib.figure import Figure

    rows = [
        (name, row[key], row[key.replace("time", "memory")])
        for name, row in report["summary"].items()
        for key in row
        if key.startswith("time_ratio_vs_")
    ]
    figure = Figure(figsize=(8, 3.5))
    axis = figure.subplots()
    positions = range(len(rows))
    axis.bar([x - 0.2 for x in positions], [r[1] for r in rows], width=0.4, label="step time ratio")
    axis.bar([x + 0.2 for x in positions], [r[2] for r in rows], width=0.4, label="peak memory ratio")
    for value, style in ((report["targets"]["time_ratio_generation"], "--"), (1.0, ":")):
        axis.axhline(value, color="gray", linestyle=style, linewidth=1)
    axis.set_xticks(list(positions), [f"{name}\nvs {BASELINE[name]}" for name, *_ in rows], fontsize=8)
    axis.set_ylabel("EMPG / baseline")
    axis.set_title(f"EMPG overhead ({report['settings']['device']}, {report['parameters'] / 1e6:.2f}M parameters)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main()
