"""Share trained agents on the Hugging Face Hub: what ``trl-empg push``, ``pull`` and ``card`` run (their flags are
in :mod:`trl_empg.hub.commands`).

A training run directory holds more than an agent: optimizer states, TRL's pickled ``training_args.bin`` (which
carries ``hub_token`` in clear), a generic README written by TRL/PEFT naming local paths. Uploading the folder as is
would publish all of that, so :func:`push_run` builds an explicit allow-list instead: the weights (safetensors only:
pickles can run code on load), config and tokenizer files, a model card rendered by :mod:`trl_empg.hub.cards`, the run
configuration and evaluation reports (redacted), and plots; checkpoints and their optimizer states only when asked.
Every text file is scanned for access tokens before anything is sent.

Offline boxes and CI cannot reach the Hub; everything here goes through ``huggingface_hub.HfApi`` so tests can fake
that boundary, and :func:`require_hub_token` lets training fail before it starts (TRL's trainer calls ``create_repo``
in its constructor when ``push_to_hub`` is set) rather than after hours of rollouts.

Under faults a push fails with a :class:`HubPushError` that says what to do and never touches the run directory
(pushing only reads it). A token the Hub rejects (401) or that may not write there (403) fails at once; a Hub error
(5xx, 429) or a timeout or dropped connection is retried ``retries`` times with growing waits, then reported. The
upload is one ``create_commit``, which the Hub applies all or nothing, so a push that failed halfway left the repo
as it was, and running the same push again is the retry.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

try:  # huggingface_hub 2 talks HTTP through httpx2, version 1 through httpx
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import TransportError

from .cards import render_model_card
from .facts import check_repo_id, converted_start, hub_model_id, redact

__all__ = [
    "RUN_CONFIG_NAME",
    "HubPushError",
    "load_run_config",
    "pull_run",
    "push_run",
    "render_run_card",
    "require_hub_token",
    "run_config",
    "save_run_config",
    "upload_plan",
]

#: The run configuration, written by :func:`save_run_config`: {"script", "training", "model"}.
RUN_CONFIG_NAME = "run_config.json"

_WEIGHT_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors", "adapter_model.safetensors")
_MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
# Resuming from a checkpoint needs these besides the model files (DeepSpeed keeps its states under global_step*/).
_OPTIMIZER_PATTERNS = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "latest", "global_step*/*")
_PLOT_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")
_TEXT_SUFFIXES = (".json", ".md", ".txt", ".jinja", ".yaml", ".yml")
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")
_REPORT_KEYS = frozenset({"env_id", "split", "num_episodes", "success_rate", "success_ci"})
_LOGIN_HELP = (
    "Log in once with `hf auth login` (or `huggingface-cli login`), set the HF_TOKEN environment variable, or pass "
    "--token / hub_token. Create a token with write access at https://huggingface.co/settings/tokens."
)


#: HTTP statuses worth retrying: the Hub (or a proxy in front of it) was overloaded or failed, not the request.
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_Result = TypeVar("_Result")


class HubPushError(RuntimeError):
    """A push the Hub refused or that failed on the way; the message says why and whether retrying can help."""


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _transient(error: BaseException) -> bool:
    if isinstance(error, HfHubHTTPError):
        return _status(error) in _TRANSIENT_STATUSES
    return isinstance(error, (TransportError, TimeoutError, ConnectionError))


def _hub_call(
    what: str, call: Callable[[], _Result], *, run_dir: Path, repo_id: str, retries: int, retry_wait: float
) -> _Result:
    """``call()``, retried on transient failures; every failure becomes a :class:`HubPushError` naming ``what``."""
    intact = f"Nothing in {run_dir} was changed."
    retry = f"Run the same push again to retry (trl-empg push --run_dir {run_dir} --repo_id {repo_id})."
    for attempt in range(retries + 1):
        try:
            return call()
        except (HfHubHTTPError, TransportError, TimeoutError, ConnectionError) as error:
            status = _status(error)
            if status == 401:
                raise HubPushError(
                    f"The Hub rejected the access token while {what} (401 Unauthorized): it is invalid, expired or "
                    f"revoked. {_LOGIN_HELP} {intact}"
                ) from error
            if status == 403:
                raise HubPushError(
                    f"The access token may not write to {repo_id!r} (403 Forbidden) while {what}: it needs write "
                    f"access to that namespace (fine-grained tokens: 'Write access to contents'). {intact}"
                ) from error
            if not _transient(error):
                raise HubPushError(f"The Hub refused {what}: {error} {intact}") from error
            if attempt == retries:
                raise HubPushError(
                    f"{what[0].upper()}{what[1:]} failed after {retries + 1} attempts: {type(error).__name__}: "
                    f"{error}. A Hub commit is all or nothing, so {repo_id!r} was not changed by it. {intact} {retry}"
                ) from error
            time.sleep(retry_wait * 2**attempt)  # the Hub was overloaded or the network dropped: give it time
    raise AssertionError("unreachable: the last attempt returns or raises")


def require_hub_token(token: str | None = None) -> str:
    """The Hub token to push with: ``token``, else ``HF_TOKEN``, else the one saved by ``hf auth login``.

    Call it before training when ``push_to_hub`` is set: without a token the run would otherwise fail only when TRL
    creates the repo, or at the very end when it pushes.
    """
    resolved = token or os.environ.get("HF_TOKEN") or get_token()
    if not resolved:
        raise RuntimeError(f"Pushing to the Hugging Face Hub needs an access token, and none was found. {_LOGIN_HELP}")
    return resolved


def run_config(script_args: Any, training_args: Any, model_args: Any) -> dict[str, Any]:
    """The three parsed recipe dataclasses as one redacted, JSON-able dict: ``{"script", "training", "model"}``.

    :func:`redact` drops only what can hold a credential (a blanket filter on "token" in key names would also drop
    the ``max_turn_tokens`` hyperparameter that the card's usage snippets must repeat).
    """
    config = {"script": vars(script_args), "training": training_args.to_dict(), "model": vars(model_args)}
    return redact(json.loads(json.dumps(config, default=str)))


def save_run_config(run_dir: str | Path, script_args: Any, training_args: Any, model_args: Any) -> Path:
    """Write :func:`run_config` to ``<run_dir>/run_config.json`` for the card and ``trl-empg push``.

    Training's own ``training_args.bin`` cannot serve: it is a pickle, and it holds the Hub token in clear.
    """
    path = Path(run_dir) / RUN_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    config = run_config(script_args, training_args, model_args)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load_run_config(run_dir: str | Path, recipe: str | Path | None = None) -> dict[str, Any]:
    """The run configuration: ``<run_dir>/run_config.json``, else the recipe the run was launched with.

    The recipe is parsed exactly as training parsed it (``trl_empg.train.parse_args``), so it must be the same file
    with the same command-line overrides baked in.
    """
    path = Path(run_dir) / RUN_CONFIG_NAME
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if recipe is None:
        raise FileNotFoundError(
            f"{path} does not exist: pass the recipe the run was trained with (--recipe recipe.yaml) so that the "
            "model card can describe the training."
        )
    from ..training.recipe import parse_args

    return run_config(*parse_args(["--config", str(recipe), "--dry_run"]))


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(Path(name).match(pattern) for pattern in patterns)


def _model_files(directory: Path) -> dict[str, Path]:
    """Weights, config and tokenizer files directly in ``directory``, by file name."""
    return {
        path.name: path
        for path in sorted(directory.iterdir())
        if path.is_file() and (path.name in _MODEL_FILES or _matches(path.name, _WEIGHT_PATTERNS))
    }


def _checkpoint_files(run_dir: Path, include_optimizer_states: bool) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for checkpoint in sorted(run_dir.glob("checkpoint-*")):
        if not checkpoint.is_dir():
            continue
        for name, path in _model_files(checkpoint).items():
            files[f"{checkpoint.name}/{name}"] = path
        if (checkpoint / "trainer_state.json").is_file():
            files[f"{checkpoint.name}/trainer_state.json"] = checkpoint / "trainer_state.json"
        if include_optimizer_states:
            for path in sorted(checkpoint.rglob("*")):
                relative = path.relative_to(checkpoint).as_posix()
                if path.is_file() and _matches(relative, _OPTIMIZER_PATTERNS):
                    files[f"{checkpoint.name}/{relative}"] = path
    return files


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def _adapter_config(path: Path, base_model: str | None) -> bytes | None:
    """The adapter config to upload: its base model must be a Hub id, or nobody can load the adapter from the Hub."""
    config = json.loads(path.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if hub_model_id(base) is not None and (base_model is None or base == base_model):
        return None  # upload the file unchanged
    if base_model is None:
        raise ValueError(
            f"The LoRA adapter's base model is the local path {base!r}, which nobody can load from the Hub: pass the "
            "base model's Hub id (--base-model org/name)."
        )
    return _json_bytes({**config, "base_model_name_or_path": base_model})


def _eval_report(path: Path, repo_id: str) -> dict[str, Any]:
    report = json.loads(path.read_text(encoding="utf-8"))
    missing = _REPORT_KEYS - set(report)
    if missing:
        raise ValueError(f"{path} is not a trl-empg evaluation report: missing {sorted(missing)}.")
    if hub_model_id(str(report.get("model"))) is None:
        report["model"] = repo_id  # the run directory that was evaluated is what this repo publishes
    return redact(report)


def render_run_card(
    run_dir: str | Path,
    repo_id: str,
    *,
    eval_files: Sequence[str | Path] = (),
    plot_files: Sequence[str | Path] = (),
    recipe: str | Path | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    start_description: str | None = None,
) -> str:
    """The README.md that :func:`push_run` uploads for ``run_dir``, without uploading anything.

    Reports come from ``eval_files`` plus ``<run_dir>/eval*.json``; plots (``*.png``/``*.svg``/``*.jpg`` of the run
    directory plus ``plot_files``) are referenced as ``plots/<file name>``, where the push puts them.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir, recipe)
    reports = [_eval_report(path, repo_id) for path in _eval_paths(run_dir, eval_files)]
    return _render(config, repo_id, reports, _plot_paths(run_dir, plot_files), base_model, license, start_description)


