"""State: which units of a campaign are done, pending, running, failed or preempted.

A unit is done only when its completion marker exists on disk. For units submitted to Slurm, the
campaign keeps a record (``slurm_jobs.json``: unit -> job id, submitit folder, log paths) and asks Slurm
(sacct, through submitit) for the rest.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from proxy_exp import units
from proxy_exp.units import Unit

JOBS_FILE = "slurm_jobs.json"

# Slurm job states -> the campaign's words
_STATE = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending", "RESIZING": "pending", "SUSPENDED": "pending",
    "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running",
    "PREEMPTED": "preempted",
    "COMPLETED": "completed", "FAILED": "failed", "CANCELLED": "cancelled", "TIMEOUT": "failed",
    "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "BOOT_FAIL": "failed", "DEADLINE": "failed",
}


@dataclass
class UnitState:
    unit: Unit
    state: str  # done | pending | running | preempted | failed | cancelled | missing
    job_id: str = ""
    log: str = ""
    slurm_state: str = ""


def load_jobs(campaign_dir: str) -> dict[str, dict]:
    path = os.path.join(campaign_dir, JOBS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def save_jobs(campaign_dir: str, jobs: dict[str, dict]) -> None:
    os.makedirs(campaign_dir, exist_ok=True)
    path = os.path.join(campaign_dir, JOBS_FILE)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(jobs, f, indent=2)
    os.replace(tmp, path)


def slurm_state(job_id: str, folder: str) -> str:
    """The Slurm state of one job (or array task), as sacct reports it."""
    import submitit

    job = submitit.SlurmJob(folder=folder, job_id=job_id)
    try:
        return str(job.state).split()[0].upper()
    except Exception:  # sacct unreachable
        return "UNKNOWN"


def unit_states(plan: list[Unit], root: str, campaign_dir: str) -> list[UnitState]:
    jobs = load_jobs(campaign_dir)
    out = []
    for u in plan:
        done = units.read_done(root, u.id)
        rec = jobs.get(u.id)
        if done is not None:
            out.append(UnitState(u, "done", rec["job_id"] if rec else "", rec.get("stdout", "") if rec else ""))
            continue
        if rec is None:
            out.append(UnitState(u, "missing"))
            continue
        raw = slurm_state(rec["job_id"], rec["folder"])
        state = _STATE.get(raw, "pending" if raw == "UNKNOWN" else "failed")
        if state == "completed":  # the job ended without the completion marker
            state = "failed"
        out.append(UnitState(u, state, rec["job_id"], rec.get("stderr", ""), raw))
    return out


def needs_submission(s: UnitState) -> bool:
    """Missing, failed, cancelled units are (re)submitted; pending, running and preempted ones are left alone."""
    return s.state in ("missing", "failed", "cancelled")
