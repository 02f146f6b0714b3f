"""Hub push/pull and model cards, with the Hub faked at the huggingface_hub API boundary (HfApi methods).

The round trip writes exactly the files a push would upload into a local "repo" directory and plays the agent from
there, through the card's own command and Python snippet: if the allow-list forgot a file, or a snippet is wrong,
the agent does not load or the snippet fails.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi, ModelCard

from trl_empg.hub import push as hub
from trl_empg.hub.cards import hub_model_id, method_name, redact, render_model_card
from trl_empg.hub.push import RUN_CONFIG_NAME, push_run, require_hub_token, save_run_config, upload_plan
from trl_empg.train import parse_args

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
# A local absolute path in running text (the card's URLs contain "/" only after a host name).
ABSOLUTE_PATH = re.compile(r"(?:^|[\s`'\"(=\[])(?:/|~/)(?:home|tmp|root|Users|var|work|mnt|private)\b")


def _report(model: str, split: str = "test", success: float = 0.5) -> dict:
    return {
        "model": model,
        "env_id": "twx:coin",
        "split": split,
        "num_episodes": 4,
        "success_rate": success,
        "success_ci": [0.15, 0.85],
        "confidence_level": 0.95,
        "mean_score": success,
        "mean_steps": 5.5,
        "settings": {"greedy": False, "temperature": 1.0, "env_kwargs": {}},
    }


@pytest.fixture
def run_dir(tmp_path, twx_agent_dir, monkeypatch):
    """A training output directory as train.py leaves it, plus the files a push must never upload."""
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    run.mkdir()
    for path in twx_agent_dir.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    script, training, model = parse_args(
        ["--config", "recipes/quickstart.yaml", "--model_name_or_path", str(twx_agent_dir), "--output_dir", str(run)]
    )
    training.hub_token = TOKEN  # must never reach the card or run_config.json
    save_run_config(run, script, training, model)
    (run / "training_args.bin").write_bytes(b"pickled args holding " + TOKEN.encode())
    (run / "README.md").write_text(f"---\nbase_model: {twx_agent_dir}\n---\nTRL's generic card\n")
    (run / "train.log").write_text("log\n")
    (run / "eval_test.json").write_text(json.dumps(_report(str(run))))
    (run / "eval_results.json").write_text(json.dumps({"eval_loss": 1.0}))  # Trainer metrics: not a report
    (run / "training_curves.png").write_bytes(b"\x89PNG fake")
    checkpoint = run / "checkpoint-1"
    checkpoint.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        (checkpoint / name).write_bytes((run / name).read_bytes())
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        (checkpoint / name).write_bytes(b"state")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": [{"loss": 0.1, "step": 1}]}))
    return run


class FakeHub:
    """Records what push/pull would send to the Hub; any other HfApi call fails (HF_HUB_OFFLINE is set)."""

    def __init__(self, monkeypatch, user: str = "alice") -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        self.user = user
        fake = self

        def create_repo(self, repo_id, **kwargs):
            fake.calls.append(("create_repo", (repo_id,), kwargs))
            return SimpleNamespace(repo_id=repo_id)

        def create_branch(self, repo_id, **kwargs):
            fake.calls.append(("create_branch", (repo_id,), kwargs))

        def create_commit(self, repo_id, operations, **kwargs):
            fake.calls.append(("create_commit", (repo_id,), kwargs))
            for operation in operations:
                with operation.as_file() as handle:
                    fake.uploaded[operation.path_in_repo] = handle.read()
            return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

        def whoami(self, *args, **kwargs):
            fake.calls.append(("whoami", args, kwargs))
            return {"name": fake.user}

        def snapshot_download(self, repo_id, **kwargs):
            fake.calls.append(("snapshot_download", (repo_id,), kwargs))
            return str(kwargs["local_dir"])

        for name, method in [
            ("create_repo", create_repo),
            ("create_branch", create_branch),
            ("create_commit", create_commit),
            ("whoami", whoami),
            ("snapshot_download", snapshot_download),
        ]:
            monkeypatch.setattr(HfApi, name, method)

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


# ----------------------------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------------------------


def test_require_hub_token_sources(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    assert require_hub_token("hf_explicit") == "hf_explicit"
    monkeypatch.setattr(hub, "get_token", lambda: "hf_saved_by_login")
    assert require_hub_token() == "hf_saved_by_login"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert require_hub_token() == "hf_from_env"


def test_missing_token_fails_fast_with_login_instructions(monkeypatch, run_dir):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    fake = FakeHub(monkeypatch)
    with pytest.raises(RuntimeError, match="hf auth login") as error:
        push_run(run_dir, "alice/agent")
    assert "HF_TOKEN" in str(error.value) and "--token" in str(error.value)
    assert fake.calls == []  # nothing was sent, no repo was created


# ----------------------------------------------------------------------------------------------------------------
# Push: exactly the allow-list
# ----------------------------------------------------------------------------------------------------------------

MODEL_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


def test_push_uploads_exactly_the_allow_list(monkeypatch, run_dir):
    fake = FakeHub(monkeypatch)
    info = push_run(run_dir, "alice/tiny-coin", token=TOKEN, private=True)
    assert info.commit_url.startswith("https://huggingface.co/alice/tiny-coin")
    assert fake.names() == ["create_repo", "create_commit"]
    assert fake.calls[0][2]["private"] is True and fake.calls[0][2]["exist_ok"] is True
    assert set(fake.uploaded) == MODEL_FILES | {
        "README.md",
        RUN_CONFIG_NAME,
        "eval/eval_test.json",
        "plots/training_curves.png",
    }
    for name, content in fake.uploaded.items():  # the weights are uploaded byte for byte
        if name in MODEL_FILES:
            assert content == (run_dir / name).read_bytes(), name
    for name, content in fake.uploaded.items():
        text = content.decode("utf-8", errors="replace")
        assert TOKEN not in text, name
        assert str(run_dir) not in text and str(run_dir.parent) not in text, name
    config = json.loads(fake.uploaded[RUN_CONFIG_NAME])
    assert "hub_token" not in config["training"] and config["training"]["output_dir"] == "<local path>"
    assert config["model"]["model_name_or_path"] == "<local path>"
    report = json.loads(fake.uploaded["eval/eval_test.json"])
    assert report["model"] == "alice/tiny-coin" and report["success_rate"] == 0.5
    card = fake.uploaded["README.md"].decode()
    assert "![training curves](plots/training_curves.png)" in card
    assert 'HFPolicy.from_pretrained("alice/tiny-coin"' in card


def test_push_checkpoints_only_when_asked_and_optimizer_states_separately(monkeypatch, run_dir):
    fake = FakeHub(monkeypatch)
    push_run(run_dir, "alice/tiny-coin", token=TOKEN, include_checkpoints=True)
    checkpoint_files = {name for name in fake.uploaded if name.startswith("checkpoint-1/")}
    assert checkpoint_files == {
        "checkpoint-1/model.safetensors",
        "checkpoint-1/config.json",
        "checkpoint-1/tokenizer.json",
        "checkpoint-1/tokenizer_config.json",
        "checkpoint-1/trainer_state.json",
    }
    fake.uploaded.clear()
    push_run(run_dir, "alice/tiny-coin", token=TOKEN, include_checkpoints=True, include_optimizer_states=True)
    states = {name for name in fake.uploaded if name.startswith("checkpoint-1/")} - checkpoint_files
    assert states == {"checkpoint-1/optimizer.pt", "checkpoint-1/scheduler.pt", "checkpoint-1/rng_state.pth"}
    assert not any(name.endswith("training_args.bin") for name in fake.uploaded)
    with pytest.raises(ValueError, match="include_checkpoints"):
        upload_plan(run_dir, "alice/tiny-coin", include_optimizer_states=True)


def test_push_to_own_namespace_and_branch(monkeypatch, run_dir):
    fake = FakeHub(monkeypatch, user="bob")
    push_run(run_dir, "tiny-coin", token=TOKEN, revision="experiment")
    assert fake.names() == ["whoami", "create_repo", "create_branch", "create_commit"]
    assert {args[0] for name, args, _ in fake.calls if name != "whoami"} == {"bob/tiny-coin"}
    assert fake.calls[-1][2]["revision"] == "experiment"
    card = fake.uploaded["README.md"].decode()
    assert "--model bob/tiny-coin" in card and json.loads(fake.uploaded["eval/eval_test.json"])["model"] == (
        "bob/tiny-coin"
    )


def test_push_refuses_files_with_tokens_and_runs_without_weights(monkeypatch, run_dir, tmp_path):
    fake = FakeHub(monkeypatch)
    config = json.loads((run_dir / "tokenizer_config.json").read_text())
    (run_dir / "tokenizer_config.json").write_text(json.dumps({**config, "note": f"token {TOKEN}"}))
    with pytest.raises(ValueError, match="tokenizer_config.json contains what looks like"):
        push_run(run_dir, "alice/tiny-coin", token=TOKEN)
    with pytest.raises(ValueError, match="not a trl-empg evaluation report"):
        upload_plan(run_dir, "alice/tiny-coin", eval_files=[run_dir / "eval_results.json"])
    (run_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="No model weights"):
        push_run(run_dir, "alice/tiny-coin", token=TOKEN)
    assert "create_commit" not in fake.names()


def test_adapter_base_model_must_be_a_hub_id(monkeypatch, run_dir):
    fake = FakeHub(monkeypatch)
    (run_dir / "model.safetensors").rename(run_dir / "adapter_model.safetensors")
    (run_dir / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(run_dir.parent / "base"), "peft_type": "LORA", "r": 8})
    )
    with pytest.raises(ValueError, match="--base-model"):
        upload_plan(run_dir, "alice/adapter")
    push_run(run_dir, "alice/adapter", token=TOKEN, base_model="Qwen/Qwen2.5-0.5B-Instruct")
    adapter_config = json.loads(fake.uploaded["adapter_config.json"])
    assert adapter_config == {"base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "peft_type": "LORA", "r": 8}
    assert "adapter_model.safetensors" in fake.uploaded and "model.safetensors" not in fake.uploaded


def test_pull_skips_checkpoints_unless_asked(monkeypatch, tmp_path):
    fake = FakeHub(monkeypatch)
    assert hub.pull_run("alice/tiny-coin", tmp_path / "a") == tmp_path / "a"
    assert fake.calls[-1][2]["ignore_patterns"] == ["checkpoint-*/**"]
    hub.pull_run("alice/tiny-coin", tmp_path / "b", revision="v1", include_checkpoints=True)
    assert fake.calls[-1][2]["ignore_patterns"] is None and fake.calls[-1][2]["revision"] == "v1"


def test_cli_push_pull_card(monkeypatch, run_dir, tmp_path, capsys):
    from trl_empg.cli import main

    for command in ("push", "pull", "card"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        help_text = capsys.readouterr().out
        assert "--repo_id" in help_text and "(default:" in help_text
    with pytest.raises(SystemExit):
        main(["push", "--help"])
    help_text = capsys.readouterr().out
    assert "--private" in help_text and "--token" in help_text and "--eval_files" in help_text
    assert "training_args.bin" in help_text  # the help says what is never uploaded
    fake = FakeHub(monkeypatch)
    main(["push", "--run_dir", str(run_dir), "--repo-id", "alice/tiny-coin", "--token", TOKEN, "--private"])
    assert "Pushed" in capsys.readouterr().out and "README.md" in fake.uploaded
    main(["pull", "alice/tiny-coin", "--local_dir", str(tmp_path / "pulled")])  # the positional form still works
    assert fake.calls[-1][0] == "snapshot_download"
    main(["card", "--run_dir", str(run_dir), "--repo_id", "alice/tiny-coin", "--output", str(tmp_path / "card.md")])
    assert (tmp_path / "card.md").read_bytes() == fake.uploaded["README.md"]
    config = tmp_path / "card.yaml"  # every subcommand reads a --config file; unknown keys fail
    config.write_text(f"run_dir: {run_dir}\nrepo_id: alice/tiny-coin\noutput: {tmp_path / 'card2.md'}\n")
    main(["card", "--config", str(config)])
    assert (tmp_path / "card2.md").read_bytes() == fake.uploaded["README.md"]
    config.write_text(f"run_dir: {run_dir}\nrepo_id: alice/tiny-coin\nrepo: x\n")
    with pytest.raises(ValueError, match="repo"):
        main(["card", "--config", str(config)])


@pytest.mark.parametrize("bad", ["alice/tiny--coin", "a/b/c", "-alice/agent", "alice/agent.git"])
def test_repo_ids_are_checked_by_huggingface_hub_before_anything_happens(monkeypatch, run_dir, tmp_path, bad):
    fake = FakeHub(monkeypatch)
    with pytest.raises(ValueError, match="not a valid Hugging Face Hub repo id") as error:
        push_run(run_dir, bad, token=TOKEN)
    assert repr(bad) in str(error.value) and fake.calls == []
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        hub.pull_run(bad, tmp_path / "pulled")
    with pytest.raises(ValueError, match="not a valid Hugging Face Hub repo id"):
        hub.render_run_card(run_dir, bad)
    assert fake.calls == []


# ----------------------------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------------------------


def test_card_metadata_for_a_qwen_recipe(monkeypatch):
    monkeypatch.chdir(REPO)
    script, training, model = parse_args(["--config", "recipes/quickstart.yaml", "--loss_type", "dapo"])
    config = hub.run_config(script, training, model)
    config["training"].update(epsilon_high=0.28)
    config["model"].update(
        model_name_or_path="Qwen/Qwen2.5-7B-Instruct", use_peft=True, load_in_4bit=True, lora_r=32, lora_alpha=64
    )
    reports = [_report("alice/agent", "test", 0.7), _report("alice/agent", "dev", 0.8)]
    text = render_model_card(config["training"], "alice/agent", eval_results=reports, model_config=config["model"])
    card = ModelCard(text)
    assert card.data.library_name == "peft" and card.data.base_model == "Qwen/Qwen2.5-7B-Instruct"
    assert card.data.pipeline_tag == "text-generation" and card.data.license == "apache-2.0"
    assert {"trl", "trl-empg", "empg", "dapo", "reinforcement-learning", "agent", "textworld-express", "qlora"} <= set(
        card.data.tags
    )
    results = {(r.dataset_split, r.metric_type): r for r in card.data.eval_results}
    assert (
        results[("test", "success_rate")].metric_value == 0.7 and results[("dev", "success_rate")].metric_value == 0.8
    )
    assert results[("test", "mean_steps")].dataset_type == "twx:coin"
    assert card.data.eval_results[0].task_type == "reinforcement-learning"
    assert "DAPO+EMPG" in text and "QLoRA" in text and "| `empg_zeta` | 0.1 |" in text
    assert "arXiv:2509.09265" in text and "Jiawei Wang and Jiacai Liu" in text and "vonwerra2020trl" in text
    assert "0.700 [0.150, 0.850]" in text


ROLLOUT = {
    "max_turns": 50,
    "max_turn_tokens": 256,
    "max_completion_length": 16384,
    "prompt_style": "react",
    "show_admissible_actions": True,
    "temperature": 1.0,
}


def test_card_never_shows_secrets_or_local_paths(tmp_path):
    home = "/home/alice/secret-project"
    training = {
        "env_id": "alfworld",
        "env_kwargs": {"data_dir": f"{home}/alfworld", "api_key": "sk-live-123", "max_steps": 50},
        "hub_token": TOKEN,
        "output_dir": str(tmp_path / "run"),
        "logging_dir": f"{home}/logs",
        "modulation": "empg",
        "note": f"pushed with {TOKEN}",
        **ROLLOUT,
    }
    model = {"model_name_or_path": f"{home}/base", "use_peft": False}
    text = render_model_card(training, "alice/agent", eval_results=[_report(f"{home}/run")], model_config=model)
    for secret in (TOKEN, "sk-live-123", home, str(tmp_path), "/home/", "secret-project"):
        assert secret not in text
    assert not ABSOLUTE_PATH.search(text), ABSOLUTE_PATH.search(text)
    assert "| `max_turn_tokens` | 256 |" in text  # counts named "...tokens" are kept
    assert "base_model" not in ModelCard(text).data.to_dict()
    with pytest.raises(ValueError, match="relative"):
        render_model_card(training, "alice/agent", plots=[f"{home}/curve.png"])
    without_turn_tokens = {key: value for key, value in training.items() if key != "max_turn_tokens"}
    with pytest.raises(ValueError, match="max_turn_tokens"):  # never a card that replays the agent differently
        render_model_card(without_turn_tokens, "alice/agent")


def test_redact_and_names(monkeypatch):
    monkeypatch.chdir(REPO)
    assert redact({"hub_token": "x", "max_turn_tokens": 8, "nested": [{"password": "p", "path": "/tmp/x"}]}) == {
        "max_turn_tokens": 8,
        "nested": [{"path": "<local path>"}],
    }
    assert hub_model_id("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_model_id("/abs/model") is None and hub_model_id("./model") is None and hub_model_id("a/b/c") is None
    assert hub_model_id("recipes") is None  # an existing local directory, from the repo root
    assert method_name({"loss_type": "grpo", "modulation": "none"}) == "GRPO"
    assert method_name({"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28, "modulation": "empg"}) == (
        "DAPO+EMPG"
    )
    assert method_name({"loss_type": "dapo", "epsilon_high": None, "modulation": "empg"}) == "GRPO+EMPG"


# ----------------------------------------------------------------------------------------------------------------
# Round trip: the uploaded files alone make a playable agent, and the card's snippets play it
# ----------------------------------------------------------------------------------------------------------------


def _code_block(card: str, language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", card, re.DOTALL)
    assert match, f"no {language} block in the card"
    return match.group(1)


def test_round_trip_pushed_files_play_through_the_cards_snippets(monkeypatch, run_dir, tmp_path, capsys):
    fake = FakeHub(monkeypatch)
    push_run(run_dir, "alice/tiny-coin", token=TOKEN)
    repo = tmp_path / "hub-repo"  # the pushed repo, as `trl-empg pull` would download it
    for name, content in fake.uploaded.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(content)
    card = (repo / "README.md").read_text()

    # The Python snippet, pointed at the downloaded repo and cut to 2 tasks.
    snippet = _code_block(card, "python").replace('"alice/tiny-coin"', repr(str(repo))).replace("[:8]", "[:2]")
    exec(compile(snippet, "card-snippet", "exec"), {})
    assert "success rate:" in capsys.readouterr().out

    # The `trl-empg eval` command, with the same settings, on 2 seeds: a report in the schema the card renders.
    evaluation = pytest.importorskip("trl_empg.workflows.evaluation")
    from trl_empg.cli import main

    argv = shlex.split(_code_block(card, "bash").replace("\\\n", " "))
    assert argv[:2] == ["trl-empg", "eval"]
    argv = [str(repo) if word == "alice/tiny-coin" else word for word in argv[1:]]
    argv[argv.index("--num_tasks") + 1] = "2"
    argv[argv.index("--output") + 1] = str(tmp_path / "eval_round_trip.json")
    main(argv)
    report = json.loads((tmp_path / "eval_round_trip.json").read_text())
    assert report["num_episodes"] == 2 and report["env_id"] == "twx:coin" and 0.0 <= report["success_rate"] <= 1.0
    assert hasattr(evaluation, "evaluate_agent")
    rerendered = hub.render_run_card(repo, "alice/tiny-coin", eval_files=[tmp_path / "eval_round_trip.json"])
    assert f"| 2 | {report['success_rate']:.3f} [" in rerendered


def test_card_says_a_run_started_from_a_model_converted_from_gguf(tmp_path):
    """A run whose warm start began from a convert-gguf directory: the card says what those weights are."""
    from trl_empg.workflows.gguf import PROVENANCE_NAME

    converted, warm, run = tmp_path / "smollm2-bf16", tmp_path / "sft", tmp_path / "rl"
    for path in (converted, warm, run):
        path.mkdir()
    description = "Weights dequantised from the Q4_1 GGUF file X.gguf, saved in bfloat16; not the original weights."
    (converted / PROVENANCE_NAME).write_text(json.dumps({"description": description}))
    for path, start in ((warm, converted), (run, warm)):
        training = {
            "env_id": "twx:coin", "max_turns": 5, "max_turn_tokens": 16, "max_completion_length": 256,
            "prompt_style": "plain", "show_admissible_actions": True, "temperature": 1.0,
        }  # fmt: skip
        config = {"training": training, "model": {"model_name_or_path": str(start)}}
        (path / "run_config.json").write_text(json.dumps(config))
    card = hub.render_run_card(run, "alice/smol-coin")
    assert (
        "starting from `smollm2-bf16`, converted from GGUF by `trl-empg convert-gguf` (weights dequantised from the "
        "Q4_1 GGUF file X.gguf, saved in bfloat16; not the original weights)." in card
    )
    assert hub.render_run_card(run, "alice/smol-coin", start_description="my start").count("my start") == 2
