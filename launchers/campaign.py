"""proxy-campaign: a corpus-selection campaign end to end.

plan (units with stable ids: bpe, tokenize, train, score, evaluate) -> state (what is done) -> submit (dependencies
first, at most executor.max_parallel at once; the driver reads no corpus) -> analyse what MLflow holds -> print the
ranking.
``action=plan`` (or ``dry_run=true``) prints the units, sizes, tokens and FLOPs; ``action=status`` the state of
every unit; with ``executor=slurm*`` the run submits and returns at once, and ``action=collect`` analyses.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time

import hydra
from omegaconf import DictConfig

from launchers.app import CONF_DIR, check_tie_rule, run_app, to_job
from launchers.plan import plan_campaign
from proxy_exp import units
from proxy_exp.config import CampaignAction, CampaignJobConfig, ExecutorKind, resolve_root
from proxy_exp.files import tmp_name, write_json
from proxy_exp.tracking import Run, ensure_experiment, keys, tracking_uri
from proxy_exp.units import Unit


def campaign_key(plan: list[Unit]) -> str:
    return hashlib.sha256(",".join(sorted(u.id for u in plan)).encode()).hexdigest()[:10]


def campaign_dir(cfg: CampaignJobConfig, plan: list[Unit]) -> str:
    return os.path.join(resolve_root(cfg.paths), "campaigns", f"{cfg.campaign.name}-{campaign_key(plan)}")


def _cache(cfg: CampaignJobConfig) -> str:
    return os.path.join(resolve_root(cfg.paths), "cache")


def done_units(cfg: CampaignJobConfig, plan: list[Unit]) -> set[str]:
    """Units with a completion marker on disk and their outputs at their recorded sizes (a finished MLflow run alone
    is not enough for a train unit, whose model folder later units read); no output is read (units.is_done)."""
    root = resolve_root(cfg.paths)
    return {u.id for u in plan if units.is_done(root, u.id)}


def _train_plan_rows(cfg: CampaignJobConfig, plan: list[Unit], vocab: int) -> list[dict]:
    from proxy_exp.train.plan import plan_training

    rows = []
    for u in plan:
        if u.kind != "train":
            continue
        tp = plan_training(u.config, vocab)
        rows.append({"unit": u.id, "role": u.role, "corpus": u.corpus, "size": u.size, "seed": u.seed,
                     "params_non_emb": tp.n_params_non_embedding, "params": tp.n_params, "steps": tp.steps,
                     "tokens": tp.tokens, "train_flops": tp.flops})
    return rows


def data_plan(cfg: CampaignJobConfig, plan: list[Unit], vocab: int) -> tuple[list[dict], list[str]]:
    """Per corpus (recipe), training size and source: weight, realised token share and epochs of the largest
    budget of that size (exact once the source's token shards exist, else estimated from file sizes: no corpus is
    read), and one line per source that a budget repeats past its max_epochs."""
    from proxy_exp.data.mixture import SharePlanner, repeat_problems
    from proxy_exp.train.plan import plan_training

    cache = _cache(cfg)
    budgets: dict[tuple[str, str], tuple[int, int]] = {}
    corpora: dict[str, object] = {}
    for u in plan:
        if u.kind == "train":
            tp = plan_training(u.config, vocab)
            key = (u.corpus, u.size)
            positions = tp.steps * u.config.pretrain.global_batch
            if positions > budgets.get(key, (0, 0))[0]:
                budgets[key] = (positions, u.config.pretrain.seq_len)
            corpora[u.corpus] = u.config
    rows, problems = [], []
    planner = None
    for (corpus, size), (positions, seq_len) in budgets.items():
        tc = corpora[corpus]
        planner = planner or SharePlanner(tc.tokenizer, dict(tc.tokenizer_corpora), cache)  # one tokenizer per campaign
        shares = planner.shares(tc.corpus, seq_len, positions)
        for s in shares:
            rows.append({"corpus": corpus, "size": size, "source": s.source, "weight": s.weight, "share": s.share,
                         "sequences": s.sequences, "available": s.available, "epochs": s.epochs,
                         "max_epochs": s.max_epochs, "sizes": "est." if s.estimated else "exact",
                         "status": "OVER CAP" if s.over else "ok"})
        problems += [f"{line} [size {size}]" for line in repeat_problems(corpus, shares)]
    return rows, problems


def check_repeats(cfg: CampaignJobConfig, problems: list[str]) -> None:
    """Warn about every source a budget repeats past its max_epochs; fail when its corpus says repeat_policy=fail."""
    strict = {name for name, c in cfg.campaign.corpora.items() if str(c.repeat_policy) == "fail"}
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    failing = [line for line in problems if any(f"corpus {name!r}" in line for name in strict)]
    if failing:
        raise ValueError(failing[0] + " (corpus.repeat_policy=fail)")


def print_plan(cfg: CampaignJobConfig, plan: list[Unit]) -> None:
    import pandas as pd

    from proxy_exp.data.tokenizer import planned_vocab_size

    done = done_units(cfg, plan)
    kinds = ", ".join(f"{sum(u.kind == k for u in plan)} {k}" for k in ("bpe", "tokenize", "train", "score", "evaluate")
                      if any(u.kind == k for u in plan))
    print(f"campaign {cfg.campaign.name}: {len(plan)} units ({kinds}), {len(done)} already done")
    vocab, vocab_from = planned_vocab_size(cfg.tokenizer)
    data = [u for u in plan if u.kind in ("bpe", "tokenize")]
    for u in data:
        what = ("BPE on a bounded sample of every source" if u.kind == "bpe" else
                f"{len(u.config.files)} file(s)" if u.config.files else f"packaged source {u.config.source.source}")
        print(f"  {'done   ' if u.id in done else 'pending'} {u.kind:8s} {u.corpus:24s} {u.size:>7s}  {u.id}  {what}")
    rows = pd.DataFrame(_train_plan_rows(cfg, plan, vocab))
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(rows.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        drows, problems = data_plan(cfg, plan, vocab)
        print("data per corpus, size and source (the largest budget of the size):")
        print(pd.DataFrame(drows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"vocabulary: {vocab:,} ({vocab_from}); traces: {cfg.traces.name} ({', '.join(cfg.traces.tasks)}; "
          f"{cfg.traces.per_task or 'all'} per task), window {cfg.score.window}; evaluation: "
          f"{', '.join(cfg.evaluate.tasks)} (limit {cfg.evaluate.limit or 'all'})")
    print(f"total training FLOPs: {rows['train_flops'].sum():.3g}; outputs under {resolve_root(cfg.paths)}")
    check_repeats(cfg, problems)


def print_status(cfg: CampaignJobConfig, plan: list[Unit]) -> dict[str, int]:
    """Every unit: done / pending / running / preempted / failed / cancelled / vanished / unknown / missing, its job id,
    why it failed or vanished, and its log."""
    from collections import Counter

    from launchers.state import unit_states

    states = unit_states(plan, resolve_root(cfg.paths), campaign_dir(cfg, plan))
    for s in states:
        print(f"{s.state:9s} {s.unit.label}  {s.unit.id}  {('job ' + s.job_id) if s.job_id else ''}"
              f"{('  reason: ' + s.reason) if s.reason else ''}"
              f"{('  log ' + s.log) if s.log and s.state != 'done' else ''}")
    counts = Counter(s.state for s in states)
    print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f" ({len(plan)} units)")
    return dict(counts)


def verify_campaign(cfg: CampaignJobConfig, plan: list[Unit], progress: bool = True) -> int:
    """``action=verify``: every output of every done unit against the checksum recorded when it completed (status and
    runs read markers and sizes only). A damaged unit is no longer done (its marker is moved aside) and the next run
    recomputes it. Returns 1 when any was damaged."""
    from tqdm.auto import tqdm

    root = resolve_root(cfg.paths)
    done = [u for u in plan if units.is_done(root, u.id)]
    damaged = {}
    for u in tqdm(done, desc="verify", unit="unit", disable=not progress, dynamic_ncols=True):
        problem = units.verify_done(root, u.id)
        if problem:
            damaged[u.id] = problem
            print(f"damaged  {u.label}  {u.id}: {problem}")
    print(f"campaign {cfg.campaign.name}: {len(done) - len(damaged)} of {len(done)} done unit(s) intact"
          + (f"; {len(damaged)} damaged: no longer done, rerun proxy-campaign (action=run) to recompute them"
             if damaged else "") + f" ({len(plan) - len(done)} not done)")
    return 1 if damaged else 0


def checked_plan(cfg: CampaignJobConfig) -> list[Unit]:
    """The plan of a run and, when it has work left, its data check (:func:`check_data`), in one listing of the
    input files (each stat-ed once)."""
    with units.input_memo(_cache(cfg)):
        plan = plan_campaign(cfg)
        if len(done_units(cfg, plan)) < len(plan):
            check_data(cfg, plan)
    return plan


def check_data(cfg: CampaignJobConfig, plan: list[Unit]) -> None:
    """Before anything runs: the repetition check of :func:`data_plan` (warn, or fail by corpus.repeat_policy).
    Tokenization is the tokenize units' work: the driver reads no corpus."""
    from proxy_exp.data.tokenizer import planned_vocab_size

    with units.input_memo(_cache(cfg)):
        _, problems = data_plan(cfg, plan, planned_vocab_size(cfg.tokenizer)[0])
    check_repeats(cfg, problems)


