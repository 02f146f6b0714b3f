"""Learning: GRPO vs GRPO+EMPG (and DAPO vs DAPO+EMPG, the seed family, EMPG ablations) from the same warm start.

For every game x method x training seed: train from that game's warm-start agent with equal steps and equal rollouts
per step, save a checkpoint every ``--eval-every`` steps, evaluate each checkpoint on the same held-out test seeds,
and record the training curves (success, reward, KL, step entropy). Writes per-run JSON, an aggregate (mean and
spread over seeds at each checkpoint) and learning-curve PNGs with bands to ``--output-dir``.

Each game needs its own warm start (the tiny agents know one game's text): pass ``--warm-start GAME=PATH``, or let
the script build it the quickstart's way (``build-tiny`` then ``sft`` on the game's gold plans with label noise) into
``OUTPUT_DIR/warm_starts/GAME``. The warm start is evaluated once per game (step 0 of every curve). Finished runs
are kept as ``GAME-METHOD-seedN.json`` and skipped when the script is run again, so a sweep can be split over
several invocations (``--aggregate-only`` then rebuilds the summary and plots from every run file present).
A game is TextWorldExpress's ``twx:GAME`` unless ``--env-id GAME=ID`` names another registry env id. The functions
here (warm start, training, checkpoint evaluation) are also the building blocks of ``benchmarks/study.py``.

    python benchmarks/learning.py --games coin mapreader --methods grpo empg dapo dapo_empg --seeds 0 1 2 \
        --warm-start coin=runs/quickstart/sft --env-kwargs coin='{"game_params": {"includeDoors": 0}}'

The defaults are the quickstart recipe's (4 tasks x 8 episodes per step, learning rate 1e-3 with 2 warm-up steps,
invalid-action penalty 0.1) but 20 steps rather than its 40 (the README's learning results use 20), plus a KL
coefficient of 0.01 so that TRL computes and logs the KL. GRPO methods use GRPO's per-episode loss normalisation
(``loss_type: grpo``), DAPO methods DAPO's token-level one with clip-higher.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trl_empg.rollout.settings import parse_env_kwargs

#: EMPGConfig overrides per method; every method shares the same rollout and optimisation settings. GRPO-based
#: methods set ``loss_type: grpo`` explicitly: TRL's default loss is DAPO's token-level one.
GRPO = {"loss_type": "grpo"}
DAPO = {"loss_type": "dapo", "epsilon_high": 0.28}
METHODS: dict[str, dict[str, Any]] = {
    "grpo": {**GRPO, "modulation": "none"},
    "empg": {**GRPO, "modulation": "empg"},
    "dapo": {**DAPO, "modulation": "none"},
    "dapo_empg": {**DAPO, "modulation": "empg"},
    "empg_scale_only": {**GRPO, "modulation": "empg", "empg_zeta": 0.0},
    "empg_bonus_only": {**GRPO, "modulation": "empg", "empg_k": 0.0},
    "aem": {**GRPO, "modulation": "aem"},
    "aepo": {**GRPO, "modulation": "none", "aepo_clip": True, "aepo_entropy_advantage": True, "epsilon_high": 0.28},
    "aepo_rollout": {**GRPO, "modulation": "none", "aepo_rollout": True},
    "epo": {**GRPO, "modulation": "none", "epo": True},
}
CURVES = ("env/success_rate", "reward", "kl", "empg/step_entropy/mean", "entropy")


def rollout_arguments(args: argparse.Namespace) -> Any:
    """The benchmark's rollout settings, for the warm start, training and every evaluation alike."""
    from trl_empg.rollout.settings import RolloutArguments

    return RolloutArguments(
        max_turns=args.max_turns,
        max_turn_tokens=args.max_turn_tokens,
        max_completion_length=args.max_completion_length,
        prompt_style=args.prompt_style,
        invalid_action_penalty=args.invalid_action_penalty,
    )


