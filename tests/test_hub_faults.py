"""Pushing under faults: a rejected token, a Hub answering 500 or timing out halfway through the upload.

Each failure must raise a HubPushError that says what happened and what to do, leave the run directory byte for
byte as it was and the fake repo without a commit, and the same push must succeed once the Hub is back. The Hub is
faked at the HfApi boundary (tests/test_hub.py's FakeHub); HTTP errors are huggingface_hub's own exception types.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

import test_hub
from test_hub import TOKEN, FakeHub
from trl_empg.hub.push import HubPushError, push_run, upload_plan

try:
    import httpx2 as httpx
except ImportError:  # huggingface_hub 1 uses httpx
    import httpx

REPO_ID = "alice/tiny-coin"


@pytest.fixture
def run_dir(tmp_path, twx_agent_dir, monkeypatch) -> Path:
    """test_hub's run directory: weights, tokenizer, run config, checkpoint, and files a push must never upload."""
    return test_hub.run_dir.__wrapped__(tmp_path, twx_agent_dir, monkeypatch)


def http_error(status: int) -> HfHubHTTPError:
    request = httpx.Request("POST", f"https://huggingface.co/api/models/{REPO_ID}/commit/main")
    return HfHubHTTPError(f"{status} error from the fake Hub", response=httpx.Response(status, request=request))


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash and its modification time (nothing may even be touched)."""
    return {
        str(path.relative_to(root)): f"{hashlib.sha256(path.read_bytes()).hexdigest()}@{path.stat().st_mtime_ns}"
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


class FailingCommits:
    """Replaces HfApi.create_commit: the first ``failures`` calls read half of the files, then fail with ``error``;
    later calls go to the fake Hub, which commits."""

    def __init__(self, monkeypatch, fake: FakeHub, failures: int, error: BaseException) -> None:
        self.calls = 0
        self.read_before_failing: list[str] = []
        commit = HfApi.create_commit  # the fake Hub's, installed by FakeHub
        outer = self

        def create_commit(api, repo_id, operations, **kwargs):
            outer.calls += 1
            if outer.calls > failures:
                return commit(api, repo_id, operations, **kwargs)
            for operation in operations[: len(operations) // 2]:
                with operation.as_file() as handle:
                    handle.read()
                outer.read_before_failing.append(operation.path_in_repo)
            raise error

        monkeypatch.setattr(HfApi, "create_commit", create_commit)


def expected_upload(run_dir: Path) -> dict[str, bytes]:
    plan = upload_plan(run_dir, REPO_ID)
    return {name: content if isinstance(content, bytes) else content.read_bytes() for name, content in plan.items()}


@pytest.mark.parametrize("error", [http_error(500), httpx.ReadTimeout("The read operation timed out")])
def test_upload_failing_halfway_leaves_the_run_and_repo_intact_and_a_retry_succeeds(monkeypatch, run_dir, error):
    fake = FakeHub(monkeypatch)
    before = tree_digest(run_dir)
    failing = FailingCommits(monkeypatch, fake, failures=3, error=error)
    with pytest.raises(HubPushError) as raised:
        push_run(run_dir, REPO_ID, token=TOKEN, retries=2, retry_wait=0.0)
    message = str(raised.value)
    assert message.startswith("Uploading") and "failed after 3 attempts" in message
    assert type(error).__name__ in message and "was not changed" in message and str(run_dir) in message
    assert f"trl-empg push --run_dir {run_dir} --repo_id {REPO_ID}" in message
    assert failing.calls == 3 and failing.read_before_failing  # it failed after reading files, not before
    assert fake.uploaded == {} and tree_digest(run_dir) == before
    # The Hub is back (call 4 goes through): the same push is the retry.
    info = push_run(run_dir, REPO_ID, token=TOKEN, retries=0)
    assert info.commit_url.endswith("/commit/0") and failing.calls == 4
    assert fake.uploaded == expected_upload(run_dir) and tree_digest(run_dir) == before


def test_transient_failures_are_retried_within_one_push(monkeypatch, run_dir):
    fake = FakeHub(monkeypatch)
    failing = FailingCommits(monkeypatch, fake, failures=1, error=http_error(503))
    push_run(run_dir, REPO_ID, token=TOKEN, retries=1, retry_wait=0.0)
    assert failing.calls == 2 and fake.uploaded == expected_upload(run_dir)


@pytest.mark.parametrize(("status", "words"), [(401, "rejected the access token"), (403, "may not write")])
@pytest.mark.parametrize("repo_id", ["tiny-coin", REPO_ID])
def test_a_bad_token_fails_at_once_with_what_to_do(monkeypatch, run_dir, status, words, repo_id):
    """A repo id without namespace asks whoami first, one with it creates the repo first: both refuse the token."""
    fake = FakeHub(monkeypatch)
    before = tree_digest(run_dir)

    def refuse(api, *args, **kwargs):
        fake.calls.append(("refused", args, kwargs))
        raise http_error(status)

    monkeypatch.setattr(HfApi, "whoami" if "/" not in repo_id else "create_repo", refuse)
    with pytest.raises(HubPushError, match=words) as raised:
        push_run(run_dir, repo_id, token="hf_" + "x" * 30, retries=3, retry_wait=0.0)
    assert f"Nothing in {run_dir} was changed" in str(raised.value)
    if status == 401:
        assert "hf auth login" in str(raised.value)
    assert fake.names() == ["refused"]  # not retried, nothing uploaded
    assert fake.uploaded == {} and tree_digest(run_dir) == before
    fake = FakeHub(monkeypatch)  # a good token and a working Hub again: the push goes through
    push_run(run_dir, repo_id, token=TOKEN)
    assert "README.md" in fake.uploaded and tree_digest(run_dir) == before


def test_other_hub_refusals_are_not_retried(monkeypatch, run_dir):
    fake = FakeHub(monkeypatch)
    failing = FailingCommits(monkeypatch, fake, failures=1, error=http_error(422))
    with pytest.raises(HubPushError, match="The Hub refused uploading"):
        push_run(run_dir, REPO_ID, token=TOKEN, retries=3, retry_wait=0.0)
    assert failing.calls == 1
    with pytest.raises(ValueError, match="retries"):
        push_run(run_dir, REPO_ID, token=TOKEN, retries=-1)
