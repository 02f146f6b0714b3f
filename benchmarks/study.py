"""The paired EMPG-vs-GRPO study (issue #22): benchmarks x methods x training seeds, resumable over many sessions.

Every run (one benchmark x method x training seed) is ``benchmarks/learning.py``'s: train from the benchmark's warm
start, checkpoint every ``--eval-every`` steps, evaluate every checkpoint. What this script adds:

- **pairing**: one warm start per benchmark for every seed and method, and every checkpoint (the warm start's step 0
  included, evaluated once per benchmark) plays the same evaluation episodes: the same test seeds, in the same order,
  with the same sampling seed; the outcome of every episode is kept, so methods can be compared episode by episode;
- **resumability**: one JSON per run, written atomically when the run has finished
  (``benchmarks/results/study/<bench>/<method>-seed<N>.json``); finished runs whose settings match are skipped, a
  killed or half-written run is redone from scratch; a run being trained by another live process is left alone (a
  lock under ``--runs-dir``); ``manifest.json`` / ``manifest.md`` say what is done, what is left, what waits for a
  warm start, and the command that continues;
- **analysis** (``--analyse``, in ``study_analysis.py``): paired differences with bootstrap CIs over seeds and over
  evaluation episodes, sign tests, curves with bands, ``summary.md``.

    nice -n 15 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study.py                 # run / continue everything
    nice -n 15 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study.py --benchmarks coin --max-runs 3
    .venv/bin/python benchmarks/study.py --status                                          # manifest only
    .venv/bin/python benchmarks/study.py --analyse                                         # tests, plots, summary.md

Settings per benchmark are the table :data:`BENCHMARKS` below; a warm start that does not exist yet makes its
benchmark 'waiting for warm start' (coin's is built here the quickstart's way, by ``learning.build_warm_start``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import learning  # noqa: E402  (benchmarks/ is a folder of scripts)
import long_warm_starts  # noqa: E402
import study_analysis  # noqa: E402


def taught_settings(row: dict[str, Any]) -> dict[str, Any]:
    """The env and rollout settings a warm-start runner's row taught its agent with, which RL and every evaluation
    must repeat: read from that row, so they are defined once. learning.py always lists the admissible actions."""
    if not row["rollout"].get("show_admissible_actions", True):
        raise ValueError("learning.py always shows the admissible actions; this warm start was taught without them.")
    rollout = {key: value for key, value in row["rollout"].items() if key != "show_admissible_actions"}
    return {"env_id": row["env_id"], "env_kwargs": row["env_kwargs"], "rollout": rollout}


# ------------------------------------------------------------------------------------------------------ the table
#: One row per benchmark. ``rollout`` and ``training`` are ``benchmarks/learning.py`` settings (its argument names;
#: anything not named keeps learning.py's default: 4 tasks x 8 episodes per step, learning rate 1e-3 with 2 warm-up
#: steps, KL coefficient 0.01). ``env_id``, ``env_kwargs`` and ``rollout`` must be what the warm start was taught with
#: (the same texts): they are checked against the warm start's own ``run_config.json`` (written by ``trl-empg sft``)
#: and a mismatch stops that benchmark (reported in the manifest). ``warm_start.path`` is a model folder, or a folder
#: holding ``sft/`` (the model); it counts as present once its ``run_config.json`` exists (sft writes it last).
#: ``build`` says how it is made: ``"learning"`` = built here by ``learning.build_warm_start`` (build-tiny + sft on
#: noisy gold plans), otherwise the script that builds it and ``record`` its results JSON. ``eval``: test seeds x
#: sampled episodes per seed per checkpoint (>= 500 episodes; splits with fewer test seeds repeat them).
BENCHMARKS: dict[str, dict[str, Any]] = {
    # The quickstart's game: coin, 4 rooms, no doors (recipes/quickstart.yaml), the warm start of the learning
    # benchmark's README results (200 sft steps, 25% label noise). 1,000 test seeds.
    "coin": {
        "env_id": "twx:coin",
        "env_kwargs": {"game_params": {"includeDoors": 0}},
        "rollout": {
            "max_turns": 20,
            "max_turn_tokens": 16,
            "max_completion_length": 2048,
            "prompt_style": "plain",
            "invalid_action_penalty": 0.1,
        },
        "training": {"sft_steps": 200, "sft_noise": 0.25},
        "warm_start": {"path": "runs/warm_starts/coin", "build": "learning", "record": None},
        "eval": {"tasks": 500, "episodes_per_task": 1},
    },
    # search-style (a fictional world generated offline, 1-3 hops; EM reward): 492 test questions, so 250 x 2.
    "search": {
        "env_id": "search",
        "env_kwargs": {"top_k": 3, "max_turns": 4, "reward_mode": "em"},
        "rollout": {
            "max_turns": 4,
            "max_turn_tokens": 24,
            "max_completion_length": 1536,
            "prompt_style": "plain",
            "invalid_action_penalty": 0.1,
        },
        "training": {},
        "warm_start": {
            "path": "runs/warm_starts/search",
            "build": "benchmarks/tiny_warm_starts.py search",
            "record": "benchmarks/results/warm_starts/search.json",
        },
        "eval": {"tasks": 250, "episodes_per_task": 2},
    },
    # WebShop-style (a shop generated offline, 15% of its 3,000 goals are test: ~450): 250 x 2. WebShop's 15 turns.
    "webshop": {
        "env_id": "webshop",
        "env_kwargs": {},
        "rollout": {
            "max_turns": 15,
            "max_turn_tokens": 24,
            "max_completion_length": 3500,
            "prompt_style": "plain",
            "invalid_action_penalty": 0.1,
        },
        "training": {},
        "warm_start": {
            "path": "runs/warm_starts/webshop",
            "build": "benchmarks/tiny_warm_starts.py webshop",
            "record": "benchmarks/results/warm_starts/webshop.json",
        },
        "eval": {"tasks": 250, "episodes_per_task": 2},
    },
    # ALFWorld-style (problems generated from the wheel's layouts, the searching expert's plans): 200 test games x 3.
    "alfworld": {
        **taught_settings(long_warm_starts.BENCHMARKS["alfworld"]),
        "training": {},
        "warm_start": {
            "path": "runs/warm_starts/alfworld",
            "build": "benchmarks/long_warm_starts.py --benches alfworld",
            "record": "benchmarks/results/warm_starts/alfworld.json",
        },
        "eval": {"tasks": 200, "episodes_per_task": 3},
    },
    # A long TextWorldExpress game: cookingworld, 2 rooms, 5 ingredients (gold plans of 15-22 actions), 32 turns.
    "twx-cookingworld-long": {
        **taught_settings(long_warm_starts.BENCHMARKS["twx-cookingworld-long"]),
        "training": {},
        "warm_start": {
            "path": "runs/warm_starts/twx-cookingworld-long",
            "build": "benchmarks/long_warm_starts.py --benches twx-cookingworld-long",
            "record": "benchmarks/results/warm_starts/twx-cookingworld-long.json",
        },
        "eval": {"tasks": 500, "episodes_per_task": 1},
    },
}
DEFAULT_METHODS = ("grpo", "empg", "empg_scale_only")
MIN_EVAL_EPISODES = 500
RESULTS = Path("benchmarks/results/study")
RUNS = Path("runs/study")
#: Settings that shape what the agent is shown, compared with the warm start's run_config.json.
TEXT_KEYS = ("max_turns", "max_turn_tokens", "max_completion_length", "prompt_style", "show_admissible_actions")


# ------------------------------------------------------------------------------------------------------ helpers
def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file beside it, then a rename): readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    """The file's JSON, or None when it is missing or not valid JSON (half-written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_dir(path: str | Path) -> Path | None:
    """The warm start's model folder (``path`` or ``path/sft``) once it is complete (its weights and the
    ``run_config.json`` that ``trl-empg sft`` writes last), else None."""
    for candidate in (Path(path), Path(path) / "sft"):
        weights = any(candidate.glob("*.safetensors")) or (candidate / "pytorch_model.bin").exists()
        if weights and (candidate / "config.json").exists() and (candidate / "run_config.json").exists():
            return candidate
    return None


