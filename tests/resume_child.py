"""A training run for tests/test_resume.py, in its own process so that it can be killed with SIGKILL.

    python tests/resume_child.py AGENT_DIR OUTPUT_DIR LOSSES_FILE MODE

MODE: ``full`` trains 4 steps; ``kill-mid-run`` kills itself (SIGKILL) when step 3 starts, after checkpoint-2 is
saved; ``kill-in-save`` kills itself halfway through writing checkpoint-3's trainer_state.json, after its weights,
optimizer and RNG states; ``resume`` resumes from the last complete checkpoint and trains to step 4. Every logged
step appends ``{"step", "loss", "pid"}`` to LOSSES_FILE (flushed, so a killed run keeps what it logged).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainerState

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_envs, for this process and its env workers

from trl_empg import EMPGConfig, EMPGTrainer  # noqa: E402 - after the path the workers inherit


class RecordLosses(TrainerCallback):
    def __init__(self, path: str, mode: str) -> None:
        self.path, self.mode = path, mode

    def on_step_begin(self, args, state, control, **kwargs):
        if self.mode == "kill-mid-run" and state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": state.global_step, "loss": logs["loss"], "pid": os.getpid()}) + "\n")


def kill_halfway_through_state_of_step_3() -> None:
    save = TrainerState.save_to_json

    def save_to_json(self: TrainerState, json_path: str) -> None:
        if self.global_step != 3:
            return save(self, json_path)
        text = json.dumps(self.__dict__, indent=2, sort_keys=True, default=str)
        with open(json_path, "w") as handle:
            handle.write(text[: len(text) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    TrainerState.save_to_json = save_to_json


def main(agent_dir: str, output_dir: str, losses: str, mode: str) -> None:
    if mode == "kill-in-save":
        kill_halfway_through_state_of_step_3()
    config = EMPGConfig(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        env_id="fake_envs:FakeEnv",
        env_num_tasks=8,
        env_workers=1,
        max_turns=3,
        max_turn_tokens=8,
        max_completion_length=96,
        prompt_style="plain",
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        report_to="none",
        seed=0,
        temperature=1.0,
    )
    model = AutoModelForCausalLM.from_pretrained(agent_dir)
    tokenizer = AutoTokenizer.from_pretrained(agent_dir)
    trainer = EMPGTrainer(model, args=config, processing_class=tokenizer, callbacks=[RecordLosses(losses, mode)])
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)


if __name__ == "__main__":
    main(*sys.argv[1:])
