"""Submit: run a campaign's units through submitit (local executor or Slurm) or inline, respecting dependencies.

At most ``executor.max_parallel`` units run at once (submitit's local executor itself starts everything at
once); a unit starts when the units it depends on are done. A failed unit is reported and its dependants are
skipped; the others go on.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from launchers.plan import Unit
from proxy_exp.config import ExecutorConfig


def job_function(kind: str) -> Callable[..., Any]:
    if kind == "train":
        from proxy_exp.train.loop import train

        return train
    from proxy_exp import jobs

    return {"score": jobs.score, "evaluate": jobs.evaluate}[kind]


def run_unit(kind: str, config: Any) -> Any:
    """The picklable entry point a submitit job runs."""
    from launchers.app import offline_env

    offline_env()
    inject = os.environ.get("PROXY_EXP_FAIL_UNITS", "")
    if inject and getattr(config, "unit_id", "") in inject.split(","):
        # fault injection, for testing the failure path of a campaign (set by tests, never by config)
        raise RuntimeError(f"failure injected into unit {config.unit_id} (PROXY_EXP_FAIL_UNITS)")
    return job_function(kind)(config, progress=False)


@dataclass
class Outcome:
    done: dict[str, Any] = field(default_factory=dict)  # unit id -> result
    failed: dict[str, str] = field(default_factory=dict)  # unit id -> error (+ log path)
    skipped: dict[str, str] = field(default_factory=dict)  # unit id -> reason
    logs: dict[str, str] = field(default_factory=dict)  # unit id -> submitit log path


def make_executor(ex: ExecutorConfig, folder: str):
    import submitit

    if ex.kind == "local":
        executor = submitit.AutoExecutor(folder=folder, cluster="local")
        executor.update_parameters(timeout_min=ex.timeout_min, cpus_per_task=ex.cpus_per_task)
        return executor
    if ex.kind == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {"timeout_min": ex.timeout_min, "cpus_per_task": ex.cpus_per_task,
                                  "slurm_setup": list(ex.setup),
                                  "slurm_additional_parameters": dict(ex.additional_parameters)}
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(ex, key):
                params[f"slurm_{key}"] = getattr(ex, key)
        if ex.gpus_per_node:
            params["gpus_per_node"] = ex.gpus_per_node
        executor.update_parameters(**params)
        return executor
    raise ValueError(f"executor.kind={ex.kind!r}: use inline, local or slurm")


def run_units(plan: list[Unit], done_ids: set[str], ex: ExecutorConfig, folder: str,
              on_event: Callable[[str, Unit, str], None] | None = None, poll_s: float = 1.0) -> Outcome:
    """Run every unit of ``plan`` not in ``done_ids``; dependencies first."""
    out = Outcome()
    say = on_event or (lambda *_: None)
    finished = set(done_ids)
    pending = [u for u in plan if u.id not in finished]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if ex.kind == "inline":
        for u in pending:
            if any(d in out.failed or d in out.skipped for d in u.depends_on):
                out.skipped[u.id] = "a dependency failed"
                say("skipped", u, out.skipped[u.id])
                continue
            say("started", u, "in process")
            try:
                out.done[u.id] = job_function(u.kind)(u.config, progress=False)
                finished.add(u.id)
                say("done", u, "")
            except Exception as e:  # report, continue with the others
                out.failed[u.id] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
                say("failed", u, str(e))
        return out

    executor = make_executor(ex, folder)
    running: dict[str, tuple[Unit, Any]] = {}
    while pending or running:
        # harvest
        for uid, (u, job) in list(running.items()):
            if not job.done():
                continue
            del running[uid]
            out.logs[uid] = str(job.paths.stdout)
            try:
                out.done[uid] = job.result()
                finished.add(uid)
                say("done", u, "")
            except Exception as e:
                msg = str(e).strip().splitlines()
                out.failed[uid] = f"{msg[-1] if msg else type(e).__name__} (log: {job.paths.stderr})"
                say("failed", u, out.failed[uid])
        # skip dependants of failures
        for u in list(pending):
            if any(d in out.failed or d in out.skipped for d in u.depends_on):
                pending.remove(u)
                out.skipped[u.id] = "a dependency failed"
                say("skipped", u, out.skipped[u.id])
        # launch what is ready: training first, the largest (target) models first, since they are the critical path
        for u in sorted(pending, key=lambda u: (u.kind != "train", u.role != "target")):
            if len(running) >= max(1, ex.max_parallel):
                break
            if all(d in finished for d in u.depends_on):
                pending.remove(u)
                executor.update_parameters(name=f"proxy-{u.kind}-{u.id[-12:]}")
                job = executor.submit(run_unit, u.kind, u.config)
                running[u.id] = (u, job)
                say("started", u, f"job {job.job_id}")
        if pending and not running:  # nothing can start: dependencies missing from the plan
            for u in pending:
                out.skipped[u.id] = "dependencies not done"
                say("skipped", u, out.skipped[u.id])
            break
        if running:
            time.sleep(poll_s)
    return out


def max_array_size() -> int:
    """Slurm's MaxArraySize (arrays are split above it)."""
    import subprocess

    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            if line.split("=")[0].strip() == "MaxArraySize":
                return max(1, int(line.split("=")[1].strip()) - 1)
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return 1000


