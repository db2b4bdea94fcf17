"""State: which units of a campaign are done, pending, running, failed, preempted or vanished.

A unit is done only when its completion marker exists on disk (and its outputs match their checksums). For units
submitted to Slurm, the campaign keeps a record (``slurm_jobs.json``: unit -> job id, submitit folder, log paths) and
asks Slurm's accounting (one ``sacct`` call for all jobs) for the rest: a job sacct has no record of (and squeue does
not know) has vanished and is resubmitted; when sacct itself fails, the units say ``unknown`` with the reason and are
not resubmitted blindly. A failed unit shows why (its FAILED.json, else the Slurm state).

Several drivers may work on one campaign at once: the section that reads the states, submits and records the jobs
runs under :func:`campaign_lock`, and :func:`save_jobs` merges into what is on disk under that lock, so the record
names the job that runs each unit, whichever driver submitted it.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Iterator

from proxy_exp import units
from proxy_exp.files import held_lock, write_json
from proxy_exp.units import Unit

JOBS_FILE = "slurm_jobs.json"
LOCK_FILE = ".campaign.lock"

# Slurm job states -> the campaign's words
_STATE = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending", "RESIZING": "pending", "SUSPENDED": "pending",
    "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running",
    "PREEMPTED": "preempted",
    "COMPLETED": "completed", "FAILED": "failed", "CANCELLED": "cancelled", "TIMEOUT": "failed",
    "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "BOOT_FAIL": "failed", "DEADLINE": "failed",
}


# a job this recent may not be in sacct yet (accounting lags the submission by seconds)
ACCOUNTING_GRACE_S = 120


@dataclass
class UnitState:
    unit: Unit
    state: str  # done | pending | running | preempted | failed | cancelled | missing | vanished | unknown
    job_id: str = ""
    log: str = ""
    slurm_state: str = ""
    reason: str = ""  # why a unit failed, vanished or is unknown


def load_jobs(campaign_dir: str) -> dict[str, dict]:
    path = os.path.join(campaign_dir, JOBS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


@contextlib.contextmanager
def campaign_lock(campaign_dir: str) -> Iterator[None]:
    """Hold the campaign's lock (``.campaign.lock`` in its folder; fcntl locks, on the shared filesystem where the
    campaign lives): one driver at a time reads the states, submits and records jobs, or creates the parent run.
    Re-entrant within a process; a driver that has to wait says so."""
    path = os.path.abspath(os.path.join(campaign_dir, LOCK_FILE))
    with held_lock(path, f"another driver is submitting this campaign ({path}): waiting for it"):
        yield


def save_jobs(campaign_dir: str, jobs: dict[str, dict]) -> dict[str, dict]:
    """Merge ``jobs`` (unit id -> job record) into the campaign's record on disk, under :func:`campaign_lock`: the
    records of units not in ``jobs`` (another driver's) are kept, a unit's new record replaces its old one. Returns
    the merged record."""
    with campaign_lock(campaign_dir):
        merged = load_jobs(campaign_dir) | jobs
        write_json(os.path.join(campaign_dir, JOBS_FILE), merged)
    return merged


def lane_load(states: list["UnitState"], jobs: dict[str, dict]) -> dict[int, int]:
    """Lane -> how many of the campaign's jobs in it are pending, running or preempted (each job once, however many
    units it runs): new jobs go to the least loaded lanes (launchers/submit.py)."""
    active = {jobs[s.unit.id]["job_id"]: jobs[s.unit.id].get("lane") for s in states
              if s.state in ("pending", "running", "preempted") and s.unit.id in jobs}
    load: dict[int, int] = {}
    for lane in active.values():
        if isinstance(lane, int):
            load[lane] = load.get(lane, 0) + 1
    return load


def _expand(job_field: str) -> list[str]:
    """sacct/squeue ids of one row: ``123``, ``123_4``, or a pending array's ``123_[0-3,7%2]``, expanded."""
    if "_[" not in job_field:
        return [job_field]
    base, spec = job_field.split("_[", 1)
    out = []
    for part in spec.rstrip("]").split("%")[0].split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out += [f"{base}_{i}" for i in range(int(lo), int(hi) + 1)]
        elif part:
            out.append(f"{base}_{part}")
    return out


