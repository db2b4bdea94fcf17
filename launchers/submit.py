"""Submit: run a campaign's units through submitit (local executor or Slurm) or inline, respecting dependencies
(data units -- bpe, tokenize -- before the training units that read their shards).

At most ``executor.max_parallel`` jobs of a campaign run at once, whatever their kind (bpe, tokenize, train, score,
evaluate; a job runs one unit, or up to ``executor.units_per_job`` small training units): the local executor starts a
job only while fewer are running (submitit's own local executor would start everything at once); on Slurm each job
goes to one of max_parallel lanes that Slurm runs one job at a time (:func:`submit_slurm`). A unit starts when the
units it depends on are done. A failed unit is reported and its dependants are skipped (Slurm: cancelled); the
others go on.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from proxy_exp.config import ExecutorConfig, ExecutorKind, UnitResources
from proxy_exp.jobs import job_function
from proxy_exp.units import Unit


def run_unit(kind: str, config: Any) -> Any:
    """The picklable entry point a submitit job runs."""
    from proxy_exp.environment import offline_env

    offline_env()
    try:
        inject = os.environ.get("PROXY_EXP_FAIL_UNITS", "")
        if inject and getattr(config, "unit_id", "") in inject.split(","):
            # fault injection, for testing the failure path of a campaign (set by tests, never by config)
            raise RuntimeError(f"failure injected into unit {config.unit_id} (PROXY_EXP_FAIL_UNITS)")
        return job_function(kind)(config, progress=False)
    except Exception as e:  # the reason, for proxy-campaign action=status (the log holds the traceback)
        if getattr(config, "unit_id", "") and hasattr(config, "paths"):
            from proxy_exp import units
            from proxy_exp.config import resolve_root

            units.record_failure(resolve_root(config.paths), config.unit_id, e)
        raise


def run_unit_group(kind: str, configs: list, raise_on_failure: bool = True) -> list:
    """Several units in one job (``executor.units_per_job``), each in its own spawned process, all at once on
    the job's device. Returns one ``("done", result)`` or ``("failed", message)`` per config, in order; with
    ``raise_on_failure`` (Slurm: a failed unit must fail the job, so its dependants do not start) a
    RuntimeError naming the failed units is raised after every unit has ended. (A job of one unit runs
    :func:`run_unit` itself.)"""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=len(configs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_unit, kind, c) for c in configs]
        outcomes = []
        for c, f in zip(configs, futures):
            try:
                outcomes.append(("done", f.result()))
            except Exception as e:  # noqa: BLE001 (a unit's own error, reported per unit)
                outcomes.append(("failed", f"{type(e).__name__}: {e}"))
    failed = [f"{getattr(c, 'unit_id', '?')}: {o[1]}" for c, o in zip(configs, outcomes) if o[0] == "failed"]
    if failed and raise_on_failure:
        raise RuntimeError(f"{len(failed)} of {len(configs)} units of this job failed: " + "; ".join(failed))
    return outcomes


def kind_resources(ex: ExecutorConfig, kind: str, role: str = "") -> dict[str, Any]:
    """What a unit kind's jobs ask for: ``executor.target.<kind>`` for a target model's units where set, then
    ``executor.<kind>`` where set (``executor.data`` for the bpe and tokenize units, which need no GPU unless it
    says so), else the executor's own values."""
    r = getattr(ex, "data" if kind in ("bpe", "tokenize") else kind, None)
    r = r if isinstance(r, UnitResources) else UnitResources()
    t = getattr(ex.target, kind, None) if role == "target" else None
    if isinstance(t, UnitResources):  # the target's own values over the kind's
        r = UnitResources(gpus_per_node=t.gpus_per_node if t.gpus_per_node >= 0 else r.gpus_per_node,
                          cpus_per_task=t.cpus_per_task or r.cpus_per_task, mem_gb=t.mem_gb or r.mem_gb,
                          timeout_min=t.timeout_min or r.timeout_min,
                          additional_parameters={**r.additional_parameters, **t.additional_parameters})
    return {"gpus_per_node": ex.gpus_per_node if r.gpus_per_node < 0 else r.gpus_per_node,
            "cpus_per_task": r.cpus_per_task or ex.cpus_per_task, "timeout_min": r.timeout_min or ex.timeout_min,
            "mem_gb": r.mem_gb, "additional_parameters": {**ex.additional_parameters, **r.additional_parameters}}