def weights_digest(folder: Path) -> str:
    """SHA-256 of the model's weight files: a rebuilt warm start makes every run of its benchmark stale."""
    sha = hashlib.sha256()
    for file in sorted([*folder.glob("*.safetensors"), *folder.glob("pytorch_model.bin")]):
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()[:16]


def config_mismatches(folder: Path, name: str, args: argparse.Namespace) -> list[str]:
    """Where the warm start's ``run_config.json`` (the env and rollout settings ``trl-empg sft`` taught it with)
    differs from what this study would train and evaluate it with."""
    from dataclasses import asdict

    taught = (read_json(folder / "run_config.json") or {}).get("training", {})
    ours = {
        "env_id": learning.env_id(name, args),
        "env_kwargs": args.env_kwargs.get(name) or {},
        **{k: v for k, v in asdict(learning.rollout_arguments(args)).items() if k in TEXT_KEYS},
    }
    return [
        f"{key}: table {value!r}, warm start {taught[key]!r}"
        for key, value in ours.items()
        if key in taught and taught[key] != value
    ]


def learning_args(name: str, bench: dict[str, Any], options: argparse.Namespace) -> argparse.Namespace:
    """learning.py's settings for one benchmark: its defaults, then the row, then the study's command line."""
    args = learning.parse_arguments([])
    for key, value in {**bench["rollout"], **bench["training"]}.items():
        if not hasattr(args, key):
            raise ValueError(f"Benchmark {name!r}: {key!r} is not a benchmarks/learning.py setting.")
        setattr(args, key, value)
    args.env_id = {name: bench["env_id"]}
    args.env_kwargs = {name: bench["env_kwargs"]}
    args.steps, args.eval_every, args.device = options.steps, options.eval_every, options.device
    args.eval_tasks = options.eval_tasks or bench["eval"]["tasks"]
    args.eval_episodes_per_task = options.eval_episodes_per_task or bench["eval"]["episodes_per_task"]
    args.eval_seed = options.eval_seed
    args.output_dir = options.results_dir / name
    args.runs_dir = options.runs_dir / name
    if args.steps % args.eval_every:
        raise ValueError("--steps must be a multiple of --eval-every")
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items())}


