"""Measure the search env's retrieval: index build / save / load time, queries per second and recall of gold queries.

    OMP_NUM_THREADS=1 python benchmarks/search_index.py --scales 1 164 --out benchmarks/results/search/index.json

Scale 1 is the env's default offline corpus (612 passages), scale 164 a generated corpus of ~100k passages (the same
generator, every entity count multiplied). Queries are the gold plans' search queries of all splits; recall@k counts
a query as found when the passage of the entity it names is among the top k.
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
from typing import Any

import bm25s

from trl_empg.envs.search.data import generate_world
from trl_empg.envs.search.index import BM25Index


def benchmark_index(scale: int = 1, k: int = 3, num_queries: int = 5000, seed: int = 0) -> dict[str, Any]:
    """Generate a world at ``scale``, index it, save and reload the index, and time queries against it."""
    start = time.perf_counter()
    corpus, splits = generate_world(seed, scale)
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    index = BM25Index.build(corpus.contents)
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        index.save(Path(tmp) / "index")
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        index = BM25Index.load(Path(tmp) / "index")
        load_s = time.perf_counter() - start
        position = {title: i for i, title in enumerate(corpus.titles)}
        queries = [
            q for split in ("train", "dev", "test") for question in splits[split] for q in question.gold_queries
        ]
        queries = queries[:num_queries]
        start = time.perf_counter()
        hits = [index.search(query, k) for query in queries]
        one_by_one_s = time.perf_counter() - start
    found = sum(position[query] in top for query, top in zip(queries, hits))
    return {
        "scale": scale,
        "passages": len(corpus.contents),
        "questions": {split: len(questions) for split, questions in splits.items()},
        "generate_s": round(generate_s, 3),
        "index_build_s": round(build_s, 3),
        "index_save_s": round(save_s, 3),
        "index_load_s": round(load_s, 3),
        "queries": len(queries),
        "k": k,
        "queries_per_s": round(len(queries) / one_by_one_s, 1),
        "recall_at_k": round(found / len(queries), 4),
    }


def benchmark_env_start() -> dict[str, Any]:
    """Seconds to build ``make("search")`` with an empty cache (generate, write, index) and, in a fresh process,
    with the cache filled (read files, load the index)."""
    code = "import time; t = time.perf_counter(); from trl_empg.envs import make; make('search'); "
    code += "print(time.perf_counter() - t)"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TRL_EMPG_CACHE_DIR": tmp}
        runs = [float(subprocess.check_output([sys.executable, "-c", code], env=env, text=True)) for _ in range(2)]
    return {"cold_cache_s": round(runs[0], 3), "warm_cache_s": round(runs[1], 3), "includes_import": True}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 164], help="world scales (1 = 612 passages)")
    parser.add_argument("--k", type=int, default=3, help="passages per query")
    parser.add_argument("--num-queries", type=int, default=5000, help="gold queries timed per scale")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    report = {
        "bm25s": bm25s.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),  # other jobs on the box slow every timing
        "env_start": benchmark_env_start(),
        "indexes": [benchmark_index(scale, args.k, args.num_queries) for scale in args.scales],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