def train_gpus(u: Unit, ex: ExecutorConfig) -> int:
    """GPUs per node a training unit trains on: ``pretrain.gpus_per_node`` when set (>= 0), else its job's
    allocation (``executor.train.gpus_per_node``, or ``executor.gpus_per_node``). Both set and different, or CPU
    training asked for while GPUs are allocated, is an error naming the two settings."""
    p = u.config.pretrain
    allocated = kind_resources(ex, "train", u.role)["gpus_per_node"]
    if p.gpus_per_node < 0:
        return max(0, allocated)
    if allocated and allocated != p.gpus_per_node:
        raise ValueError(f"pretrain.gpus_per_node={p.gpus_per_node} but the executor allocates {allocated} GPU(s) per "
                         "training job (executor.train.gpus_per_node / executor.gpus_per_node): set one of them, and "
                         "leave pretrain.gpus_per_node=-1 to train on what is allocated")
    return p.gpus_per_node


def groupable(u: Unit, ex: ExecutorConfig | None = None) -> bool:
    """A training unit that runs as one process (no multi-rank or multi-node run, at most one GPU): it can share a
    job (and its GPU) with others."""
    if u.kind != "train":
        return False
    p = u.config.pretrain
    gpus = train_gpus(u, ex or ExecutorConfig())
    return p.nodes <= 1 and gpus <= 1 and (gpus == 1 or p.tasks_per_node <= 1)


@dataclass
class Outcome:
    done: dict[str, Any] = field(default_factory=dict)  # unit id -> result
    failed: dict[str, str] = field(default_factory=dict)  # unit id -> error (+ log path)
    skipped: dict[str, str] = field(default_factory=dict)  # unit id -> reason
    logs: dict[str, str] = field(default_factory=dict)  # unit id -> submitit log path


def make_executor(ex: ExecutorConfig, folder: str, kind: str = "", role: str = ""):
    """A submitit executor for jobs of unit kind ``kind`` of ``role`` (its resources: :func:`kind_resources`)."""
    import submitit

    res = kind_resources(ex, kind, role)
    if ex.kind == ExecutorKind.local:
        executor = submitit.AutoExecutor(folder=folder, cluster="local")
        executor.update_parameters(timeout_min=res["timeout_min"], cpus_per_task=res["cpus_per_task"])
        return executor
    if ex.kind == ExecutorKind.slurm:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {"timeout_min": res["timeout_min"], "cpus_per_task": res["cpus_per_task"],
                                  "slurm_setup": list(ex.setup),
                                  "slurm_additional_parameters": dict(res["additional_parameters"])}
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(ex, key):
                params[f"slurm_{key}"] = getattr(ex, key)
        if res["gpus_per_node"] > 0:
            params["gpus_per_node"] = res["gpus_per_node"]
        if res["mem_gb"] > 0:
            params["mem_gb"] = res["mem_gb"]
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
    if ex.kind == ExecutorKind.inline:
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

    executors: dict[str, Any] = {}  # unit kind -> its executor (each kind its own resources)
    running: dict[str, tuple[list[Unit], Any]] = {}  # first unit id -> (units sharing the job, job)
    per_job = max(1, ex.units_per_job)
    while pending or running:
        # harvest
        for key, (us, job) in list(running.items()):
            if not job.done():
                continue
            del running[key]
            try:
                outcomes = job.result() if len(us) > 1 else [("done", job.result())]
            except Exception as e:
                msg = str(e).strip().splitlines()
                outcomes = [("failed", msg[-1] if msg else type(e).__name__)] * len(us)
            for u, (status, value) in zip(us, outcomes):
                out.logs[u.id] = str(job.paths.stdout)
                if status == "done":
                    out.done[u.id] = value
                    finished.add(u.id)
                    say("done", u, "")
                else:
                    out.failed[u.id] = f"{value} (log: {job.paths.stderr})"
                    say("failed", u, out.failed[u.id])
        # skip dependants of failures
        for u in list(pending):
            if any(d in out.failed or d in out.skipped for d in u.depends_on):
                pending.remove(u)
                out.skipped[u.id] = "a dependency failed"
                say("skipped", u, out.skipped[u.id])
        # launch what is ready: data units (bpe, tokenize) first, then training, the largest (target) models first,
        # since they are the critical path
        for u in sorted(pending, key=lambda u: (u.kind not in ("bpe", "tokenize"), u.kind != "train", u.role != "target")):
            if len(running) >= max(1, ex.max_parallel):
                break
            if u in pending and all(d in finished for d in u.depends_on):
                group = [u]
                if per_job > 1 and groupable(u, ex):  # small-model mode: ready one-process training units share a job
                    group += [v for v in pending if v is not u and groupable(v, ex)
                              and all(d in finished for d in v.depends_on)][:per_job - 1]
                for v in group:
                    pending.remove(v)
                executor = _executor_for(executors, ex, folder, u)
                executor.update_parameters(name=f"proxy-{u.kind}-{u.id[-12:]}")
                if len(group) == 1:
                    job = executor.submit(run_unit, u.kind, u.config)
                else:
                    job = executor.submit(run_unit_group, u.kind, [v.config for v in group], False)
                running[u.id] = (group, job)
                for v in group:
                    say("started", v, f"job {job.job_id}" + (f" ({len(group)} units)" if len(group) > 1 else ""))
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


