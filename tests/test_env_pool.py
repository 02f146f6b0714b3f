"""EnvPool: lockstep episodes in-process and in workers, and recovery from envs that raise, hang or die."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trl_empg.envs import make
from trl_empg.envs.pool import EnvPool, StepResult

# The fake envs live next to this file; workers inherit the import path, so the registry finds them there too.
TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

FAKE = "fake_envs:FakeEnv"
TIMEOUT = 2.0


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts as exited: in a container nobody may reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.05)
    return False


def assert_ok(results: list[StepResult]) -> None:
    assert [result.error for result in results] == [None] * len(results)


# ---------------------------------------------------------------------------------------------------------------------
# Real TextWorldExpress episodes in lockstep


def play_lockstep(pool: EnvPool, tasks: list[tuple[int, str]]) -> tuple[list[list[str]], list[list[tuple]]]:
    """Play every task's gold plan at once, one action per slot per call; returns the plans and the transitions."""
    slots = list(range(len(tasks)))
    starts = pool.reset([(slot, seed, split) for slot, (seed, split) in zip(slots, tasks)])
    assert_ok(starts)
    plans = [start.info["gold_actions"] for start in starts]
    transitions: list[list[tuple]] = [[(start.observation, start.info["admissible_actions"])] for start in starts]
    running = set(slots)
    turn = 0
    while running:
        batch = [(slot, plans[slot][turn]) for slot in sorted(running) if turn < len(plans[slot])]
        results = pool.step(batch)
        assert_ok(results)
        for (slot, _), result in zip(batch, results):
            transitions[slot].append((result.observation, result.reward, result.done, result.info))
            if result.done or turn + 1 == len(plans[slot]):
                running.discard(slot)
        turn += 1
    return plans, transitions


TWX_TASKS = [(17, "train"), (10_003, "dev"), (20_005, "test")]


@pytest.fixture(scope="module")
def plain_coin() -> Iterator:
    env = make("twx:coin")
    yield env
    env.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_twx_gold_paths_in_lockstep_match_a_plain_env(plain_coin, num_workers: int) -> None:
    with EnvPool("twx:coin", num_workers=num_workers) as pool:
        plans, transitions = play_lockstep(pool, TWX_TASKS)
        assert pool.num_errors == 0
    for (seed, split), plan, episode in zip(TWX_TASKS, plans, transitions):
        *_, done, info = episode[-1]
        assert done and info["won"] and info["score"] == 1.0
        # The same actions in a plain env give the same episode (coin's gold plan itself varies between resets).
        observation, info = plain_coin.reset(seed=seed, split=split)
        expected = [(observation, info["admissible_actions"])] + [plain_coin.step(action) for action in plan]
        assert episode == expected


def test_twx_worker_killed_between_steps_is_restored_by_replay(plain_coin) -> None:
    with EnvPool("twx:coin", num_workers=2) as pool:
        tasks = [(seed, "train") for seed in (3, 4)]
        starts = pool.reset([(slot, seed, split) for slot, (seed, split) in enumerate(tasks)])
        actions = [sorted(start.info["admissible_actions"])[0] for start in starts]
        assert_ok(pool.step(list(enumerate(actions))))
        worker = pool._workers[0]
        assert worker is not None
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        results = pool.step([(slot, "look around") for slot in range(2)])
        assert_ok(results)
        assert pool.num_errors == 0
    for (seed, split), action, result in zip(tasks, actions, results):
        plain_coin.reset(seed=seed, split=split)
        plain_coin.step(action)
        assert result.observation == plain_coin.step("look around")[0]


# ---------------------------------------------------------------------------------------------------------------------
# Fake envs that misbehave


def fake_pool(num_workers: int) -> EnvPool:
    return EnvPool(FAKE, num_workers=num_workers, step_timeout=TIMEOUT, reset_timeout=30.0)