def _parent_run(cfg: CampaignJobConfig, plan: list[Unit], cdir: str) -> Run:
    """The campaign's one parent MLflow run: the one named in ``<campaign dir>/parent_run_id``, else a new one. Read
    and created under the campaign lock, so drivers started together share one run."""
    from launchers.state import campaign_lock

    root = resolve_root(cfg.paths)
    id_file = os.path.join(cdir, "parent_run_id")
    tags = keys.unit_tags("campaign", f"campaign-{campaign_key(plan)}", cfg.campaign.name)
    truth = {keys.tag(keys.TRUTH_METRIC): cfg.evaluate.primary_metric}  # what this driver judges by (analysis reads it)
    with campaign_lock(cdir):
        prev = open(id_file).read().strip() if os.path.exists(id_file) else ""
        run = Run(cfg.tracking, root, f"campaign {cfg.campaign.name}", tags, run_id=prev)
        run.set_tags(truth)
        if run.run_id != prev:
            tmp = tmp_name(id_file)
            with open(tmp, "w") as f:
                f.write(run.run_id)
            os.replace(tmp, id_file)
        plan_file = os.path.join(cdir, "units.json")
        write_json(plan_file, [{"id": u.id, "campaign": cfg.campaign.name, "kind": u.kind, "role": u.role,
                                "corpus": u.corpus, "size": u.size, "seed": u.seed, "depends_on": u.depends_on}
                               for u in plan])
        run.log_params({"campaign.name": cfg.campaign.name, "campaign.corpora": ",".join(cfg.campaign.corpora),
                        "campaign.proxy_sizes": ",".join(cfg.campaign.proxy_sizes),
                        "campaign.target_size": cfg.campaign.target_size, "campaign.seeds": list(cfg.campaign.seeds),
                        "units": len(plan)} | keys.flat_params(cfg.traces, "traces")
                       | keys.flat_params(cfg.evaluate, "evaluate") | keys.flat_params(cfg.pretrain, "pretrain"))
        run.log_artifact(plan_file, "plan")
    return run