def slurm_states(job_ids: list[str]) -> tuple[dict[str, str], str]:
    """``({job id: Slurm state}, "")`` for the jobs (and array tasks) Slurm knows, from sacct and squeue; on a
    failure of sacct, ``({}, why)``."""
    import subprocess

    if not job_ids:
        return {}, ""
    bases = sorted({j.split("_")[0] for j in job_ids})
    try:
        acct = subprocess.run(["sacct", "-n", "-P", "-j", ",".join(bases), "-o", "JobID,State,ExitCode"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return {}, f"sacct could not run ({type(e).__name__}: {e})"
    if acct.returncode != 0:
        return {}, f"sacct failed: {(acct.stderr or acct.stdout).strip().splitlines()[-1:] or ['exit ' + str(acct.returncode)]}"
    states: dict[str, str] = {}
    signals: dict[str, str] = {}  # job -> the signal that killed one of its steps' tasks (e.g. 9: the OOM killer)
    for line in acct.stdout.splitlines():
        if line.count("|") < 2:
            continue
        job, state, exit_code = (x.strip() for x in line.split("|")[:3])
        code, _, signal = exit_code.partition(":")
        if signal in ("", "0") and code.isdigit() and int(code) > 128:  # a shell's 128 + N
            signal = str(int(code) - 128)
        if "." in job:  # a step (job.batch, job.0): only its signal counts
            if signal not in ("", "0"):
                signals[job.split(".")[0]] = signal
            continue
        for j in _expand(job):
            states[j] = state.split()[0].upper() if state else "UNKNOWN"  # the last row wins (requeues)
    for job, signal in signals.items():
        if job in states and states[job] in ("FAILED", "CANCELLED", "OUT_OF_MEMORY"):
            states[job] = f"{states[job]}:signal {signal}"
    try:  # jobs in the queue but not yet in accounting
        queue = subprocess.run(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(bases)], capture_output=True,
                               text=True, timeout=60)
        for line in queue.stdout.splitlines() if queue.returncode == 0 else []:
            job, state = line.split("|", 1)
            for j in _expand(job.strip()):
                states.setdefault(j, state.strip().upper())
    except (OSError, subprocess.SubprocessError):
        pass
    return states, ""


def unit_states(plan: list[Unit], root: str, campaign_dir: str) -> list[UnitState]:
    import time

    jobs = load_jobs(campaign_dir)
    done = {u.id: units.is_done(root, u.id) for u in plan}  # markers and sizes: no output is read
    wanted = [jobs[u.id]["job_id"] for u in plan if not done[u.id] and u.id in jobs]
    known, failure = slurm_states(wanted)
    out = []
    for u in plan:
        rec = jobs.get(u.id)
        if done[u.id]:
            out.append(UnitState(u, "done", rec["job_id"] if rec else "", rec.get("stdout", "") if rec else ""))
            continue
        if rec is None:
            out.append(UnitState(u, "missing", reason=units.read_failed(root, u.id)))
            continue
        job_id = rec["job_id"]
        if failure:
            out.append(UnitState(u, "unknown", job_id, rec.get("stderr", ""), "", failure))
            continue
        raw = known.get(job_id) or known.get(job_id.split("_")[0], "")
        if not raw:
            if time.time() - float(rec.get("submitted", 0)) < ACCOUNTING_GRACE_S:
                out.append(UnitState(u, "pending", job_id, rec.get("stderr", ""), "SUBMITTED"))
            else:
                out.append(UnitState(u, "vanished", job_id, rec.get("stderr", ""), "",
                                     f"job {job_id} is unknown to Slurm (no sacct record, not queued)"))
            continue
        state = _STATE.get(raw.split(":")[0], "failed")
        reason = ""
        if state in ("completed", "failed", "cancelled"):
            killed = raw.split(":signal ")[1] if ":signal " in raw else ""
            reason = units.read_failed(root, u.id) or (
                f"killed by signal {killed} (Slurm state {raw.split(':')[0]})" if killed else
                f"Slurm state {raw}" if state != "completed" else "the job ended without the unit's completion marker")
            state = "failed" if state == "completed" else state
        out.append(UnitState(u, state, job_id, rec.get("stderr", ""), raw, reason))
    return out


def needs_submission(s: UnitState) -> bool:
    """Missing, failed, cancelled and vanished units are (re)submitted; pending, running, preempted and unknown ones
    (sacct did not answer) are left alone."""
    return s.state in ("missing", "failed", "cancelled", "vanished")
