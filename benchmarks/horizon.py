"""Cost per turn as the horizon grows: re-encoding every turn, KV-cache reuse, and the bounded-history step layout.

Part 1 plays 16 episodes in lockstep at each ``max_turns`` (5, 20, 40, 80 by default) with a tiny randomly
initialised agent on a game where its episodes run to the turn limit (the agent rarely finds the coin), three ways:

- ``reencode``: episode layout, every turn re-encodes the whole conversation so far (``reuse_kv_cache=False``);
- ``kv_reuse``: episode layout, each episode's KV cache is kept from turn to turn (``reuse_kv_cache=True``);
- ``step``: step layout, every prompt holds the task and the last ``history_turns`` turns.

It reports seconds per turn and, per way, the ratio of the cost per turn at the longest horizon to the shortest.
The episode layout's token budget is raised with the horizon so that no episode is cut short. ``--model
smollm2-shape`` plays a randomly initialised model of SmolLM2-135M-Instruct's configuration (30 layers, hidden 576,
9 query / 3 KV heads, vocabulary 49,152) with its tokenizer, both read from the converted copy under ``runs/``
(``python -m trl_empg convert-gguf``); random weights rarely say EOS, so every reply runs to ``--turn-tokens``.
``--modes`` picks the ways (re-encoding is quadratic in the horizon: on a real model's shape on CPU it does not fit).

Part 2 times one EMPG training step and its peak memory (the peak resident set, VmHWM, of a fresh process, CPU) at
40 turns in the episode layout against the step layout, each in its own process.

    python benchmarks/horizon.py --out benchmarks/results/horizon.json
    OMP_NUM_THREADS=1 python benchmarks/horizon.py --model smollm2-shape --dtype bfloat16 --episodes 4 \
        --modes kv_reuse step --train-turns 0 --out benchmarks/results/horizon_smollm2_shape.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from trl_empg.envs.pool import EnvPool
from trl_empg.rollout import RolloutArguments, run_episodes
from trl_empg.rollout.policy import HFPolicy, SamplingSettings
from trl_empg.rollout.settings import parse_env_kwargs
from trl_empg.workflows.tiny import build_tiny_agent

MODES = ("reencode", "kv_reuse", "step")
SMOLLM2_DIR = Path(__file__).resolve().parent.parent / "runs" / "smollm2-135m-instruct-bf16"


def random_agent(config_dir: Path, output_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised model of the configuration in ``config_dir``, saved with that folder's tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (config_dir / "config.json").exists():
        raise SystemExit(f"{config_dir} is missing: run `python -m trl_empg convert-gguf` first.")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    model.save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(output_dir)
    return output_dir


def rollout_settings(mode: str, max_turns: int, turn_tokens: int, history_turns: int) -> RolloutArguments:
    step = mode == "step"
    return RolloutArguments(
        max_turns=max_turns,
        max_turn_tokens=turn_tokens,
        # the episode layout's budget grows with the horizon (no truncation); the step layout's is one reply
        max_completion_length=turn_tokens if step else max_turns * 400,
        prompt_style="plain",
        rollout_layout="step" if step else "episode",
        history_turns=history_turns,
        reuse_kv_cache=mode == "kv_reuse",
    )


def per_turn_costs(args: argparse.Namespace, agent_dir: Path) -> list[dict]:
    rows = []
    tasks = [(seed, "train") for seed in range(args.episodes)]
    sampling = SamplingSettings(do_sample=True)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    policies = {
        mode: HFPolicy.from_pretrained(
            str(agent_dir), sampling, dtype=dtype, device=args.device, reuse_kv_cache=mode == "kv_reuse"
        )
        for mode in args.modes
    }
    with EnvPool(args.env_id, parse_env_kwargs(args.env_kwargs)) as pool:
        pool.reset([(slot, 0, "train") for slot in range(args.episodes)])  # start every env once, untimed
        # Modes take turns at every horizon, in an order reversed each time, so machine-load drift hits all alike.
        for index, max_turns in enumerate(args.max_turns):
            for mode in args.modes if index % 2 == 0 else list(reversed(args.modes)):
                policy = policies[mode]
                load_before = os.getloadavg()
                settings = rollout_settings(mode, max_turns, args.turn_tokens, args.history_turns)
                torch.manual_seed(0)
                start = time.perf_counter()
                episodes = run_episodes(pool, tasks, policy.tokenizer, policy, settings)
                seconds = time.perf_counter() - start
                turns = max(e.num_turns for e in episodes)  # lockstep: one batched generation per turn
                rows.append(
                    {
                        "mode": mode,
                        "max_turns": max_turns,
                        "turns_played": turns,
                        "seconds": round(seconds, 3),
                        "seconds_per_turn": round(seconds / max(turns, 1), 4),
                        "truncated_at_budget": sum(e.end_reason == "token_budget" for e in episodes),
                        "ended_early": sum(e.num_turns < max_turns for e in episodes),
                        "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def training_step(agent_dir: Path, layout: str, args: argparse.Namespace) -> dict:
    """One EMPG step at ``args.train_turns`` turns in a fresh process: wall time of the step and the peak RSS."""
    code = f"""