#: The learning.py settings a warm start's evaluation (step 0) depends on.
EVAL_KEYS = (
    "env_id",
    "env_kwargs",
    "max_turns",
    "max_turn_tokens",
    "max_completion_length",
    "prompt_style",
    "invalid_action_penalty",
    "eval_tasks",
    "eval_episodes_per_task",
    "eval_seed",
    "device",
)
#: ... and those a run depends on (named, so that a new learning.py option or default of its sweep flags, such as
#: ``--games``, leaves finished runs valid).
RUN_KEYS = (
    *EVAL_KEYS,
    "train_tasks",
    "num_generations",
    "batch_size",
    "steps",
    "eval_every",
    "learning_rate",
    "warmup_steps",
    "beta",
)


def fingerprint(args: argparse.Namespace, method: str | None, warm_digest: str) -> str:
    """What a result depends on: the warm start, the :data:`RUN_KEYS` settings and the method's overrides for a run
    (``method``), the :data:`EVAL_KEYS` for the warm start's evaluation (``method=None``)."""
    settings = settings_of(args)
    settings = {k: settings[k] for k in (EVAL_KEYS if method is None else RUN_KEYS)}
    return _digest({"settings": settings, "method": method and learning.METHODS[method], "warm": warm_digest})


# ------------------------------------------------------------------------------------------------------ evaluation
def evaluate_checkpoint(path: str, game: str, args: argparse.Namespace) -> dict[str, Any]:
    """One checkpoint's evaluation (``learning.evaluation_report``) in the study's compact form: the summary, and
    every episode's outcome in evaluation order (``won``, a 0/1 string) with a digest of the episodes' task seeds."""
    clock = time.perf_counter()
    report = learning.evaluation_report(path, game, args)
    episodes = report["episodes"]
    return {
        "success_rate": report["success_rate"],
        "ci": report["success_ci"],
        "mean_steps": report["mean_steps"],
        "invalid_action_rate": report["invalid_action_rate"],
        "mean_step_entropy": report.get("mean_step_entropy"),
        "num_episodes": len(episodes),
        "num_env_errors": report.get("num_env_errors", 0),
        "eval_seconds": round(time.perf_counter() - clock, 1),
        "task_seeds_sha": _digest([e["task_seed"] for e in episodes]),
        "won": "".join("1" if e["won"] else "0" for e in episodes),
    }


