"""The campaign's job record under several drivers (launchers/state.py): save_jobs merges into what is on disk under
the campaign lock, the lock is held by one process at a time and is re-entrant within one, and lane_load counts the
campaign's active jobs per lane."""
import multiprocessing
import os
import time

from launchers.state import JOBS_FILE, UnitState, campaign_lock, lane_load, load_jobs, save_jobs
from proxy_exp.units import Unit

WRITERS, WRITES = 4, 15


def _record(job_id: str, lane: int = 0) -> dict:
    return {"job_id": job_id, "kind": "train", "folder": "/f", "stdout": "", "stderr": "", "submitted": time.time(),
            "lane": lane}


def test_save_jobs_keeps_the_records_of_another_driver(tmp_path):
    save_jobs(str(tmp_path), {"a": _record("1"), "b": _record("2")})  # the first driver
    merged = save_jobs(str(tmp_path), {"c": _record("3"), "b": _record("4")})  # the second: c new, b resubmitted
    assert {u: r["job_id"] for u, r in load_jobs(str(tmp_path)).items()} == {"a": "1", "b": "4", "c": "3"}
    assert merged == load_jobs(str(tmp_path))


def _writer(cdir: str, i: int) -> None:
    for k in range(WRITES):
        save_jobs(cdir, {f"unit-{i}-{k}": _record(f"{i}{k}")})


def test_concurrent_drivers_lose_no_record(tmp_path):
    """Four processes each record their own units, one at a time, at once: every record survives (without the lock,
    read-modify-write races lose some; without the merge, only the last writer's would be left)."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(load_jobs(str(tmp_path))) == sorted(f"unit-{i}-{k}" for i in range(WRITERS) for k in range(WRITES))
    assert [f for f in os.listdir(tmp_path) if ".tmp" in f] == []  # no half-written file left behind


def _hold_lock(cdir: str, held, release) -> None:
    with campaign_lock(cdir):
        held.set()
        release.wait(30)
        save_jobs(cdir, {"held": _record("1")})  # re-entrant: save_jobs takes the same lock inside it


def test_campaign_lock_holds_out_a_second_process(tmp_path):
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(tmp_path), held, release))
    p.start()
    assert held.wait(30)
    from filelock import FileLock, Timeout

    lock = FileLock(os.path.join(tmp_path, ".campaign.lock"))
    try:
        lock.acquire(timeout=0.5)
        lock.release()
        raise AssertionError("a second process took the campaign lock while the first held it")
    except Timeout:
        pass
    release.set()
    p.join(30)
    assert p.exitcode == 0  # it did not deadlock on its own lock
    with campaign_lock(str(tmp_path)):  # free again
        assert "held" in load_jobs(str(tmp_path))
    assert os.path.exists(tmp_path / JOBS_FILE)


def test_lane_load_counts_each_active_job_once():
    def unit(i: int) -> Unit:
        return Unit(f"train-{i}", "train", "proxy", "c", "xs", 0, None, [])

    states = [UnitState(unit(0), "running", "10_0"), UnitState(unit(1), "running", "10_0"),  # two units, one task
              UnitState(unit(2), "pending", "11"), UnitState(unit(3), "done", "12"),
              UnitState(unit(4), "failed", "13"), UnitState(unit(5), "preempted", "14")]
    jobs = {"train-0": _record("10_0", 1), "train-1": _record("10_0", 1), "train-2": _record("11", 1),
            "train-3": _record("12", 0), "train-4": _record("13", 0), "train-5": _record("14", 3)}
    assert lane_load(states, jobs) == {1: 2, 3: 1}