@pytest.mark.parametrize(("fault", "num_workers"), [("raise", 0), ("raise", 2), ("hang", 2), ("exit", 2)])
def test_faulty_step_fails_only_its_slot(fault: str, num_workers: int) -> None:
    # With 2 workers, worker 0 holds slots 0, 2 and 4: slot 0 answers before the fault in slot 2, slot 4 after it.
    slots = list(range(6))
    with fake_pool(num_workers) as pool:
        starts = pool.reset([(slot, slot, "train") for slot in slots])
        assert_ok(starts)
        assert_ok(pool.step([(slot, "left") for slot in slots]))
        started = time.monotonic()
        results = pool.step([(slot, fault if slot == 2 else "right") for slot in slots])
        elapsed = time.monotonic() - started

        failed = results[2]
        assert failed.error and failed.done and failed.reward == 0.0 and failed.observation == ""
        assert failed.info["won"] is False and failed.info["admissible_actions"] == []
        assert pool.num_errors == 1
        assert [result.observation for i, result in enumerate(results) if i != 2] == [
            f"train/{slot}:left,right" for slot in slots if slot != 2
        ]
        assert_ok([result for i, result in enumerate(results) if i != 2])
        if fault == "hang":
            assert TIMEOUT <= elapsed < TIMEOUT + 10

        # The other slots, restored by replay where their worker was restarted, carry on as if nothing happened.
        results = pool.step([(slot, "finish") for slot in slots if slot != 2])
        assert_ok(results)
        assert [result.observation for result in results] == [
            f"train/{slot}:left,right,finish" for slot in slots if slot != 2
        ]
        assert all(result.done and result.info["won"] for result in results)

        # The failed slot reports an error until it is reset, without raising or counting a new failure.
        again = pool.step([(2, "left")])[0]
        assert again.error and "reset it first" in again.error and again.done
        restarted = pool.reset([(2, 142, "dev")])[0]
        assert restarted.error is None and restarted.observation == "dev/142"
        assert pool.step([(2, "left")])[0].observation == "dev/142:left"
        assert pool.num_errors == 1
        if num_workers:
            same_worker = fault == "raise"
            assert (restarted.info["pid"] == starts[2].info["pid"]) == same_worker
            assert same_worker or wait_gone(starts[2].info["pid"])
            # Worker 1 was never disturbed.
            assert pool.reset([(1, 7, "train")])[0].info["pid"] == starts[1].info["pid"]


def test_replay_that_diverges_marks_the_slot_failed() -> None:
    with fake_pool(2) as pool:
        assert_ok(pool.reset([(slot, slot, "train") for slot in range(4)]))
        # Slot 0's observation names its worker's pid, so its replay in a new worker cannot reproduce it.
        assert_ok(pool.step([(0, "pid"), (2, "left")]))
        # Worker 0 times out on slot 2 before it gets to slot 0, whose step then waits behind its failed replay.
        results = pool.step([(2, "hang"), (0, "left"), (1, "left")])
        assert results[0].error and "no answer" in results[0].error
        assert results[1].error and "diverged" in results[1].error and results[1].done
        assert results[2].error is None
        assert pool.num_errors == 2
        assert "diverged" in (pool.step([(0, "left")])[0].error or "")


def test_failing_reset_is_an_error_result() -> None:
    with fake_pool(2) as pool:
        results = pool.reset([(0, 1, "train"), (1, 999, "train")])
        assert results[0].error is None
        assert results[1].error and "ValueError" in results[1].error and results[1].done
        assert pool.num_errors == 1
        assert "reset it first" in (pool.step([(1, "left")])[0].error or "")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_steps_that_cannot_run_are_errors_not_exceptions(num_workers: int) -> None:
    with fake_pool(num_workers) as pool:
        assert "never reset" in (pool.step([(5, "left")])[0].error or "")
        assert_ok(pool.reset([(0, 1, "train")]))
        finished = pool.step([(0, "finish")])[0]
        assert finished.done and finished.error is None
        late = pool.step([(0, "left")])[0]
        assert late.done and "episode is over" in (late.error or "")
        assert pool.num_errors == 0
        with pytest.raises(ValueError, match="once per call"):
            pool.step([(0, "left"), (0, "right")])
        with pytest.raises(ValueError, match="split"):
            pool.reset([(0, 1, "validation")])
    with pytest.raises(RuntimeError, match="closed"):
        pool.step([(0, "left")])


def test_workers_do_not_import_torch_and_are_cleaned_up() -> None:
    pool = fake_pool(2)
    infos = [result.info for result in pool.reset([(0, 1, "train"), (1, 2, "train")])]
    assert [info["torch_imported"] for info in infos] == [False, False]
    pids = [info["pid"] for info in infos]
    assert os.getpid() not in pids and len(set(pids)) == 2
    pool.close()
    pool.close()
    assert all(wait_gone(pid) for pid in pids)

    pool = fake_pool(1)
    pid = pool.reset([(0, 1, "train")])[0].info["pid"]
    del pool
    gc.collect()
    assert wait_gone(pid)


@pytest.mark.parametrize("ending", ["exits", "is killed"])
def test_workers_end_with_their_parent(ending: str) -> None:
    # A parent that exits without closing the pool stops its workers at exit; one killed mid-step (its worker hung in
    # the env) leaves them to notice that they were orphaned.
    last_line = 'pool.step([(0, "hang")])' if ending == "is killed" else ""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {TESTS_DIR!r})
        from trl_empg.envs.pool import EnvPool
        pool = EnvPool({FAKE!r}, num_workers=1)
        print(pool.reset([(0, 1, "train")])[0].info["pid"], flush=True)
        {last_line}
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        worker_pid = int(parent.stdout.readline())
        if ending == "is killed":
            time.sleep(0.3)  # Let the worker enter the hanging step.
            parent.kill()
        assert parent.wait(timeout=30) == (-signal.SIGKILL if ending == "is killed" else 0)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    # A clean exit has stopped the worker already; an orphan notices within a second.
    assert process_gone(worker_pid) if ending == "exits" else wait_gone(worker_pid)