def env_id(game: str, args: argparse.Namespace) -> str:
    """The game's env id: ``--env-id GAME=ID`` when given, else TextWorldExpress's ``twx:GAME``."""
    return args.env_id.get(game) or f"twx:{game}"


def checkpoint_steps(args: argparse.Namespace) -> list[int]:
    """The training steps whose checkpoints are evaluated (every ``--eval-every`` steps; step 0 is the warm start)."""
    return list(range(args.eval_every, args.steps + 1, args.eval_every))


def evaluation_report(path: str, game: str, args: argparse.Namespace) -> dict[str, Any]:
    """The full ``evaluate_agent`` report (per-episode records included) of one checkpoint on the test split: the
    first ``--eval-tasks`` seeds, ``--eval-episodes-per-task`` sampled episodes each, evaluation seed
    ``--eval-seed``. Every checkpoint of every method therefore plays the same episodes, in the same order."""
    from trl_empg.workflows.evaluation import evaluate_agent

    return evaluate_agent(
        path,
        env_id(game, args),
        args.env_kwargs.get(game),
        rollout_arguments(args),
        split="test",
        num_tasks=args.eval_tasks,
        episodes_per_task=args.eval_episodes_per_task,
        seed=args.eval_seed,
        batch_size=32,
    )


def evaluate(path: str, game: str, args: argparse.Namespace) -> dict[str, Any]:
    """Test-split success of one checkpoint (:func:`evaluation_report`, summarised)."""
    report = evaluation_report(path, game, args)
    return {
        "success_rate": report["success_rate"],
        "ci": report["success_ci"],
        "mean_steps": report["mean_steps"],
        "invalid_action_rate": report["invalid_action_rate"],
    }


def build_warm_start(game: str, out: Path, args: argparse.Namespace) -> str:
    """Build the quickstart's kind of warm start into ``out``: ``build-tiny`` (``out/tiny``), then ``sft`` on the
    game's gold plans with ``--sft-noise`` label noise for ``--sft-steps`` steps (``out/sft``, returned)."""
    from trl_empg.workflows.sft import run_sft
    from trl_empg.workflows.tiny import build_tiny_agent

    tiny = build_tiny_agent(env_id(game, args), out / "tiny", env_kwargs=args.env_kwargs.get(game), seed=0)
    return str(
        run_sft(
            str(tiny),
            out / "sft",
            env_id(game, args),
            args.env_kwargs.get(game),
            rollout_arguments(args),
            noise=args.sft_noise,
            max_steps=args.sft_steps,
            seed=0,
        )
    )