def _train_resources(u: Unit, ex: ExecutorConfig) -> dict[str, int]:
    """Nodes, tasks per node (one per GPU, or pretrain.tasks_per_node CPU ranks) and GPUs of a training job."""
    p = u.config.pretrain
    gpus = train_gpus(u, ex)
    per_node = gpus if gpus > 0 else p.tasks_per_node
    res = {"nodes": max(1, p.nodes), "tasks_per_node": max(1, per_node)}
    if gpus > 0:
        res["gpus_per_node"] = gpus
    return res


def _executor_for(executors: dict, ex: ExecutorConfig, folder: str, u: Unit) -> Any:
    """The one submitit executor of ``u``'s kind and role, made on first use (its resources: :func:`kind_resources`)."""
    key = (u.kind, u.role)
    if key not in executors:
        executors[key] = make_executor(ex, folder, u.kind, u.role)
    return executors[key]


class _Lanes:
    """The submission of one driver command: ``executor.max_parallel`` lanes (the least loaded one takes the next
    job), the job of each unit so far (for ``afterok``), and the records returned."""

    def __init__(self, ex: ExecutorConfig, folder: str, lane_prefix: str, lane_load: dict[int, int] | None,
                 running_jobs: dict[str, str]):
        self.ex, self.folder, self.prefix = ex, folder, lane_prefix
        self.load = {i: (lane_load or {}).get(i, 0) for i in range(max(1, ex.max_parallel))}
        self.job_of = dict(running_jobs)
        self.records: dict[str, dict] = {}
        self.executors: dict[tuple, Any] = {}
        self.limit = max_array_size()

    def take(self) -> int:
        lane = min(self.load, key=lambda i: (self.load[i], i))
        self.load[lane] += 1
        return lane

    def name(self, lane: int) -> str:
        return f"{self.prefix}-lane{lane}"

    def record(self, u: Unit, job, lane: int) -> None:
        self.job_of[u.id] = job.job_id
        self.records[u.id] = {"job_id": job.job_id, "kind": u.kind, "folder": self.folder,
                              "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                              "submitted": time.time(), "lane": lane}

    def dep_jobs(self, u: Unit) -> tuple[str, ...]:
        """The pending or running jobs ``u`` waits for."""
        return tuple(sorted({self.job_of[d] for d in u.depends_on if d in self.job_of}))

    def after(self, deps: list[str], kind: str, role: str = "") -> dict[str, Any]:
        """The kind's extra sbatch parameters, plus afterok on the jobs of ``deps`` that are pending or running, plus
        singleton (the lane)."""
        extra = dict(kind_resources(self.ex, kind, role)["additional_parameters"])
        jobs = list(dict.fromkeys(self.job_of[d] for d in deps if d in self.job_of))
        conditions = [str(extra["dependency"])] if extra.get("dependency") else []
        if jobs:
            conditions.append("afterok:" + ":".join(jobs))
            extra["kill_on_invalid_dep"] = "yes"
        extra["dependency"] = ",".join(conditions + ["singleton"])
        return extra

    def submit_one(self, u: Unit) -> None:
        """``u`` as one job, after its dependencies, in the least loaded lane."""
        executor = _executor_for(self.executors, self.ex, self.folder, u)
        lane = self.take()
        executor.update_parameters(name=self.name(lane), slurm_additional_parameters=self.after(u.depends_on, u.kind,
                                                                                                  u.role))
        self.record(u, executor.submit(run_unit, u.kind, u.config), lane)

    def submit_arrays(self, executor, kind: str, bundles: list[list[Unit]]) -> None:
        """One array per lane (its tasks one at a time), split above MaxArraySize; a bundle of several units runs as
        one task (:func:`run_unit_group`)."""
        by_lane: dict[int, list[list[Unit]]] = {}
        for b in bundles:
            by_lane.setdefault(self.take(), []).append(b)
        for lane, bs in by_lane.items():
            executor.update_parameters(name=self.name(lane), slurm_array_parallelism=1)
            for i in range(0, len(bs), self.limit):
                chunk = bs[i:i + self.limit]
                with executor.batch():
                    jobs = [executor.submit(run_unit, kind, b[0].config) if len(b) == 1 else
                            executor.submit(run_unit_group, kind, [u.config for u in b]) for b in chunk]
                for b, job in zip(chunk, jobs):
                    for u in b:
                        self.record(u, job, lane)

    def submit_tokenize(self, units: list[Unit]) -> None:
        """Tokenize units: one job array per set of dependencies, one task per unit (a group of input files), each
        with ``tokenize.threads`` CPUs for its tokenizer threads."""
        groups: dict[tuple, list[Unit]] = {}
        for u in units:
            groups.setdefault((self.dep_jobs(u), u.config.tokenize.threads), []).append(u)
        for (_, threads), us in groups.items():
            executor = make_executor(self.ex, self.folder, "tokenize")
            executor.update_parameters(
                cpus_per_task=max(int(threads), kind_resources(self.ex, "tokenize")["cpus_per_task"]),
                slurm_additional_parameters=self.after(us[0].depends_on, "tokenize"))
            self.submit_arrays(executor, "tokenize", [[u] for u in us])

    def submit_train(self, units: list[Unit]) -> None:
        """Training units: one job array per resource shape and set of dependencies (the tokenize tasks of a corpus),
        ``executor.units_per_job`` units a task where they can share one."""
        groups: dict[tuple, list[Unit]] = {}
        for u in units:
            groups.setdefault((tuple(sorted(_train_resources(u, self.ex).items())), self.dep_jobs(u), u.role),
                              []).append(u)
        for (shape, _, role), us in groups.items():
            executor = make_executor(self.ex, self.folder, "train", role)
            executor.update_parameters(slurm_additional_parameters=self.after(us[0].depends_on, "train", role),
                                       **dict(shape))
            per_job = max(1, self.ex.units_per_job) if all(groupable(u, self.ex) for u in us) else 1
            self.submit_arrays(executor, "train", [us[i:i + per_job] for i in range(0, len(us), per_job)])


def submit_slurm(plan: list[Unit], to_submit: set[str], running_jobs: dict[str, str], ex: ExecutorConfig,
                 folder: str, lane_prefix: str = "proxy", lane_load: dict[int, int] | None = None) -> dict[str, dict]:
    """Submit units to Slurm and return at once: the bpe unit as a job, tokenize units as job arrays (one task
    per group of input files, ``tokenize.threads`` CPUs each) after it, training units as job arrays (one per
    resource shape and corpus, split above MaxArraySize) after their tokenize tasks, each score / evaluate unit as
    a job that starts after its training unit succeeds (``afterok`` throughout; ``kill-on-invalid-dep`` cancels a
    job whose dependency failed). ``running_jobs`` maps units already pending or running to their job ids, so new
    dependants wait for them.

    At most ``executor.max_parallel`` of these jobs (array tasks count one each) run at once, whatever their kind:
    every job goes to one of max_parallel lanes, the least loaded one (``lane_load``: the campaign's pending and
    running jobs per lane, from earlier submissions), named ``<lane_prefix>-lane<i>`` with ``--dependency=singleton``,
    so Slurm starts a job of a lane only once the lane's earlier jobs have ended; an array's tasks are split into one
    array per lane, run one task at a time (``%1``). Returns unit id -> job record (with its lane)."""
    import submitit

    chosen = [u for u in plan if u.id in to_submit]
    of_kind = {k: [u for u in chosen if u.kind == k] for k in ("bpe", "tokenize", "train")}
    lanes = _Lanes(ex, folder, lane_prefix, lane_load, running_jobs)
    # The driver may itself run inside an allocation or a torch.distributed process: strip both.
    with submitit.helpers.clean_env(extra_names=("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")):
        for u in of_kind["bpe"]:  # the campaign's BPE: one job, before the tokenize units that use it
            lanes.submit_one(u)
        lanes.submit_tokenize(of_kind["tokenize"])
        lanes.submit_train(of_kind["train"])
        for u in chosen:  # score / evaluate: a job each, after its training unit
            if u.kind not in of_kind:
                lanes.submit_one(u)
    return lanes.records