def _render(
    config: Mapping[str, Any],
    repo_id: str,
    reports: Sequence[Mapping[str, Any]],
    plots: Sequence[Path],
    base_model: str | None,
    license: str,
    start_description: str | None,
) -> str:
    return render_model_card(
        config.get("training", {}),
        repo_id,
        base_model=base_model,
        eval_results=reports,
        plots=[f"plots/{path.name}" for path in plots],
        model_config=config.get("model", {}),
        license=license,
        start_description=start_description or converted_start(config.get("model", {})),
    )


def _is_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and _REPORT_KEYS <= set(data)


def _eval_paths(run_dir: Path, eval_files: Sequence[str | Path]) -> list[Path]:
    """Every explicit report, plus the run directory's ``eval*.json`` files that are trl-empg evaluation reports (the
    Trainer's own ``eval_results.json`` metrics are not)."""
    found = [path for path in sorted(run_dir.glob("eval*.json")) if _is_report(path)]
    return _unique_names([*found, *(Path(p) for p in eval_files)], "eval/")


def _plot_paths(run_dir: Path, plot_files: Sequence[str | Path]) -> list[Path]:
    found = [p for p in sorted(run_dir.iterdir()) if p.is_file() and p.suffix.lower() in _PLOT_SUFFIXES]
    return _unique_names([*found, *(Path(p) for p in plot_files)], "plots/")