def _train_resources(u: Unit) -> dict[str, int]:
    p = u.config.pretrain
    per_node = p.gpus_per_node if p.gpus_per_node > 0 else p.tasks_per_node
    res = {"nodes": max(1, p.nodes), "tasks_per_node": max(1, per_node)}
    if p.gpus_per_node > 0:
        res["gpus_per_node"] = p.gpus_per_node
    return res


def submit_slurm(plan: list[Unit], to_submit: set[str], running_jobs: dict[str, str], ex: ExecutorConfig,
                 folder: str) -> dict[str, dict]:
    """Submit units to Slurm and return at once: training units as job arrays (one per resource shape, split
    above MaxArraySize), each score / evaluate unit as a job that starts after its training unit succeeds
    (``afterok``; ``kill-on-invalid-dep`` cancels it if training fails). ``running_jobs`` maps units already
    pending or running to their job ids, so new dependants wait for them. Returns unit id -> job record."""
    import submitit

    records: dict[str, dict] = {}
    job_of = dict(running_jobs)
    chosen = [u for u in plan if u.id in to_submit]

    def record(u: Unit, job) -> None:
        job_of[u.id] = job.job_id
        records[u.id] = {"job_id": job.job_id, "kind": u.kind, "folder": folder, "stdout": str(job.paths.stdout),
                         "stderr": str(job.paths.stderr), "submitted": time.time()}

    # The driver may itself run inside an allocation or a torch.distributed process: strip both.
    with submitit.helpers.clean_env(extra_names=("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")):
        groups: dict[tuple, list[Unit]] = {}
        for u in chosen:
            if u.kind == "train":
                groups.setdefault(tuple(sorted(_train_resources(u).items())), []).append(u)
        limit = max_array_size()
        for shape, us in groups.items():
            executor = make_executor(ex, folder)
            executor.update_parameters(name="proxy-train", slurm_array_parallelism=max(1, ex.max_parallel),
                                       **dict(shape))
            for i in range(0, len(us), limit):
                chunk = us[i:i + limit]
                with executor.batch():
                    jobs = [executor.submit(run_unit, "train", u.config) for u in chunk]
                for u, job in zip(chunk, jobs):
                    record(u, job)
        executor = make_executor(ex, folder)
        for u in chosen:
            if u.kind == "train":
                continue
            extra = dict(ex.additional_parameters)
            deps = [job_of[d] for d in u.depends_on if d in job_of]
            if deps:
                extra.update({"dependency": "afterok:" + ":".join(deps), "kill_on_invalid_dep": "yes"})
            executor.update_parameters(name=f"proxy-{u.kind}", slurm_additional_parameters=extra)
            record(u, executor.submit(run_unit, u.kind, u.config))
    return records