def submit_campaign(cfg: CampaignJobConfig, plan: list[Unit] | None = None) -> dict[str, dict]:
    """Slurm: submit every unit that is missing, failed or cancelled (``plan``: the command's :func:`checked_plan`),
    and return at once with the job ids. Reading
    the states, submitting and recording the jobs run under the campaign lock: a driver started beside another
    submits nothing the other one has submitted (it sees those units pending), and the job record keeps both
    drivers' jobs."""
    from launchers.state import campaign_lock, lane_load, load_jobs, needs_submission, save_jobs, unit_states
    from launchers.submit import submit_slurm

    plan = checked_plan(cfg) if plan is None else plan
    root = resolve_root(cfg.paths)
    cdir = campaign_dir(cfg, plan)
    ensure_experiment(cfg.tracking, root)
    with campaign_lock(cdir):
        states = unit_states(plan, root, cdir)
        to_submit = {s.unit.id for s in states if needs_submission(s)}
        running = {s.unit.id: s.job_id for s in states if s.state in ("pending", "running", "preempted")}
        parent = _parent_run(cfg, plan, cdir)
        for u in plan:
            u.config.parent_run_id = parent.run_id
        folder = os.path.join(cdir, "submitit", time.strftime("%Y%m%d-%H%M%S"), "%j")
        records = submit_slurm(plan, to_submit, running, cfg.executor, folder, lane_prefix=f"proxy-{os.path.basename(cdir)}",
                               lane_load=lane_load(states, load_jobs(cdir)))
        save_jobs(cdir, records)
    n_done = sum(s.state == "done" for s in states)
    print(f"campaign {cfg.campaign.name}: submitted {len(records)} unit(s) to Slurm; {n_done} done, "
          f"{len(running)} already pending or running")
    for u in plan:
        if u.id in records:
            print(f"  job {records[u.id]['job_id']:>10s}  {u.label}  {u.id}")
    print(f"status:  proxy-campaign action=status  (same overrides)\n"
          f"collect: proxy-campaign action=collect (analyses once every unit is done)")
    return records