def warm_start(game: str, args: argparse.Namespace) -> dict[str, Any]:
    """The game's warm-start agent (given, or built and fine-tuned on noisy gold plans) and its evaluation."""
    out = args.output_dir / "warm_starts" / game
    record_path = out / "warm_start.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    path = args.warm_start.get(game)
    if path is None:
        path = build_warm_start(game, out, args)
    record = {"game": game, "path": str(path), "evaluation": {"step": 0, **evaluate(str(path), game, args)}}
    out.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def train_one(
    game: str,
    method: str,
    seed: int,
    start: dict[str, Any],
    args: argparse.Namespace,
    evaluator: Callable[[str, str, argparse.Namespace], dict[str, Any]] = evaluate,
) -> dict[str, Any]:
    """Train one game x method x seed from ``start["path"]``, evaluate every checkpoint with ``evaluator(path, game,
    args)`` (``start["evaluation"]`` is step 0) and return the run record. Checkpoints go to
    ``--runs-dir/GAME-METHOD-seedN`` (default ``OUTPUT_DIR/runs``)."""
    from trl_empg import EMPGConfig, EMPGTrainer

    run_dir = (args.runs_dir or args.output_dir / "runs") / f"{game}-{method}-seed{seed}"
    config = EMPGConfig(
        output_dir=str(run_dir),
        use_cpu=args.device == "cpu",
        bf16=args.device != "cpu",
        report_to="none",
        env_id=env_id(game, args),
        env_kwargs=args.env_kwargs.get(game) or {},
        env_num_tasks=args.train_tasks,
        max_turns=args.max_turns,
        max_turn_tokens=args.max_turn_tokens,
        max_completion_length=args.max_completion_length,
        prompt_style=args.prompt_style,
        invalid_action_penalty=args.invalid_action_penalty,
        activation_checkpointing=args.device != "cpu",
        num_generations=args.num_generations,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        beta=args.beta,
        save_strategy="steps",
        save_steps=args.eval_every,
        logging_steps=1,
        seed=seed,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        **METHODS[method],
    )
    clock = time.perf_counter()
    trainer = EMPGTrainer(start["path"], args=config)
    trainer.train()
    train_seconds = time.perf_counter() - clock
    evaluations = [start["evaluation"]] + [
        {"step": step, **evaluator(str(run_dir / f"checkpoint-{step}"), game, args)} for step in checkpoint_steps(args)
    ]
    curves = {key: [(e["step"], e[key]) for e in trainer.state.log_history if key in e] for key in CURVES}
    return {
        "game": game,
        "method": method,
        "seed": seed,
        "warm_start": start["path"],
        "train_seconds": round(train_seconds, 1),
        "evaluations": evaluations,
        "curves": curves,
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread (sample std, min, max) over seeds of the test success at each checkpoint."""
    table: dict[str, Any] = {}
    for run in runs:
        for evaluation in run["evaluations"]:
            key = f"{run['game']}/{run['method']}"
            table.setdefault(key, {}).setdefault(evaluation["step"], []).append(evaluation["success_rate"])
    return {
        key: {
            str(step): {
                "mean": statistics.mean(v),
                "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                "min": min(v),
                "max": max(v),
                "seeds": len(v),
            }
            for step, v in sorted(steps.items())
        }
        for key, steps in table.items()
    }


def plot(summary: dict[str, Any], runs: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    from matplotlib.figure import Figure

    paths = []
    for game in sorted({run["game"] for run in runs}):
        figure = Figure(figsize=(14, 4.5))
        success, kl, entropy = figure.subplots(1, 3)
        for key, steps in summary.items():
            if not key.startswith(f"{game}/"):
                continue
            x = [int(s) for s in steps]
            mean = [steps[s]["mean"] for s in steps]
            success.plot(x, mean, marker="o", label=key.split("/", 1)[1])
            success.fill_between(x, [steps[s]["min"] for s in steps], [steps[s]["max"] for s in steps], alpha=0.2)
        for axis, metric, title in (
            (kl, "kl", "KL to the warm start, training"),
            (entropy, "empg/step_entropy/mean", "step entropy (nats), training"),
        ):
            for method in sorted({run["method"] for run in runs if run["game"] == game}):
                series = [run["curves"][metric] for run in runs if run["game"] == game and run["method"] == method]
                series = [s for s in series if s]
                if series:
                    length = min(len(s) for s in series)
                    axis.plot(
                        [p[0] for p in series[0][:length]],
                        [statistics.mean(s[i][1] for s in series) for i in range(length)],
                        label=method,
                    )
            axis.set_title(f"{title}\n(mean over seeds)", fontsize=10)
            axis.set_xlabel("step")
            axis.legend(fontsize=7)
        success.set_title(f"twx:{game}: test success\n(mean, min-max band over seeds)", fontsize=10)
        success.set_xlabel("step")
        success.legend(fontsize=7)
        path = out_dir / f"learning_{game}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        paths.append(path)
    return paths


def _per_game(values: list[str], flag: str) -> dict[str, str]:
    per_game = {}
    for value in values:
        game, sep, item = value.partition("=")
        if not sep or not game or not item:
            raise argparse.ArgumentTypeError(f"{flag} takes GAME=VALUE, got {value!r}")
        per_game[game] = item
    return per_game


def build_parser() -> argparse.ArgumentParser:
    """The command line (also the source of every default setting ``benchmarks/study.py`` starts from)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--warm-start",
        nargs="*",
        default=[],
        metavar="GAME=PATH",
        help="a game's warm-start agent (e.g. coin=runs/quickstart/sft); games not named get one built",
    )
    parser.add_argument(
        "--env-kwargs",
        nargs="*",
        default=[],
        metavar="GAME=JSON",
        help='a game\'s environment keyword arguments, e.g. coin=\'{"game_params": {"includeDoors": 0}}\'',
    )
    parser.add_argument(
        "--env-id",
        nargs="*",
        default=[],
        metavar="GAME=ID",
        help="a game's registry env id (e.g. search=search); default twx:GAME",
    )
    parser.add_argument("--sft-steps", type=int, default=200, help="warm-start steps of a built warm start")
    parser.add_argument("--sft-noise", type=float, default=0.25, help="label noise of a built warm start")
    parser.add_argument("--games", nargs="+", default=["coin", "mapreader"])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["grpo", "empg", "dapo", "dapo_empg"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-tasks", type=int, default=200)
    parser.add_argument("--eval-episodes-per-task", type=int, default=1, help="sampled episodes per test seed")
    parser.add_argument("--eval-seed", type=int, default=0, help="torch seed of every evaluation")
    parser.add_argument("--train-tasks", type=int, default=1000)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32, help="episodes per step (a multiple of generations)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.01, help="KL coefficient (> 0 so that KL is tracked)")
    parser.add_argument(
        "--invalid-action-penalty", type=float, default=0.1, help="subtracted from the reward per invalid action"
    )
    parser.add_argument("--max-turns", type=int, default=20)
    parser.add_argument("--max-turn-tokens", type=int, default=16)
    parser.add_argument("--max-completion-length", type=int, default=2048)
    parser.add_argument("--prompt-style", default="plain")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results/learning"))
    parser.add_argument("--runs-dir", type=Path, default=None, help="checkpoints (default OUTPUT_DIR/runs)")
    parser.add_argument(
        "--aggregate-only", action="store_true", help="train nothing: summarise and plot the run files present"
    )
    return parser


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; the per-game flags become dicts keyed by game."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps % args.eval_every:
        parser.error("--steps must be a multiple of --eval-every")
    try:
        args.warm_start = _per_game(args.warm_start, "--warm-start")
        args.env_id = _per_game(args.env_id, "--env-id")
        args.env_kwargs = {
            game: parse_env_kwargs(text, f"--env-kwargs {game}")
            for game, text in _per_game(args.env_kwargs, "--env-kwargs").items()
        }
    except (argparse.ArgumentTypeError, ValueError) as error:
        parser.error(str(error))
    return args


def main() -> None:
    args = parse_arguments()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if not args.aggregate_only:
        for game in args.games:
            start = warm_start(game, args)
            for seed in args.seeds:
                for method in args.methods:
                    path = args.output_dir / f"{game}-{method}-seed{seed}.json"
                    if path.exists():
                        continue
                    run = train_one(game, method, seed, start, args)
                    path.write_text(json.dumps(run, indent=2) + "\n")
                    print(json.dumps({k: run[k] for k in ("game", "method", "seed", "evaluations")}), flush=True)
    runs = [json.loads(p.read_text()) for p in sorted(args.output_dir.glob("*-seed*.json"))]
    if not runs:
        raise SystemExit(f"learning.py: error: no run files in {args.output_dir}")
    summary = aggregate(runs)
    plots = [str(p) for p in plot(summary, runs, args.output_dir)]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "aggregate_only"}
    report = {"benchmark": "learning", "settings": settings, "summary": summary, "plots": plots}
    (args.output_dir / "learning.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
