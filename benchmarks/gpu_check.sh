#!/usr/bin/env bash
# GPU check, sized for one H100/H200 and ~8 minutes through the `device` tool (nothing can be downloaded there):
#   1. EMPG vs GRPO step time and peak CUDA memory in bf16, a randomly initialised model of Qwen2.5-1.5B's shape;
#   2. KV-cache reuse vs re-encoding: rollout seconds per turn at 32 episodes x 20 turns;
#   3. a 4-bit (bitsandbytes nf4) load of that model plus one QLoRA EMPG training step;
#   4. this project's rollout vs TRL's own multi-turn tool loop on identical (forced) work, 16 episodes x 5-40 turns,
#      a randomly initialised model of Qwen2.5-1.5B's configuration (its 151k vocabulary included) in bf16.
# Usage (repository root, venv built by `make install` or carried): bash benchmarks/gpu_check.sh [OUT_DIR]
# Results: OUT_DIR/{overhead_gpu.json,horizon_gpu.json,qlora_gpu.json,peer_gpu.json} and gpu_check.log, with the
# device named. Step 4 uses SmolLM2's tokenizer when runs/smollm2-135m-instruct-bf16/tokenizer*.json are carried, else
# the tiny agent's.
set -euo pipefail
out=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python
exec > >(tee "$out/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== 1. EMPG vs GRPO overhead (bf16, Qwen2.5-1.5B shape) =="
timeout 240 "$py" benchmarks/overhead.py --preset qwen2.5-1.5b --device cuda --configs grpo empg_generation \
  --rounds 2 --steps 4 --warmup 1 --batch-size 8 --num-generations 4 --completion-length 128 \
  --output "$out/overhead_gpu.json"

echo "== 2. KV-cache reuse vs re-encode, 32 episodes x 20 turns =="
timeout 150 "$py" benchmarks/horizon.py --episodes 32 --max-turns 5 20 --train-turns 0 --device cuda \
  --out "$out/horizon_gpu.json"

echo "== 3. 4-bit nf4 load + one QLoRA EMPG step =="
timeout 120 "$py" - "$out/qlora_gpu.json" <<'PY'
import json, sys, tempfile, time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import BitsAndBytesConfig, Qwen2Config, Qwen2ForCausalLM

from trl_empg import EMPGConfig, EMPGTrainer
from trl_empg.workflows.tiny import build_tokenizer

words = [f"w{i}" for i in range(4000)]
tokenizer = build_tokenizer([" ".join(words[i : i + 50]) for i in range(0, 4000, 50)], vocab_size=4096)
shape = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
             intermediate_size=8960)  # Qwen2.5-1.5B's shape, randomly initialised (its 151k vocabulary aside)
torch.manual_seed(0)
model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **shape))
path = tempfile.mkdtemp()
model.save_pretrained(path)
tokenizer.save_pretrained(path)
del model
start = time.perf_counter()
quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
config = EMPGConfig(output_dir=tempfile.mkdtemp(), bf16=True, report_to="none", save_strategy="no", max_steps=1,
                    per_device_train_batch_size=8, num_generations=4, max_completion_length=64, learning_rate=1e-4,
                    model_init_kwargs={"quantization_config": quantization, "dtype": torch.bfloat16})
dataset = Dataset.from_dict({"prompt": [" ".join(words[i : i + 32]) for i in range(64)]})
trainer = EMPGTrainer(path, lambda completions, **kw: [float(len(c) % 7) for c in completions], args=config,
                      train_dataset=dataset, processing_class=tokenizer,
                      peft_config=LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
loaded = time.perf_counter() - start
torch.cuda.reset_peak_memory_stats()
trainer.train()
result = {"device": torch.cuda.get_device_name(0), "load_s": round(loaded, 1),
          "step_s": round(time.perf_counter() - start - loaded, 1),
          "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20),
          "loss": [e["loss"] for e in trainer.state.log_history if "loss" in e],
          "quantized": type(trainer.model.base_model.model.model.layers[0].mlp.down_proj.base_layer).__name__}
print(json.dumps(result))
open(sys.argv[1], "w").write(json.dumps(result, indent=2) + "\n")
PY
echo "== 4. this project's rollout vs TRL's tool loop (bf16, Qwen2.5-1.5B configuration) =="
timeout 300 "$py" benchmarks/peer_tool_loop.py --model qwen2.5-1.5b-shape --dtype bfloat16 --device cuda \
  --episodes 16 --turns 5 10 20 40 --rounds 1 --out "$out/peer_gpu.json"
echo "done"