def collect_campaign(cfg: CampaignJobConfig, plan: list[Unit] | None = None):
    """Analyse a campaign whose units ran elsewhere (Slurm): everything is read back from MLflow."""
    from analysis.reports import analyze_campaign

    plan = plan_campaign(cfg) if plan is None else plan
    counts = print_status(cfg, plan)
    if counts.get("done", 0) != len(plan):
        raise ValueError(f"campaign {cfg.campaign.name}: {len(plan) - counts.get('done', 0)} unit(s) not done yet; "
                         "rerun proxy-campaign (action=run) to resubmit failed or missing units, then collect again")
    root = resolve_root(cfg.paths)
    cdir = campaign_dir(cfg, plan)
    parent = _parent_run(cfg, plan, cdir)
    report = analyze_campaign(cfg.tracking, root, parent.run_id, cdir, cfg.analysis)
    parent.end("FINISHED")
    print("\n" + report.summary_text())
    return report


def run_campaign(cfg: CampaignJobConfig, progress: bool = True, plan: list[Unit] | None = None):
    """Run (or resume) a campaign (``plan``: the command's :func:`checked_plan`, made once); returns (outcome,
    report)."""
    from tqdm.auto import tqdm

    from analysis.reports import analyze_campaign
    from launchers.submit import run_units

    t0 = time.time()
    plan = checked_plan(cfg) if plan is None else plan
    root = resolve_root(cfg.paths)
    cdir = campaign_dir(cfg, plan)
    ensure_experiment(cfg.tracking, root)  # create the store once, before jobs fan out
    done = done_units(cfg, plan)
    print(f"campaign {cfg.campaign.name}: {len(plan)} units, {len(done)} already done, "
          f"{len(plan) - len(done)} to run ({cfg.executor.kind} executor, {cfg.executor.max_parallel} at once)")
    parent = _parent_run(cfg, plan, cdir)
    for u in plan:
        u.config.parent_run_id = parent.run_id
    bar = tqdm(total=len(plan), initial=len(done), desc="units", unit="unit", disable=not progress,
               dynamic_ncols=True)

    def on_event(event: str, u: Unit, info: str) -> None:
        if event in ("done", "failed", "skipped"):
            bar.update(1)
        bar.write(f"[{time.strftime('%H:%M:%S')}] {event:7s} {u.label} {info}".rstrip())

    outcome = run_units(plan, done, cfg.executor, os.path.join(cdir, "submitit", time.strftime("%Y%m%d-%H%M%S")),
                        on_event)
    bar.close()
    parent.log_metrics({keys.CAMPAIGN_UNITS_FAILED: len(outcome.failed), keys.CAMPAIGN_UNITS_RUN: len(outcome.done),
                        keys.CAMPAIGN_SECONDS: time.time() - t0})
    report = None
    if not outcome.failed and not outcome.skipped:
        report = analyze_campaign(cfg.tracking, root, parent.run_id, cdir, cfg.analysis)
    parent.end("FINISHED" if report is not None else "FAILED")
    if report is not None:
        print("\n" + report.summary_text())
        print("\nwritten:")
        for name, path in report.files.items():
            print(f"  {name:13s} {path}")
    if outcome.failed:
        print(f"\n{len(outcome.failed)} unit(s) failed; rerun the same command to retry only those:")
        for uid, err in outcome.failed.items():
            print(f"  {uid}: {err}")
    print(f"\ncampaign wall time {time.time() - t0:.1f} s; MLflow store: {tracking_uri(cfg.tracking, root)}"
          f"  (view: mlflow ui --backend-store-uri {tracking_uri(cfg.tracking, root)})")
    return outcome, report


def _main(cfg: DictConfig) -> int:
    job = to_job(cfg, CampaignJobConfig)
    check_tie_rule(job.analysis)
    if job.action == CampaignAction.run and not job.dry_run:
        plan = checked_plan(job)
    else:
        with units.input_memo(_cache(job)):  # the plan and what it prints list and stat each input file once
            plan = plan_campaign(job)
            if job.dry_run or job.action == CampaignAction.plan:
                print_plan(job, plan)
                return 0
    if job.action == CampaignAction.status:
        print_status(job, plan)
        return 0
    if job.action == CampaignAction.verify:
        if verify_campaign(job, plan):
            sys.exit(1)
        return 0
    if job.action == CampaignAction.collect:
        collect_campaign(job, plan)
        return 0
    if job.executor.kind == ExecutorKind.slurm:
        submit_campaign(job, plan)  # returns at once
        return 0
    outcome, report = run_campaign(job, plan=plan)
    if outcome.failed or outcome.skipped or report is None:
        sys.exit(1)
    return 0


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="campaign")
def _hydra_main(cfg: DictConfig) -> int:
    return run_app(_main, cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