def _unique_names(paths: Sequence[Path], folder: str) -> list[Path]:
    """The files, each once; two different files with one name would overwrite each other in the repo's folder."""
    unique = list(dict.fromkeys(path.resolve() for path in paths))
    names = [path.name for path in unique]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Several files are named {duplicates}; they would overwrite each other in {folder}.")
    return unique


def upload_plan(
    run_dir: str | Path,
    repo_id: str,
    *,
    eval_files: Sequence[str | Path] = (),
    plot_files: Sequence[str | Path] = (),
    recipe: str | Path | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    start_description: str | None = None,
    include_checkpoints: bool = False,
    include_optimizer_states: bool = False,
) -> dict[str, Path | bytes]:
    """What :func:`push_run` uploads: path in the repo -> local file or generated content.

    - weights (``*.safetensors``), ``config.json``/``adapter_config.json``, generation config and tokenizer files;
    - ``README.md``: the model card; ``run_config.json``: the redacted run configuration;
    - ``eval/<name>.json``: the evaluation reports (redacted; ``model`` set to ``repo_id`` when it was a local path);
    - ``plots/<name>``: ``*.png``/``*.svg``/``*.jpg`` of the run directory plus ``plot_files``;
    - ``checkpoint-*/``: model files and ``trainer_state.json`` of each checkpoint if ``include_checkpoints``, plus
      optimizer, scheduler and RNG states if ``include_optimizer_states`` (what resuming needs; large).

    Never: ``training_args.bin`` (a pickle holding the Hub token), ``*.bin``/``*.pt`` weights outside checkpoint
    states, logs, or any other file. Raises if the run directory holds no weights or tokenizer, or if a text file to
    upload contains an access token.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Run directory {run_dir} does not exist.")
    if include_optimizer_states and not include_checkpoints:
        raise ValueError("include_optimizer_states needs include_checkpoints: optimizer states live in checkpoints.")
    files: dict[str, Path | bytes] = dict(_model_files(run_dir))
    if not any(_matches(name, _WEIGHT_PATTERNS) for name in files):
        raise FileNotFoundError(f"No model weights (*.safetensors) in {run_dir}: is it a finished training run?")
    if "tokenizer_config.json" not in files:
        raise FileNotFoundError(f"No tokenizer in {run_dir}: the agent cannot be played without it.")
    if include_checkpoints:
        files.update(_checkpoint_files(run_dir, include_optimizer_states))
    for name, content in list(files.items()):
        if Path(name).name == "adapter_config.json" and isinstance(content, Path):
            rewritten = _adapter_config(content, base_model)
            if rewritten is not None:
                files[name] = rewritten
    config = load_run_config(run_dir, recipe)
    reports = {path.name: _eval_report(path, repo_id) for path in _eval_paths(run_dir, eval_files)}
    plots = _plot_paths(run_dir, plot_files)
    card = _render(config, repo_id, list(reports.values()), plots, base_model, license, start_description)
    files["README.md"] = card.encode("utf-8")
    files[RUN_CONFIG_NAME] = _json_bytes(redact(config))
    files.update({f"eval/{name}": _json_bytes(report) for name, report in reports.items()})
    files.update({f"plots/{path.name}": path for path in plots})
    for name, content in files.items():
        _check_no_token(name, content)
    return dict(sorted(files.items()))


def _check_no_token(name: str, content: Path | bytes) -> None:
    if isinstance(content, Path):
        if content.suffix.lower() not in _TEXT_SUFFIXES:
            return
        content = content.read_bytes()
    if _HF_TOKEN.search(content.decode("utf-8", errors="replace")):
        raise ValueError(f"{name} contains what looks like a Hugging Face access token; refusing to upload it.")


def push_run(
    run_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    *,
    eval_files: Sequence[str | Path] = (),
    plot_files: Sequence[str | Path] = (),
    recipe: str | Path | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    start_description: str | None = None,
    include_checkpoints: bool = False,
    include_optimizer_states: bool = False,
    commit_message: str | None = None,
    retries: int = 3,
    retry_wait: float = 2.0,
) -> CommitInfo:
    """Upload a trained agent to the Hub repo ``repo_id`` (created if needed) as one commit; see :func:`upload_plan`.

    ``repo_id`` without a namespace goes to the token owner's namespace. ``revision`` names a branch, created from
    the default branch if it does not exist. Everything is checked (token, files, card) before the repo is created.
    Hub errors and timeouts are retried ``retries`` times, waiting ``retry_wait`` seconds and doubling; any failure
    raises :class:`HubPushError` and leaves ``run_dir`` as it was.
    """
    check_repo_id(repo_id)
    if retries < 0 or retry_wait < 0:
        raise ValueError(f"retries and retry_wait must be >= 0, got {retries} and {retry_wait}.")
    token = require_hub_token(token)
    api = HfApi(token=token)
    guarded = {"run_dir": Path(run_dir), "retries": retries, "retry_wait": retry_wait}
    if "/" not in repo_id:  # the card's snippets must name the repo users will load
        user = _hub_call("asking the Hub who owns the token", api.whoami, repo_id=repo_id, **guarded)
        repo_id = f"{user['name']}/{repo_id}"
    plan = upload_plan(
        run_dir,
        repo_id,
        eval_files=eval_files,
        plot_files=plot_files,
        recipe=recipe,
        base_model=base_model,
        license=license,
        start_description=start_description,
        include_checkpoints=include_checkpoints,
        include_optimizer_states=include_optimizer_states,
    )
    guarded["repo_id"] = repo_id
    _hub_call(
        f"creating the repo {repo_id!r}",
        lambda: api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"),
        **guarded,
    )
    if revision is not None:
        _hub_call(
            f"creating the branch {revision!r} of {repo_id!r}",
            lambda: api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model"),
            **guarded,
        )
    message = commit_message or f"Upload agent trained with trl-empg ({len(plan)} files)"

    def commit() -> CommitInfo:
        # Fresh operations per attempt: an operation that was (partly) read by a failed attempt is not reused.
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in plan.items()]
        return api.create_commit(repo_id, operations, commit_message=message, revision=revision, repo_type="model")

    return _hub_call(f"uploading {len(plan)} files to {repo_id!r}", commit, **guarded)


def pull_run(
    repo_id: str,
    local_dir: str | Path,
    token: str | None = None,
    revision: str | None = None,
    include_checkpoints: bool = False,
) -> Path:
    """Download an agent (and, with ``include_checkpoints``, its ``checkpoint-*/`` folders) into ``local_dir``.

    The result is a run directory again: play it (``trl-empg eval --model <local_dir>``), fine-tune it further
    (``model_name_or_path: <local_dir>``) or resume training (``--resume_from_checkpoint <local_dir>/checkpoint-N``,
    when the checkpoint was pushed with its optimizer states). Public repos need no token.
    """
    check_repo_id(repo_id)
    path = HfApi(token=token).snapshot_download(
        repo_id,
        repo_type="model",
        revision=revision,
        local_dir=local_dir,
        ignore_patterns=None if include_checkpoints else ["checkpoint-*/**"],
    )
    return Path(path)
