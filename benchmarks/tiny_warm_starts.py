"""Warm starts of the offline tiny agents on the seed benchmarks, built with the trl-empg CLI, as one resumable job.

Output (read by the study runner, ``benchmarks/study.py``):

- ``runs/warm_starts/<bench>/sft/``: THE warm start of ``<bench>`` (model, tokenizer, ``run_config.json`` with the
  env and rollout settings it was taught); ``runs/warm_starts/<bench>/tiny/`` is the untrained agent it came from.
  ``runs/`` is git-ignored: rerun this script to rebuild it.
- ``benchmarks/results/warm_starts/<bench>.json`` (committed): the exact commands, the settings, wall and CPU seconds
  per stage, test success with its Wilson 95% interval, invalid-action rate, sampled (T=1, as RL rollouts) and, where
  listed, greedy.

Benchmarks (environments generated offline, not the published benchmarks):

- ``search``: the ``search`` env without data files, a generated fictional world ("search-style");
- ``webshop``: the ``webshop`` env without data, a generated shop ("WebShop-style").

Stages per benchmark: ``build-tiny`` -> ``sft`` -> ``eval`` (test split, sampled) -> ``eval`` (greedy). A stage whose
output exists is skipped, and a benchmark whose result file exists (with the same recipe) is skipped altogether, so an
interrupted run continues with the same command::

    nice -n 15 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tiny_warm_starts.py            # all, resumable
    nice -n 15 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tiny_warm_starts.py search     # one benchmark
    .venv/bin/python benchmarks/tiny_warm_starts.py --print search                              # just the commands

What makes these agents work is the tokenizer (``build-tiny --word_pieces``): see the ``findings`` of each result.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "warm_starts"
WORK = REPO / "runs" / "warm_starts"
CLI = [str(REPO / ".venv" / "bin" / "trl-empg")] if (REPO / ".venv" / "bin" / "trl-empg").exists() else None

#: One recipe per benchmark (shell-quoted flags): the env evaluated on, the env taught on (default: the same), the RL
#: rollout settings (an RL recipe from the warm start must use the same ones), and the flags of each stage.
RECIPES: dict[str, dict[str, Any]] = {
    "search": {
        "env": """--env_id search --env_kwargs '{"top_k":3,"max_turns":4,"reward_mode":"em"}'""",
        "rollout": "--max_turns 4 --max_turn_tokens 24 --max_completion_length 1536 --prompt_style plain",
        "build_tiny": "--num_tasks 1134 --vocab_size 1024 --word_pieces true --hidden_size 64 --num_hidden_layers 2 "
        "--pretrain_steps 2500 --pretrain_copy_fraction 0.75 --seed 0",
        "sft": "--max_steps 200 --per_device_train_batch_size 16 --learning_rate 1e-2 --logging_steps 25 --seed 0",
        "eval": "--split test --num_tasks 0 --batch_size 64 --seed 0",
    },
    "webshop": {
        "env": "--env_id webshop",
        "rollout": "--max_turns 15 --max_turn_tokens 24 --max_completion_length 3500 --prompt_style plain",
        # The catalogue is shared by all splits (the goals are split), so every admissible action of the train plans
        # (click[<asin>], click[<option>]) is one token: clicking a listed product is a one-token copy.
        "build_tiny": "--num_tasks 2100 --vocab_size 1024 --word_pieces true --action_tokens true --hidden_size 64 "
        "--num_hidden_layers 2 --pretrain_steps 600 --seed 0",
        "sft": "--max_steps 200 --per_device_train_batch_size 8 --learning_rate 1e-2 --logging_steps 25 --seed 0",
        "eval": "--split test --num_tasks 0 --batch_size 64 --seed 0",
        "evals": ["sampled"],
    },
}

#: Issue #22's goal for these warm starts: test success of at least this much.
TARGET = 0.20

#: What was measured on the way to each recipe (filled in from the experiments; see the result files).
FINDINGS: dict[str, list[str]] = {
    "search": [
        "All on the default world's 492 test questions (id + ood), 2-layer 64-wide Qwen2, plain prompt, SFT batch 16, "
        "lr 1e-2; 'in context' = share of action arguments that are a substring of what the agent had seen.",
        "before (benchmarks/results/search/tiny_agent.json): default BPE 1024, no pretraining, 400 SFT steps: "
        "sampled 0.003 [0.001, 0.017] (id set), first query exact 0.0",
        "A: --word_pieces, vocab 1024, no pretraining, 200 SFT steps (442 s): greedy 0.004 [0.001, 0.015], in "
        "context 0.056, first query exact 0.0, train token accuracy 0.63",
        "B: --word_pieces, vocab 1024, corpus of all 1134 train plans, --pretrain_steps 600 "
        "(138 s), 200 SFT steps (445 s): greedy 0.033 [0.020, 0.052], in context 0.213, first query exact 0.010, "
        "train token accuracy 0.81 (it answers test questions with train-world names: memorisation, not copying)",
        "C: as B with vocab 384 and 800 pretraining steps (337 s), 200 SFT steps (406 s): greedy 0.008 "
        "[0.003, 0.021], in context 0.021, first query exact 0.0",
        "D: build-tiny and sft on the train split of world_scale 8 (a recipe's teach_env; 9072 train questions, no "
        "name seen twice), vocab 512, --num_tasks 3000, 600 pretraining steps, 250 SFT steps: sampled 0.000 "
        "[0.000, 0.008], greedy 0.000, in context 0.042, first query exact 0.006, train token accuracy 0.53: "
        "without names to memorise it copies no better (its full result file: git show e073ce4:"
        "benchmarks/results/warm_starts/search.json)",
        "E: as B with --pretrain_steps 1000 --pretrain_copy_fraction 0.5 (225 s wall): repeat probe nll 4.42 -> "
        "4.05 (first -> second copy of a 12-token corpus-frequency span; B: 9.09 -> 9.32); stopped before SFT",
        "F (this recipe): as B with --pretrain_steps 2500 --pretrain_copy_fraction 0.75 (539 s wall), 200 SFT steps "
        "(289 s wall): sampled 0.020 [0.011, 0.037], greedy 0.047 [0.031, 0.069], invalid 0.002 / 0.0, in context "
        "0.047 / 0.065, first query exact 0.004 / 0.008; probe 4.10 -> 3.81: still no induction head, the wins "
        "are mostly guessable answers (industry, country), not copied names",
        "Diagnosis: the first query is a pointer, not an induction copy: the name follows 'of' or a quote in the "
        "question but '[' in the reply, and the only earlier '[' in the context is 'search[query]' in the "
        "instructions. --word_pieces makes the name's tokens identical in both places (necessary), but a 2-layer "
        "64-wide model in <= 250 SFT steps (<= 4000 demonstrations, one first-query event each) does not learn "
        "to point at it. Neither forms an induction head: the repeat probe shows no copying in any agent built here. "
        "Not tried for lack of time: wider (128+) or deeper models, lower pretraining learning rates, 10k+ "
        "pretraining steps of copy drills until the probe shows the induction phase change, thousands of SFT steps.",
    ],
    "webshop": [
        "before (benchmarks/results/webshop/webshop_style_cpu.json): default BPE 1024, 150 SFT steps, noise 0.25: "
        "0/100 test, invalid 0.868",
        "W1 (this recipe): --word_pieces --action_tokens (vocab 2107 with the actions), corpus of all 2100 train "
        "plans, --pretrain_steps 600 (249 s wall), 200 SFT steps of 8 demonstrations (593 s wall, ~2000 tokens "
        "each), all 450 test goals sampled (241 s): 0.000 [0.000, 0.008], mean score 0.0, invalid 0.843. Replayed: "
        "0.4% of first queries use only instruction words (a word salad of product words), 83% of second actions "
        "click a product but never the listed first result (0%), 99.8% of later actions are not admissible: it "
        "emits remembered action tokens instead of copying from the page",
        "Probe (random or corpus-frequency spans of 12 tokens, each repeated once): no agent built here predicts "
        "the repeat better than the first copy (search B: nll 9.09 vs 9.32); none has an induction head, which "
        "both benchmarks need",
    ],
}


def commands(bench: str) -> list[tuple[str, list[str], Path]]:
    """The stages of ``bench``: (name, CLI arguments after ``trl-empg``, the output whose existence marks it done)."""
    out = WORK / bench
    recipe = {key: shlex.split(value) if isinstance(value, str) else value for key, value in RECIPES[bench].items()}
    env, rollout = recipe["env"], recipe["rollout"]
    teach = recipe.get("teach_env", env)
    tiny, sft = out / "tiny", out / "sft"
    stages = [
        ("build-tiny", ["build-tiny", *teach, "--output_dir", str(tiny), *recipe["build_tiny"]], tiny / "config.json"),
        (
            "sft",
            ["sft", "--model", str(tiny), "--output_dir", str(sft), *teach, *rollout, *recipe["sft"]],
            sft / "run_config.json",
        ),
        (
            "eval_sampled",
            [
                "eval",
                "--model",
                str(sft),
                *env,
                *rollout,
                *recipe["eval"],
                "--output",
                str(out / "eval_test_sampled.json"),
            ],
            out / "eval_test_sampled.json",
        ),
        (
            "eval_greedy",
            [
                "eval",
                "--model",
                str(sft),
                *env,
                *rollout,
                *recipe["eval"],
                "--greedy",
                "true",
                "--output",
                str(out / "eval_test_greedy.json"),
            ],
            out / "eval_test_greedy.json",
        ),
    ]
    return [stage for stage in stages if not stage[0].startswith("eval_") or stage[0][5:] in _evals(recipe)]


def _evals(recipe: dict[str, Any]) -> list[str]:
    # Sampled (T=1, as RL rollouts) always; greedy too unless the recipe lists fewer (WebShop-style evals are long).
    return recipe.get("evals", ["sampled", "greedy"])


def _shown(args: list[str]) -> str:
    # Paths relative to the repository, so the recorded commands run from any clone's root.
    return shlex.join(["trl-empg", *(a.replace(str(REPO) + "/", "") for a in args)])


def _summary(report_path: Path) -> dict[str, Any]:
    report = json.loads(report_path.read_text())
    keys = (
        "num_episodes",
        "success_rate",
        "success_ci",
        "mean_score",
        "mean_steps",
        "invalid_action_rate",
        "mean_step_entropy",
        "elapsed_s",
    )
    return {key: report[key] for key in keys}


def run_bench(bench: str, force: bool = False, report: bool = False) -> dict[str, Any]:
    result_path = RESULTS / f"{bench}.json"
    recipe = RECIPES[bench]
    if result_path.exists() and not force and not report:
        done = json.loads(result_path.read_text())
        if done.get("recipe") == recipe:
            print(f"{bench}: done ({result_path.relative_to(REPO)}), skipped")
            return done
    if force and (WORK / bench).exists():
        shutil.rmtree(WORK / bench)
    (WORK / bench).mkdir(parents=True, exist_ok=True)
    timing_path = WORK / bench / "stage_seconds.json"
    timings = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    cli = CLI or [sys.executable, "-m", "trl_empg"]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }
    for name, args, marker in commands(bench):
        if marker.exists() and name in timings:
            print(f"{bench}: {name} done, skipped")
            continue
        print(f"{bench}: {name}: {_shown(args)}", flush=True)
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        with open(WORK / bench / f"{name}.log", "w") as log:
            subprocess.run([*cli, *args], check=True, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        timings[name] = {
            "wall_s": round(time.perf_counter() - started, 1),
            "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        }
        timing_path.write_text(json.dumps(timings, indent=1))
    out = WORK / bench
    history = json.loads((out / "sft" / "trainer_state.json").read_text())["log_history"]
    result = {
        "what": f"tiny-agent warm start on {bench} ({'search-style' if bench == 'search' else 'WebShop-style'}: "
        "generated offline, not the published benchmark), built with the trl-empg CLI, test split",
        "warm_start_dir": str((out / "sft").relative_to(REPO)),
        "commands": [_shown(args) for _, args, _ in commands(bench)],
        "recipe": recipe,
        "stage_seconds": timings,
        "machine": "2-core CPU shared with other jobs, OMP_NUM_THREADS=1, nice 15",
        "sft_loss": [(h["step"], round(h["loss"], 4)) for h in history if "loss" in h],
        "sft_token_accuracy": [
            (h["step"], round(h["mean_token_accuracy"], 4)) for h in history if "mean_token_accuracy" in h
        ],
        **{f"test_{kind}": _summary(out / f"eval_test_{kind}.json") for kind in _evals(recipe)},
        "findings": FINDINGS[bench],
    }
    best = max(result[f"test_{kind}"]["success_rate"] for kind in _evals(recipe))
    result["target"] = {"test_success_at_least": TARGET, "met": best >= TARGET, "best_of_evals": best}
    RESULTS.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    for kind in _evals(recipe):
        print(f"{bench}: {kind} {result[f'test_{kind}']['success_rate']:.3f} {result[f'test_{kind}']['success_ci']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benches", nargs="*", default=list(RECIPES), choices=[[], *RECIPES], metavar="BENCH")
    parser.add_argument("--force", action="store_true", help="Rebuild from scratch even when results exist.")
    parser.add_argument("--print", action="store_true", help="Print the commands and exit.")
    parser.add_argument("--report", action="store_true", help="Rewrite the result file (finished stages are skipped).")
    args = parser.parse_args()
    for bench in args.benches or list(RECIPES):
        if args.print:
            print("\n".join(_shown(a) for _, a, _ in commands(bench)))
            continue
        run_bench(bench, force=args.force, report=args.report)


if __name__ == "__main__":
    main()