def kl_at_checkpoints(curve: list[Any], steps: list[int]) -> list[float | None]:
    """Training KL to the warm start (TRL's logged ``kl``, beta > 0) for each checkpoint: the mean over the logged
    steps since the previous checkpoint (0 at step 0, None when nothing was logged)."""
    out: list[float | None] = []
    for previous, step in zip([None, *steps[:-1]], steps):
        if step == 0:
            out.append(0.0)
            continue
        values = [v for s, v in curve if (previous is None or s > previous) and s <= step]
        out.append(sum(values) / len(values) if values else None)
    return out


# ------------------------------------------------------------------------------------------------------ runs
def run_path(options: argparse.Namespace, name: str, method: str, seed: int) -> Path:
    return options.results_dir / name / f"{method}-seed{seed}.json"


def run_state(path: Path, expected: str) -> str:
    """done | missing | broken (not valid JSON, or never finished) | stale (other settings or warm start)."""
    if not path.exists():
        return "missing"
    run = read_json(path)
    if not isinstance(run, dict) or run.get("status") != "complete":
        return "broken"
    return "done" if run.get("fingerprint") == expected else "stale"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_owner(lock: Path) -> int | None:
    """The live process holding ``lock``, or None (no lock, or its process is gone: a killed run)."""
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid != os.getpid() and _pid_alive(pid) else None


@contextlib.contextmanager
def run_lock(lock: Path) -> Iterator[bool]:
    """Hold ``lock`` for this process (True), or yield False when another live process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    if lock_owner(lock) is not None:
        yield False
        return
    lock.write_text(f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().split()[0] == str(os.getpid()):
                lock.unlink()


def prepare_warm_start(name: str, bench: dict[str, Any], args: argparse.Namespace, build: bool) -> dict[str, Any]:
    """The benchmark's warm start: ``{"status": "ready", "path", "digest"}`` or ``{"status": <why not>}``. Builds
    coin's (``build: "learning"``) when ``build`` is set."""
    folder = model_dir(bench["warm_start"]["path"])
    if folder is None and build and bench["warm_start"].get("build") == "learning":
        with run_lock(args.runs_dir / "warm_start.lock") as mine:
            if mine:
                print(f"[study] {name}: building the warm start into {bench['warm_start']['path']}", flush=True)
                shutil.rmtree(Path(bench["warm_start"]["path"]), ignore_errors=True)  # a killed build's leftovers
                learning.build_warm_start(name, Path(bench["warm_start"]["path"]), args)
                folder = model_dir(bench["warm_start"]["path"])
    if folder is None:
        how = bench["warm_start"].get("build")
        how = "built by this script's next training run" if how == "learning" else f"built by {how}"
        return {"status": f"waiting for warm start ({bench['warm_start']['path']}, {how})"}
    problems = config_mismatches(folder, name, args)
    if problems:
        return {"status": f"settings differ from the warm start's {folder}/run_config.json: " + "; ".join(problems)}
    return {"status": "ready", "path": str(folder), "digest": weights_digest(folder)}


