"""Soak: a long training run of a tiny agent under env faults at known rates, watching for creep.

Trains EMPG on ``--env`` (TextWorldExpress coin by default, one JVM per episode slot) wrapped in
:class:`trl_empg.envs.faults.FaultyEnv` (``--rates``: per reset or step call, the issue's 1% raise, 0.5% hang,
0.5% exit by default), stepped by ``--workers`` worker processes. After every training step it records the step's
wall time and loss, the RSS of the trainer and of each worker (with the JVMs under it), the trainer's open file
descriptors and threads, the live processes it started (workers and JVMs) and any left behind by a restarted
worker, the fault counters the step logged (``env/errors``, ``env/replay_errors``, ``env/branch_errors``,
``env/restarts``, ``env/restored``) and the faults FaultyEnv says it injected in that step.

Between steps, a slot whose env faulted holds no env (and no JVM) until its next reset, so process counts dip; the
targets read "flat" as: the last fifth of the run never goes above the first fifth after warm-up.

Resumable: results are rewritten to ``OUTPUT_DIR/soak.json`` after every step and a checkpoint is saved every
``--save-steps``; running the same command again resumes from the last complete checkpoint, drops the rows after
it (and the injected-fault records after it) and goes on until ``--steps``. Targets, checked in the JSON's
``summary``: trainer RSS after warm-up grows < 10%, descriptors and processes flat, nothing left behind, every loss
finite, and per step the counters add up to the injected faults with one restart per hang or exit.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py --steps 200
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COUNTERS = ("errors", "replay_errors", "branch_errors", "restarts", "restored")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps in all (a rerun continues to this)")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks/results/soak"), help="soak.json, soak.png")
    parser.add_argument("--work-dir", default=str(REPO / "runs/soak"), help="checkpoints, agent, fault state")
    parser.add_argument("--env", default="twx:coin", help="the env FaultyEnv wraps")
    parser.add_argument("--env-kwargs", default="{}", help="JSON constructor arguments of that env")
    parser.add_argument("--rates", nargs="*", default=["raise=0.01", "hang=0.005", "exit=0.005"], help="kind=p")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=8, help="tasks per step (x --generations episodes)")
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--max-turns", type=int, default=5)
    parser.add_argument("--step-timeout", type=float, default=2.0)
    parser.add_argument("--reset-timeout", type=float, default=30.0)
    parser.add_argument("--save-steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20, help="steps before the creep baseline is taken")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--plot-only", action="store_true", help="redraw soak.png from soak.json (a soak under way)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# Process figures from /proc (Linux)


def _status(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _stat(pid: int) -> tuple[str, str, int, int, int]:
    """(comm, state, ppid, session id, RSS in kB) of a live process."""
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    rest = text[text.rindex(")") + 2 :].split()
    return comm, rest[0], int(rest[1]), int(rest[3]), int(rest[21]) * PAGE_KB


def process_table() -> dict[int, tuple[str, str, int, int, int]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                table[int(name)] = _stat(int(name))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue  # exited while we looked
    return table


def snapshot(worker_pids: list[int], seen_sessions: set[int]) -> dict[str, Any]:
    """RSS, descriptors, threads and processes of this trainer, its workers and their JVMs, and stragglers."""
    me = os.getpid()
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (_, _, ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)

    def tree(root: int) -> list[int]:
        found, stack = [], [root]
        while stack:
            pid = stack.pop()
            for child in children.get(pid, []):
                found.append(child)
                stack.append(child)
        return found

    live = [pid for pid in tree(me) if table[pid][1] != "Z"]
    workers = []
    for pid in worker_pids:
        if pid not in table:
            continue
        below = [child for child in tree(pid) if table[child][1] != "Z"]
        workers.append(
            {
                "pid": pid,
                "rss_mb": table[pid][4] / 1024,
                "tree_rss_mb": (table[pid][4] + sum(table[child][4] for child in below)) / 1024,
                "jvms": sum(table[child][0] == "java" for child in below),
            }
        )
    seen_sessions.update(worker_pids)  # a worker leads its own session: its pid is the session id
    current = set(worker_pids)
    left_behind = [
        pid for pid, (_, state, _, sid, _) in table.items() if sid in seen_sessions - current and state != "Z"
    ]
    status = _status(me)
    return {
        "trainer_rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "open_fds": len(os.listdir("/proc/self/fd")),
        "threads": int(status["Threads"]),
        "processes": len(live),
        "jvms": sum(table[pid][0] == "java" for pid in live),
        "zombies": sum(table[pid][1] == "Z" for pid in tree(me)),
        "left_behind": len(left_behind),
        "workers": workers,
    }


# ---------------------------------------------------------------------------------------------------------------------
# The run


def build_agent(args: argparse.Namespace, folder: Path) -> None:
    """A tiny Qwen2 and a tokenizer trained on the env's text, saved once so that a resumed soak uses the same."""
    from trl_empg.envs import make
    from trl_empg.rollout import AgentPrompts
    from trl_empg.workflows.tiny import build_tiny_model, build_tokenizer

    env = make(args.env, **json.loads(args.env_kwargs))
    texts = [AgentPrompts("plain", True, getattr(env, "task_description", "")).system()]
    for seed in env.task_seeds("train")[: args.tasks]:
        observation, info = env.reset(seed=seed, split="train")
        texts += [observation, *info["admissible_actions"]]
        for action in info["gold_actions"][:5]:
            observation, _, done, info = env.step(action)
            texts += [observation, *info["admissible_actions"]]
            if done:
                break
    env.close()
    tokenizer = build_tokenizer(texts * 3, vocab_size=800)
    model = build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def summarise(rows: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """The soak's verdict: creep after warm-up, leftovers, finiteness, and the fault books balancing."""
    injected = {kind: sum(row["injected"].get(kind, 0) for row in rows) for kind in ("raise", "hang", "exit")}
    counters = {name: sum(row["counters"][name] for row in rows) for name in COUNTERS}
    summary: dict[str, Any] = {
        "steps": len(rows),
        "injected": injected,
        "counters": counters,
        "faults_counted": counters["errors"] + counters["replay_errors"] + counters["branch_errors"],
        "faults_injected": sum(injected.values()),
        "steps_where_counts_differ": [row["step"] for row in rows if not row["faults_match"]],
        "all_losses_finite": all(math.isfinite(row["loss"]) for row in rows),
        "median_step_seconds": statistics.median(row["wall_s"] for row in rows) if rows else None,
    }
    after = [row for row in rows if row["step"] > warmup]
    if len(after) >= 10:
        base, end = after[:5], after[-5:]
        rss = [statistics.median(row["trainer_rss_mb"] for row in part) for part in (base, end)]
        summary["trainer_rss_mb"] = {"after_warmup": rss[0], "end": rss[1], "growth": rss[1] / rss[0] - 1}
        for key in ("open_fds", "processes", "jvms", "threads"):
            values = [row[key] for row in after]
            summary[key] = {"after_warmup": base[0][key], "end": end[-1][key], "min": min(values), "max": max(values)}
        workers = [sum(w["tree_rss_mb"] for w in row["workers"]) for row in after]
        summary["workers_tree_rss_mb"] = {"after_warmup": workers[0], "end": workers[-1], "max": max(workers)}
        early, late = after[: max(5, len(after) // 5)], after[-max(5, len(after) // 5) :]

        def no_new_high(key: str) -> bool:
            # Slots whose env faulted get a new env (a JVM) only at their next reset, so counts dip between steps:
            # flat means the last fifth never goes above the first fifth after warm-up.
            return max(row[key] for row in late) <= max(row[key] for row in early)

        summary["targets"] = {
            "trainer_rss_growth_below_10pct": summary["trainer_rss_mb"]["growth"] < 0.10,
            "fds_flat": no_new_high("open_fds"),
            "processes_flat": no_new_high("processes"),
            "nothing_left_behind": max(row["left_behind"] for row in rows) == 0,
            "every_step_finite": summary["all_losses_finite"],
            "faults_add_up": not summary["steps_where_counts_differ"]
            and summary["faults_counted"] == summary["faults_injected"],
            "one_restart_per_hang_or_exit": counters["restarts"] == injected["hang"] + injected["exit"],
        }
    return summary


def write_json(path: Path, payload: dict[str, Any]) -> None:
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(temporary, path)  # a soak killed while writing keeps the previous complete file


def plot(rows: list[dict[str, Any]], path: Path, warmup: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    axes[0][0].plot(steps, [row["trainer_rss_mb"] for row in rows], label="trainer")
    axes[0][0].plot(steps, [sum(w["tree_rss_mb"] for w in row["workers"]) for row in rows], label="workers + JVMs")
    axes[0][0].set_ylabel("RSS (MB)")
    axes[0][1].plot(steps, [row["open_fds"] for row in rows], label="open fds")
    axes[0][1].plot(steps, [row["processes"] for row in rows], label="live child processes")
    axes[0][1].plot(steps, [row["jvms"] for row in rows], label="JVMs")
    axes[0][1].plot(steps, [row["left_behind"] for row in rows], label="left behind")
    axes[1][0].plot(steps, [row["wall_s"] for row in rows], label="step wall time (s)")
    cumulative: dict[str, list[int]] = {"injected": [], "counted": [], "restarts": []}
    totals = dict.fromkeys(cumulative, 0)
    for row in rows:
        totals["injected"] += sum(row["injected"].values())
        totals["counted"] += sum(row["counters"][name] for name in ("errors", "replay_errors", "branch_errors"))
        totals["restarts"] += row["counters"]["restarts"]
        for key in cumulative:
            cumulative[key].append(totals[key])
    axes[1][1].plot(steps, cumulative["injected"], label="faults injected", linewidth=3, alpha=0.5)
    axes[1][1].plot(steps, cumulative["counted"], label="errors + replay_errors + branch_errors", linestyle="--")
    axes[1][1].plot(steps, cumulative["restarts"], label="worker restarts")
    for axis in axes.flat:
        axis.axvline(warmup, color="grey", linewidth=0.8, linestyle=":")
        axis.legend(fontsize=8)
    for axis in axes[1]:
        axis.set_xlabel("training step")
    figure.suptitle("Soak under env faults: memory, descriptors, processes, step time, fault books")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    output_dir, work_dir = Path(args.output_dir), Path(args.work_dir)
    if args.plot_only:
        payload = json.loads((output_dir / "soak.json").read_text())
        plot(payload["rows"], output_dir / "soak.png", payload["settings"]["warmup"])
        return payload
    output_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "tests"))  # fake_envs, for --env fake_envs:FakeEnv (workers inherit the path)

    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from trl_empg import EMPGConfig, EMPGTrainer
    from trl_empg.envs.faults import INJECTED_LOG, read_injected
    from trl_empg.training.checkpoints import checkpoint_step, last_complete_checkpoint

    agent_dir, run_dir, state_dir = work_dir / "agent", work_dir / "run", work_dir / "faults"
    if not (agent_dir / "config.json").exists():
        build_agent(args, agent_dir)
    results_path = output_dir / "soak.json"
    rows: list[dict[str, Any]] = []
    resume = last_complete_checkpoint(run_dir)
    if resume is not None and results_path.exists():
        resumed_at = checkpoint_step(resume) or 0
        rows = [row for row in json.loads(results_path.read_text())["rows"] if row["step"] <= resumed_at]
        # Faults injected after the checkpoint belong to steps that are played again: drop their records.
        keep = rows[-1]["injected_total"] if rows else 0
        records = (state_dir / INJECTED_LOG).read_text().splitlines(keepends=True) if state_dir.exists() else []
        (state_dir / INJECTED_LOG).write_text("".join(records[:keep]))
    else:
        # Nothing to continue (no complete checkpoint yet, or no results): start over, the faults' records included,
        # or a killed run's injected faults would be counted against the new run's first step.
        resume = None
        for stale in (run_dir, state_dir):
            shutil.rmtree(stale, ignore_errors=True)
    rates = {kind: float(p) for kind, p in (rate.split("=") for rate in args.rates)}
    config = EMPGConfig(
        output_dir=str(run_dir),
        use_cpu=True,
        bf16=False,
        env_id="trl_empg.envs.faults:FaultyEnv",
        env_kwargs={
            "inner_env": args.env,
            "inner_kwargs": json.loads(args.env_kwargs),
            "state_dir": str(state_dir),
            "rates": rates,
            "salt": args.seed,
        },
        env_num_tasks=args.tasks * 4,
        env_workers=args.workers,
        env_step_timeout=args.step_timeout,
        env_reset_timeout=args.reset_timeout,
        max_turns=args.max_turns,
        max_turn_tokens=12,
        max_completion_length=192,
        prompt_style="plain",
        per_device_train_batch_size=args.tasks * args.generations,
        num_generations=args.generations,
        max_steps=args.steps,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=2,
        report_to="none",
        seed=args.seed,
    )
    model = AutoModelForCausalLM.from_pretrained(agent_dir)
    tokenizer = AutoTokenizer.from_pretrained(agent_dir)
    seen_sessions: set[int] = set()
    started = {"at": time.monotonic()}

    class Record(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            started["at"] = time.monotonic()

        def on_log(self, args_, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            wall = time.monotonic() - started["at"]
            pool = trainer._env_rollout._pool if trainer._env_rollout is not None else None
            workers = [w.process.pid for w in (pool._workers if pool is not None else []) if w is not None]
            injected_all = read_injected(state_dir)
            before = rows[-1]["injected_total"] if rows else 0
            injected: dict[str, int] = {}
            for record in injected_all[before:]:
                injected[record["kind"]] = injected.get(record["kind"], 0) + 1
            counters = {name: int(logs.get(f"env/{name}", 0)) for name in COUNTERS}
            row = {
                "step": state.global_step,
                "wall_s": wall,
                "loss": float(logs["loss"]),
                "success_rate": logs.get("env/success_rate"),
                "counters": counters,
                "injected": injected,
                "injected_total": len(injected_all),
                "faults_match": counters["errors"] + counters["replay_errors"] + counters["branch_errors"]
                == sum(injected.values())
                and counters["restarts"] == injected.get("hang", 0) + injected.get("exit", 0),
                **snapshot(workers, seen_sessions),
            }
            rows.append(row)
            write_json(results_path, {"settings": vars(args), "summary": summarise(rows, args.warmup), "rows": rows})

    trainer = EMPGTrainer(model, args=config, processing_class=tokenizer, callbacks=[Record()])
    if resume is None or checkpoint_step(resume) < args.steps:
        trainer.train(resume_from_checkpoint=resume)
    payload = {"settings": vars(args), "summary": summarise(rows, args.warmup), "rows": rows}
    write_json(results_path, payload)
    if not args.no_plot and rows:
        plot(rows, output_dir / "soak.png", args.warmup)
    print(json.dumps(payload["summary"], indent=1))
    return payload


if __name__ == "__main__":
    main()