import json, time
from trl_empg import EMPGConfig, EMPGTrainer
step = {layout == "step"!r}
config = EMPGConfig(
    output_dir={tempfile.mkdtemp()!r}, use_cpu=True, report_to="none", save_strategy="no", seed=0,
    env_id={args.env_id!r}, env_kwargs={args.env_kwargs!r}, env_num_tasks=8, prompt_style="plain",
    max_turns={args.train_turns}, max_turn_tokens={args.turn_tokens},
    max_completion_length={args.turn_tokens} if step else {args.train_turns * 400},
    rollout_layout={layout!r}, history_turns={args.history_turns},
    per_device_train_batch_size=8, num_generations=4, max_steps=1, learning_rate=1e-4, top_k=0, top_p=1.0,
)
trainer = EMPGTrainer({str(agent_dir)!r}, args=config)
start = time.perf_counter()
trainer.train()
seconds = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited across exec).
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
result = {{"layout": {layout!r}, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1)}}
print("RESULT", json.dumps(result))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=1800)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def plot(rows: list[dict], path: Path, title: str = "Cost per turn vs horizon (CPU)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for mode in MODES:
        points = [(r["max_turns"], r["seconds_per_turn"]) for r in rows if r["mode"] == mode]
        if points:
            axis.plot(*zip(*points), marker="o", label=mode)
    axis.set_xlabel("max turns (16 episodes in lockstep)")
    axis.set_ylabel("seconds per turn")
    axis.set_ylim(bottom=0)
    axis.legend()
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="twx:coin")
    parser.add_argument(
        "--env-kwargs",
        default='{"max_steps": 200, "game_params": {"numLocations": 11, "includeDoors": 1}}',
        help="a random tiny agent rarely finds the coin on this map, so its episodes run to the turn limit",
    )
    parser.add_argument("--episodes", type=int, default=16, help="episodes played in lockstep")
    parser.add_argument("--max-turns", type=int, nargs="+", default=[5, 20, 40, 80])
    parser.add_argument("--turn-tokens", type=int, default=16, help="tokens per reply")
    parser.add_argument("--history-turns", type=int, default=2, help="step layout's history window")
    parser.add_argument("--train-turns", type=int, default=40, help="turns of the timed training step (0: skip)")
    parser.add_argument("--device", default=None, help="torch device of the policy (default: where it loads)")
    parser.add_argument("--agent-dir", default=None, help="agent to play (default: built here, see --model)")
    parser.add_argument(
        "--model",
        choices=["tiny", "smollm2-shape"],
        default="tiny",
        help="without --agent-dir: a tiny agent built on the env, or a random model of SmolLM2-135M's configuration",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", default="benchmarks/results/horizon.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    agent_dir = Path(args.agent_dir or tempfile.mkdtemp()) / ("" if args.agent_dir else "agent")
    if not args.agent_dir and args.model == "smollm2-shape":
        random_agent(SMOLLM2_DIR, agent_dir)
    elif not args.agent_dir:
        build_tiny_agent(args.env_id, agent_dir, env_kwargs=parse_env_kwargs(args.env_kwargs), num_tasks=20)
    rows = per_turn_costs(args, agent_dir)
    shortest, longest = min(args.max_turns), max(args.max_turns)
    ratios = {}
    for mode in args.modes:
        cost = {r["max_turns"]: r["seconds_per_turn"] for r in rows if r["mode"] == mode}
        ratios[mode] = round(cost[longest] / cost[shortest], 3)
    training = [training_step(agent_dir, layout, args) for layout in ("episode", "step")] if args.train_turns else []
    report = {
        "command": "python benchmarks/horizon.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "model": args.agent_dir or args.model,
        "dtype": args.dtype,
        "episodes": args.episodes,
        "per_turn": rows,
        f"cost_ratio_{longest}_vs_{shortest}_turns": ratios,
        "training_step": training,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"), f"Cost per turn vs horizon ({args.agent_dir or args.model}, {args.dtype})")
    print(json.dumps({"ratios": ratios, "training_step": training}, indent=2))


if __name__ == "__main__":
    main()