def step_zero(name: str, args: argparse.Namespace, warm: dict[str, Any]) -> dict[str, Any]:
    """The warm start's evaluation (step 0 of every curve of the benchmark), done once and kept in
    ``<bench>/warm_start.json``; redone when the warm start or the evaluation settings change."""
    path = args.output_dir / "warm_start.json"
    expected = fingerprint(args, None, warm["digest"])
    record = read_json(path)
    if isinstance(record, dict) and record.get("fingerprint") == expected:
        return record
    evaluation = {"step": 0, **evaluate_checkpoint(warm["path"], name, args)}
    record = {"benchmark": name, "path": warm["path"], "digest": warm["digest"], "fingerprint": expected}
    record["evaluation"] = evaluation
    write_json(path, record)
    return record


def run_one(
    name: str, method: str, seed: int, args: argparse.Namespace, warm: dict[str, Any], start: dict[str, Any]
) -> dict[str, Any]:
    """Train and evaluate one run from scratch (a killed run's checkpoints are removed first); return its record."""
    run_dir = args.runs_dir / f"{name}-{method}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    clock, cpu = time.perf_counter(), time.process_time()
    result = learning.train_one(
        name,
        method,
        seed,
        {"path": warm["path"], "evaluation": start["evaluation"]},
        args,
        evaluator=evaluate_checkpoint,
    )
    evaluations = sorted(result["evaluations"], key=lambda e: e["step"])
    steps = [e["step"] for e in evaluations]
    shas = {e["task_seeds_sha"] for e in evaluations}
    if len(shas) != 1:
        raise RuntimeError(f"{name}/{method}/seed{seed}: checkpoints played different evaluation episodes.")
    kl = kl_at_checkpoints(result.get("curves", {}).get("kl", []), steps)
    checkpoints = [{**e, "kl": k} for e, k in zip(evaluations, kl)]
    return {
        "benchmark": name,
        "method": method,
        "seed": seed,
        "status": "complete",
        "fingerprint": fingerprint(args, method, warm["digest"]),
        "warm_start": {"path": warm["path"], "digest": warm["digest"]},
        "env_id": args.env_id[name],
        "eval_task_seeds": shas.pop(),
        "train_seconds": result.get("train_seconds"),
        "eval_seconds": round(sum(e.get("eval_seconds") or 0 for e in evaluations[1:]), 1),
        "wall_seconds": round(time.perf_counter() - clock, 1),
        # This process's CPU time (all its threads; not the env's JVM, a child process), for sizing the study.
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "checkpoints": checkpoints,
        "curves": result.get("curves", {}),
        "settings": settings_of(args),
    }


# ------------------------------------------------------------------------------------------------------ manifest
def continue_command(argv: list[str]) -> str:
    """The command that continues the whole study: this invocation's settings (methods, seeds, steps, ...), less the
    one-off flags (``--status``, ``--analyse``, ``--max-runs``, ``--stop-after-hours``) and the benchmark selection."""
    one_off = ("--status", "--analyse", "--max-runs", "--stop-after-hours", "--benchmarks")
    kept, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg.split("=")[0] in one_off
        if not skipping:
            kept.append(arg)
    return ("nice -n 15 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study.py " + shlex.join(kept)).strip()


def manifest(options: argparse.Namespace, warm: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What is done, left, running or waiting, for every benchmark of the table (whichever this invocation ran),
    with measured costs."""
    out: dict[str, Any] = {
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "plan": {
            "methods": options.methods,
            "seeds": options.seeds,
            "steps": options.steps,
            "eval_every": options.eval_every,
        },
        "continue": continue_command(options.argv),
        "benchmarks": {},
    }
    total_left = 0
    for name in BENCHMARKS:
        state = warm[name]
        entry: dict[str, Any] = {"status": state["status"], "warm_start": BENCHMARKS[name]["warm_start"]}
        runs: dict[str, list[str]] = {"done": [], "left": [], "running": [], "stale": [], "broken": []}
        seconds = []
        for seed in options.seeds:
            for method in options.methods:
                label = f"{method}-seed{seed}"
                path = run_path(options, name, method, seed)
                if state["status"] == "ready":
                    args = learning_args(name, BENCHMARKS[name], options)
                    verdict = run_state(path, fingerprint(args, method, state["digest"]))
                else:
                    verdict = "missing"
                if verdict == "done":
                    runs["done"].append(label)
                    run = read_json(path) or {}
                    seconds.append(
                        (run.get("train_seconds") or 0, run.get("eval_seconds") or 0, run.get("cpu_seconds"))
                    )
                    continue
                if lock_owner(options.runs_dir / name / f"{label}.lock") is not None:
                    runs["running"].append(label)
                if verdict in ("stale", "broken"):
                    runs[verdict].append(label)
                runs["left"].append(label)
        entry.update(runs)
        if seconds:
            train = sum(s[0] for s in seconds) / len(seconds)
            evals = sum(s[1] for s in seconds) / len(seconds)
            cpus = [s[2] for s in seconds if s[2] is not None]
            entry["measured"] = {
                "train_seconds_per_run": round(train, 1),
                "eval_seconds_per_run": round(evals, 1),
                "wall_hours_left": round(len(runs["left"]) * (train + evals) / 3600, 2),
            }
            if cpus:
                entry["measured"]["cpu_seconds_per_run"] = round(sum(cpus) / len(cpus), 1)
                entry["measured"]["cpu_hours_left"] = round(len(runs["left"]) * sum(cpus) / len(cpus) / 3600, 2)
        if state["status"] == "ready":
            entry["status"] = "complete" if not runs["left"] else "in progress" if runs["done"] else "ready"
        total_left += len(runs["left"])
        out["benchmarks"][name] = entry
    out["runs_left"] = total_left
    return out


def write_manifest(options: argparse.Namespace, warm: dict[str, dict[str, Any]]) -> dict[str, Any]:
    data = manifest(options, warm)
    write_json(options.results_dir / "manifest.json", data)
    lines = [
        "# Study manifest",
        "",
        f"Updated {data['updated']}. Plan: {data['plan']}. Runs left: {data['runs_left']}.",
        "",
        f"Continue with: `{data['continue']}`",
        "",
        "| benchmark | status | done | left | running | stale / half-written (redone) | cost per run (measured) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in data["benchmarks"].items():
        cost = entry.get("measured")
        cost_text = (
            f"wall: train {cost['train_seconds_per_run']} s + eval {cost['eval_seconds_per_run']} s; "
            f"{cost['wall_hours_left']} h left"
            + (f" ({cost['cpu_hours_left']} CPU-h)" if "cpu_hours_left" in cost else "")
            if cost
            else "-"
        )
        lines.append(
            f"| {name} | {entry['status']} | {len(entry['done'])} | {len(entry['left'])} | "
            f"{', '.join(entry['running']) or '-'} | {', '.join(entry['stale'] + entry['broken']) or '-'} | "
            f"{cost_text} |"
        )
    (options.results_dir / "manifest.md").write_text("\n".join(lines) + "\n")
    return data


# ------------------------------------------------------------------------------------------------------ main loops
def run_study(options: argparse.Namespace) -> dict[str, Any]:
    """Run (or continue) every run that is left, benchmark by benchmark, seed by seed, all methods of a seed
    together (so a partial study stays paired); update the manifest after every run."""
    started = time.monotonic()
    trained = 0
    selected = set(options.benchmarks)
    warm = {
        name: prepare_warm_start(
            name, bench, learning_args(name, bench, options), build=name in selected and not options.status
        )
        for name, bench in BENCHMARKS.items()
    }
    write_manifest(options, warm)
    if options.status:
        return manifest(options, warm)
    for name in options.benchmarks:
        if warm[name]["status"] != "ready":
            print(f"[study] {name}: {warm[name]['status']}", flush=True)
            continue
        args = learning_args(name, BENCHMARKS[name], options)
        episodes = args.eval_tasks * args.eval_episodes_per_task
        if episodes < options.min_eval_episodes:
            raise ValueError(f"{name}: {episodes} evaluation episodes per checkpoint < {options.min_eval_episodes}")
        start = step_zero(name, args, warm[name])
        for seed in options.seeds:
            for method in options.methods:
                if options.max_runs is not None and trained >= options.max_runs:
                    return write_manifest(options, warm)
                if options.stop_after_hours and time.monotonic() - started > 3600 * options.stop_after_hours:
                    return write_manifest(options, warm)
                path = run_path(options, name, method, seed)
                if run_state(path, fingerprint(args, method, warm[name]["digest"])) == "done":
                    continue
                with run_lock(args.runs_dir / f"{method}-seed{seed}.lock") as mine:
                    if not mine:
                        print(f"[study] {name}/{method}-seed{seed}: another process is running it", flush=True)
                        continue
                    print(f"[study] {name}/{method}-seed{seed}: training", flush=True)
                    record = run_one(name, method, seed, args, warm[name], start)
                    write_json(path, record)
                    if not options.keep_checkpoints:
                        shutil.rmtree(args.runs_dir / f"{name}-{method}-seed{seed}", ignore_errors=True)
                trained += 1
                finals = [(c["step"], c["success_rate"]) for c in record["checkpoints"]]
                print(f"[study] {name}/{method}-seed{seed}: {finals}, {record['wall_seconds']} s", flush=True)
                write_manifest(options, warm)
    return write_manifest(options, warm)


def load_runs(results_dir: Path, name: str) -> list[dict[str, Any]]:
    """Every finished run file of a benchmark (half-written ones are skipped)."""
    runs = [read_json(p) for p in sorted((results_dir / name).glob("*-seed*.json"))]
    return [r for r in runs if isinstance(r, dict) and r.get("status") == "complete"]


def analyse(options: argparse.Namespace) -> dict[str, Any]:
    """Paired comparisons, curves and plots of every benchmark with finished runs; ``analysis.json`` and
    ``summary.md`` in the results folder."""
    status = read_json(options.results_dir / "manifest.json") or {}
    report: dict[str, Any] = {}
    for name in options.benchmarks:
        runs = load_runs(options.results_dir, name)
        if not runs:
            report[name] = {"status": status.get("benchmarks", {}).get(name, {}).get("status", "no finished runs yet")}
            continue
        analysis = study_analysis.analyse_benchmark(runs, n_boot=options.n_boot, seed=0)
        analysis["plot"] = str(study_analysis.plot_benchmark(name, analysis, options.results_dir / f"{name}.png"))
        report[name] = analysis
    write_json(options.results_dir / "analysis.json", report)
    (options.results_dir / "summary.md").write_text(study_analysis.summary_markdown(report, status.get("plan")))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--methods", nargs="+", choices=sorted(learning.METHODS), default=list(DEFAULT_METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--eval-every", type=int, default=10, help="checkpoint (and evaluate) every N steps")
    parser.add_argument("--eval-tasks", type=int, default=None, help="override every row's test seeds")
    parser.add_argument("--eval-episodes-per-task", type=int, default=None, help="override every row's repeats")
    parser.add_argument("--eval-seed", type=int, default=0, help="sampling seed of every evaluation")
    parser.add_argument("--min-eval-episodes", type=int, default=MIN_EVAL_EPISODES)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--runs-dir", type=Path, default=RUNS, help="checkpoints and locks (deleted after a run)")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after training this many runs")
    parser.add_argument("--stop-after-hours", type=float, default=None, help="start no run after this long")
    parser.add_argument("--status", action="store_true", help="train nothing: write and print the manifest")
    parser.add_argument("--analyse", action="store_true", help="train nothing: statistics, plots, summary.md")
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = build_parser().parse_args(argv)
    options.argv = argv
    options.results_dir.mkdir(parents=True, exist_ok=True)
    if options.analyse:
        report = analyse(options)
        print((options.results_dir / "summary.md").read_text())
        return report
    data = run_study(options)
    print(json.dumps({k: data[k] for k in ("runs_left", "continue")}, indent=1))
    for name, entry in data["benchmarks"].items():
        print(f"  {name}: {entry['status']} ({len(entry['done'])} done, {len(entry['left'])} left)")
    return data


if __name__ == "__main__":
    main()
