"""The campaign driver at DataDecide's scale, without training: plan, status and analysis of a campaign whose
bookkeeping state (input files, done unit folders, MLflow runs) is built here (issue 20, item 1).

State, per size (``--size``; ``tiny`` is for the test):

=========  =======  ================  ===================  ===========================  =================
size       recipes  files per source  proxy sizes x seeds  train units (x 7 sizes...)   runs in experiment
=========  =======  ================  ===================  ===========================  =================
tiny       2        3                 1 x 1 (+ dd_20m)     4                            ~15
small      5        100               6 x 3 (+ 1B target)  105                          400
medium     25       2,000             6 x 3 (+ 1B target)  525                          3,000
large      100      20,000            6 x 3 (+ 1B target)  2,100                        9,000
=========  =======  ================  ===================  ===========================  =================

- 8 shared JSON-lines sources (``<workdir>/data/s<k>/part-*.jsonl``) that every recipe mixes
  (``source: mixture``, ``mix:``) with its own weights, some 0. Each file holds one valid JSON line and is then
  extended (``os.truncate``, sparse) to ``--source-gb / files`` bytes: planning stats input files (size, mtime)
  and reads none, so the sizes are what a cluster's shards would have without the disk.
- A campaign config ``<workdir>/conf/campaign/bench_scale.yaml`` (found through ``hydra.searchpath``): the
  recipes, DataDecide's sizes (proxies dd_4m, dd_20m, dd_60m, dd_150m, dd_300m, dd_530m; target dd_1b; 3 seeds
  each), in-loop proxy scoring; composed with ``tokenizer=olmo pretrain=datadecide``.
- Every unit of the plan done, written by the measured checkout's own code (``proxy_exp.units.write_done``): train
  units with their model folder (``model.safetensors`` sparse at 4 bytes per parameter, config, tokenizer files),
  score units with tokens / per_trace / per_task Parquet files, evaluate units with lm-eval's results JSON.
- The MLflow experiment (the local SQLite store, and the same written through a ``proxy-mlflow-server`` started on
  127.0.0.1 with its defaults): the campaign's parent run (as ``proxy-campaign`` creates it, with its plan
  artifact), one run per train / score / evaluate unit with the jobs' keys (``proxy_exp.tracking.keys``: tags,
  params, ``proxy/<statistic>/<weighting>`` and ``proxy_task/...``, ``eval/<task>/<metric>``, ``data/<source>/...``,
  flops), proxy train runs with ``--loss-points`` steps of train/loss and ``--in-loop-points`` steps of the 80
  in-loop proxies, score runs with their Parquet artifacts, and runs of other campaigns (some FAILED) to fill the
  experiment.

Measured, each in a fresh subprocess of ``--repo`` (``python -m launchers.campaign`` there, cwd and PYTHONPATH set to
it), wall time and peak RSS (``os.wait4``'s ru_maxrss; a psutil poll enforces ``--rss-limit-gb``, ``--limit-s``
kills and reports "> limit"): ``action=plan`` (OLMo tokenizer; at tiny and small also the default BPE), ``action=status``,
``action=collect`` (status + the campaign analysis) and ``proxy-analyze campaign_name=bench_scale``, the last two on
the SQLite store and through the server. The table gives each figure per train unit and its growth between the
sizes measured in this run, beside the targets of issue 20.

  python benchmarks/bench_campaign_scale.py --size small
  python benchmarks/bench_campaign_scale.py --all --limit-s 600
  python benchmarks/bench_campaign_scale.py --size small --repo /tmp/before --limit-s 300 --rss-limit-gb 12
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
THIS_REPO = os.path.dirname(HERE)
CAMPAIGN = "bench_scale"
N_SOURCES = 8
# DataDecide's model sizes (d_model, layers, heads), OLMo's 50k vocabulary
DD_SIZES = {"dd_4m": (64, 8, 8), "dd_20m": (256, 8, 8), "dd_60m": (384, 16, 12), "dd_150m": (768, 12, 12),
            "dd_300m": (1024, 16, 16), "dd_530m": (1344, 16, 16), "dd_1b": (2048, 16, 16)}
PROXIES = ["dd_4m", "dd_20m", "dd_60m", "dd_150m", "dd_300m", "dd_530m"]
TARGET = "dd_1b"
# recipes, files per source, proxy sizes, seeds, runs in the experiment (the campaign's own runs, then runs of other
# campaigns up to this total; at least a quarter of the campaign's own)
SIZES = {
    "tiny": dict(recipes=2, files=3, proxies=["dd_4m"], target="dd_20m", seeds=[0], experiment_runs=15),
    "small": dict(recipes=5, files=100, proxies=PROXIES, seeds=[0, 1, 2], experiment_runs=400),
    "medium": dict(recipes=25, files=2000, proxies=PROXIES, seeds=[0, 1, 2], experiment_runs=3000),
    "large": dict(recipes=100, files=20000, proxies=PROXIES, seeds=[0, 1, 2], experiment_runs=9000),
}
# issue 20's targets (at medium: 25 recipes x 7 sizes x 3 seeds, 2,000-file sources, 3,000 runs)
TARGETS = {"plan": (30.0, 1.0), "status": (5.0, None), "collect": (60.0, None), "analyze": (60.0, None)}
TARGET_SIZE = "medium"


# ---------------------------------------------------------------------------------------------- the state (parent)
def recipe_weights(n_recipes: int, seed: int = 0) -> list[dict[str, float]]:
    """Each recipe's weight of each of the 8 sources: random mixtures, a third of the recipes with 1-3 sources at
    weight 0 (never fewer than 2 sources left)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for r in range(n_recipes):
        w = rng.dirichlet(np.full(N_SOURCES, 0.8))
        if r % 3 == 0:
            w[rng.choice(N_SOURCES, size=1 + r % 3 + (r // 3) % 2, replace=False)] = 0.0
        w = np.round(w / w.sum(), 4)
        out.append({f"s{k}": float(w[k]) for k in range(N_SOURCES)})
    return out


def write_sources(data: str, files: int, source_gb: float) -> int:
    """8 sources of ``files`` JSON-lines files each: one valid line, then sparse up to the file size. Returns the
    file size."""
    size = max(4096, int(source_gb * 1e9 / files))
    for k in range(N_SOURCES):
        folder = os.path.join(data, f"s{k}")
        os.makedirs(folder, exist_ok=True)
        for i in range(files):
            path = os.path.join(folder, f"part-{i:05d}.jsonl")
            with open(path, "w") as f:
                f.write(json.dumps({"id": f"s{k}-{i}", "text": f"document {i} of source {k}", "source": f"s{k}"}) + "\n")
            os.truncate(path, size)
    return size


def write_campaign_yaml(conf: str, data: str, spec: dict) -> str:
    weights = recipe_weights(spec["recipes"])
    corpora = {}
    for r, w in enumerate(weights):
        name = f"r{r:03d}"
        corpora[name] = {"name": name, "source": "mixture", "mix": {
            s: {"name": s, "source": "jsonl", "paths": [os.path.join(data, s)], "weight": v} for s, v in w.items()}}
    sizes = {n: {"name": n, "arch": "llama", "n_layers": layers, "d_model": d, "n_heads": h, "n_kv_heads": h,
                  "max_seq_len": 2048} for n, (d, layers, h) in DD_SIZES.items()
             if n in spec["proxies"] or n == spec.get("target", TARGET)}
    cfg = {"name": CAMPAIGN, "corpora": corpora, "sizes": sizes, "proxy_sizes": list(spec["proxies"]),
           "target_size": spec.get("target", TARGET), "seeds": list(spec["seeds"]), "target_seeds": list(spec["seeds"]),
           "evaluate_proxies": True, "score_targets": False, "target_pretrain": {}, "in_loop_score_every": 1000}
    os.makedirs(os.path.join(conf, "campaign"), exist_ok=True)
    path = os.path.join(conf, "campaign", f"{CAMPAIGN}.yaml")
    with open(path, "w") as f:
        f.write("# written by benchmarks/bench_campaign_scale.py\n" + json.dumps(cfg, indent=1) + "\n")  # JSON is YAML
    return path


def overrides(conf: str, root: str, uri: str = "", tokenizer: str = "olmo") -> list[str]:
    out = [f"hydra.searchpath=[file://{conf}]", f"campaign={CAMPAIGN}", f"tokenizer={tokenizer}", "pretrain=datadecide",
           f"paths.root={root}", f"hydra.run.dir={root}/hydra/run-{time.time_ns()}"]
    return out + ([f"tracking.uri={uri}"] if uri else [])


def child_env(repo: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.update(PYTHONPATH=repo, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(repo: str, root: str) -> str:
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "launchers.mlflow_server", "start", "--root", root, "--port", str(port)],
                       cwd=repo, env=child_env(repo), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"proxy-mlflow-server start failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return f"http://127.0.0.1:{port}"


def stop_server(repo: str, root: str) -> None:
    subprocess.run([sys.executable, "-m", "launchers.mlflow_server", "stop", "--root", root], cwd=repo,
                   env=child_env(repo), capture_output=True, text=True, timeout=120)


def build_state(args, size: str, base: str, stores: list[str]) -> dict:
    """Files and the campaign config here; unit folders and MLflow runs by the measured checkout's code (a
    subprocess of ``--repo``). Returns what was built and how long each part took."""
    spec = SIZES[size]
    t0 = time.perf_counter()
    data, conf = os.path.join(base, "data"), os.path.join(base, "conf")
    file_size = write_sources(data, spec["files"], args.source_gb)
    write_campaign_yaml(conf, data, spec)
    t_files = time.perf_counter() - t0
    state = {"size": size, "base": base, "conf": conf, "data": data, "file_size": file_size, "files_s": t_files,
             "roots": {"local": os.path.join(base, "local")}, "uris": {"local": ""}}
    if "server" in stores:
        sroot = os.path.join(base, "server")
        os.makedirs(sroot, exist_ok=True)
        # the server's store and artifacts (proxy-mlflow-server --root); the campaign's paths.root shares the unit
        # folders of the local root, and keeps its own campaigns/ (the parent run id of this store)
        state["server_root"] = os.path.join(base, "mlflow_server")
        state["uris"]["server"] = start_server(args.repo, state["server_root"])
        state["roots"]["server"] = sroot
    spec_file = os.path.join(base, "build.json")
    with open(spec_file, "w") as f:
        json.dump({"size": size, "spec": spec, "conf": conf, "roots": state["roots"], "uris": state["uris"],
                   "stores": stores, "loss_points": args.loss_points, "in_loop_points": args.in_loop_points,
                   "seed": 0}, f)
    t1 = time.perf_counter()
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--build-units", spec_file], cwd=args.repo,
                       env=child_env(args.repo), capture_output=True, text=True)
    if r.returncode != 0:
        if "server_root" in state:
            stop_server(args.repo, state["server_root"])
        raise SystemExit(f"building the state failed:\n{r.stdout[-3000:]}{r.stderr[-5000:]}")
    built = json.loads(r.stdout.strip().splitlines()[-1])
    state.update(built)
    state["units_s"] = time.perf_counter() - t1
    state["build_s"] = time.perf_counter() - t0
    return state


# ------------------------------------------------------------------------------ the state (child, in --repo's code)
def _build_units(spec_file: str) -> None:
    """In a subprocess of the measured checkout: plan the campaign with its code, mark every unit done with
    realistic outputs, and write the MLflow experiment (each store of ``stores``)."""
    with open(spec_file) as f:
        b = json.load(f)
    repo = os.getcwd()
    sys.path.insert(0, repo)
    import numpy as np
    import pandas as pd

    from launchers.app import CONF_DIR, to_job
    from launchers.plan import plan_campaign
    from proxy_exp import units
    from proxy_exp.config import CampaignJobConfig
    from proxy_exp.data.tokenizer import planned_vocab_size
    from proxy_exp.train.plan import plan_training

    assert os.path.abspath(units.__file__).startswith(repo + os.sep), (units.__file__, repo)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def job_for(root: str, uri: str) -> CampaignJobConfig:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                cfg = compose(config_name="campaign", overrides=[o for o in overrides(b["conf"], root, uri)
                                                                 if not o.startswith("hydra.run")])
        finally:
            GlobalHydra.instance().clear()
        return to_job(cfg, CampaignJobConfig)

    t0 = time.perf_counter()
    local_root = b["roots"]["local"]
    job = job_for(local_root, "")
    plan = plan_campaign(job)
    t_plan = time.perf_counter() - t0
    vocab = planned_vocab_size(job.tokenizer)[0]
    rng = np.random.default_rng(b["seed"])
    sizes = {}
    for u in plan:
        if u.kind == "train" and u.size not in sizes:
            sizes[u.size] = plan_training(u.config, vocab)
    tok_file = _tokenizer_file(job, local_root)
    traces_tasks = list(job.traces.tasks) or ["task"]
    n_traces = len(traces_tasks) * (job.traces.per_task or 16)
    eval_tasks = list(job.evaluate.tasks)
    # the recipes' quality: the truth ranks them, proxies see it with noise (the analysis has something to decide)
    corpora = sorted({u.corpus for u in plan if u.kind == "train"})
    quality = {c: float(q) for c, q in zip(corpora, rng.normal(size=len(corpora)))}
    train_of = {u.id: u for u in plan if u.kind == "train"}

    # unit folders
    t1 = time.perf_counter()
    counts = {"units": len(plan)}
    for u in plan:
        counts[u.kind] = counts.get(u.kind, 0) + 1
        d = units.unit_dir(local_root, u.id)
        os.makedirs(d, exist_ok=True)
        big = {}
        if u.kind == "train":
            tp = sizes[u.size]
            model = os.path.join(d, "model")
            os.makedirs(model, exist_ok=True)
            big["model/model.safetensors"] = 4 * tp.n_params  # fp32 weights, sparse
            os.link(tok_file, os.path.join(model, "tokenizer.json"))
            for name, obj in (("config.json", {"architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
                                               "hidden_size": u.config.model.d_model,
                                               "num_hidden_layers": u.config.model.n_layers}),
                              ("generation_config.json", {"bos_token_id": 0, "eos_token_id": 0}),
                              ("tokenizer_config.json", {"model_max_length": 2048, "eos_token": "<|endoftext|>"}),
                              ("special_tokens_map.json", {"eos_token": "<|endoftext|>"}),
                              ("model_record.json", {"unit_id": u.id, "n_params": tp.n_params,
                                                     "train_flops": tp.flops, "tokens": tp.tokens})):
                with open(os.path.join(model, name), "w") as f:
                    json.dump(obj, f, indent=2)
            result = {"unit_id": u.id, "model_dir": model, "final_loss": 3.0, "tokens": tp.tokens, "steps": tp.steps,
                      "flops": tp.flops, "n_params": tp.n_params, "n_params_non_embedding": tp.n_params_non_embedding,
                      "run_id": "", "seconds": 3600.0, "stopped": False, "device": "cuda:0"}
        elif u.kind == "score":
            frames = _score_frames(rng, traces_tasks, n_traces, quality[u.corpus])
            for name, df in frames.items():
                df.to_parquet(os.path.join(d, f"{name}.parquet"), index=False)
            result = {"unit_id": u.id, "proxies": {}, "tokens_scored": len(frames["tokens"]),
                      "tokens_forward": 4 * len(frames["tokens"]), "n_traces": n_traces, "flops": 1e12,
                      "n_params": sizes[u.size].n_params, "run_id": "", "seconds": 60.0,
                      "tokens_path": os.path.join(d, "tokens.parquet")}
        elif u.kind == "evaluate":
            record = {"results": {t: {"acc,none": 0.5, "acc_norm,none": 0.5} for t in eval_tasks},
                      "configs": {t: {"task": t, "doc_to_text": "x" * 2000, "metadata": {"version": 1}}
                                  for t in eval_tasks},
                      "n-shot": {t: 0 for t in eval_tasks}, "samples_note": "x" * 40_000, "notes": []}
            with open(os.path.join(d, "lm_eval_results.json"), "w") as f:
                json.dump(record, f, indent=1)
            result = {"unit_id": u.id, "mean": {"acc": 0.5}, "per_task": {}, "tokens_forward": 10**6, "flops": 1e13,
                      "n_params": sizes[u.size].n_params, "run_id": "", "seconds": 120.0, "higher_is_better": {}}
        else:
            result = {"unit_id": u.id, "source": u.corpus, "shards": [], "inputs": [], "documents": 0, "tokens": 0,
                      "bytes": 0, "seconds": 1.0}
        _write_done(units, local_root, u.id, result, big)
    t_units = time.perf_counter() - t1

    # MLflow
    out = {"plan_s": t_plan, "folders_s": t_units, "counts": counts, "train_units": counts.get("train", 0),
           "mlflow_s": {}, "runs": {}}
    for store in b["stores"]:
        root = b["roots"][store]
        if store != "local":
            for shared in ("units", "cache"):
                link = os.path.join(root, shared)
                if not os.path.exists(link):
                    os.makedirs(os.path.join(local_root, shared), exist_ok=True)
                    os.symlink(os.path.join(local_root, shared), link)
        t2 = time.perf_counter()
        sjob = job_for(root, b["uris"][store])
        out["runs"][store] = _write_runs(sjob, plan, root, b, rng, sizes, quality, train_of, traces_tasks, eval_tasks,
                                         n_traces, threads=4 if store != "local" else 1)
        out["mlflow_s"][store] = time.perf_counter() - t2
    print(json.dumps(out))


def _log_in_loop_history(run, k, udir: str, history: list[tuple], total_steps: int) -> None:
    """The in-loop history a train job of this checkout logs (proxy_exp/train/in_loop.py): step, key, value as one
    Parquet artifact, the run's planned steps in its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(zip(*history))
    table = pa.table({c: pa.array(v) for c, v in zip(k.HISTORY_COLUMNS, cols)})
    table = table.replace_schema_metadata({k.HISTORY_TOTAL_STEPS: str(total_steps)})
    path = os.path.join(udir, k.IN_LOOP_HISTORY)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)
    run.log_artifact(path, os.path.dirname(k.IN_LOOP_HISTORY))


_ZEROS_SHA: dict[int, str] = {}


def _zeros_sha256(size: int) -> str:
    """sha256 of ``size`` zero bytes (what a sparse file holds), computed once per size."""
    import hashlib

    if size not in _ZEROS_SHA:
        h, block = hashlib.sha256(), bytes(1 << 22)
        for _ in range(size // len(block)):
            h.update(block)
        h.update(bytes(size % len(block)))
        _ZEROS_SHA[size] = h.hexdigest()
    return _ZEROS_SHA[size]


def _write_done(units, root: str, unit_id: str, result: dict, big: dict[str, int]) -> None:
    """``units.write_done`` over the unit's folder; the ``big`` files (relative path -> size; larger than what a
    read hashes, ``units.HASH_CHECK_MAX_BYTES``) are made sparse afterwards and entered in MANIFEST.json with their
    size and the checksum of their zeros, as write_done would (it would read every byte: a 1B model is 4.7 GB)."""
    limit = getattr(units, "HASH_CHECK_MAX_BYTES", 64 << 20)
    d = units.unit_dir(root, unit_id)
    small = {rel: size for rel, size in big.items() if size <= limit}
    for rel, size in small.items():
        os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
        with open(os.path.join(d, rel), "wb"):
            pass
        os.truncate(os.path.join(d, rel), size)
    units.write_done(root, unit_id, result)
    rest = {rel: size for rel, size in big.items() if size > limit}
    if not rest:
        return
    man = os.path.join(d, units.MANIFEST)
    with open(man) as f:
        files = json.load(f)
    for rel, size in rest.items():
        os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
        with open(os.path.join(d, rel), "wb"):
            pass
        os.truncate(os.path.join(d, rel), size)
        files[rel] = {"size": size, "sha256": _zeros_sha256(size)}
    with open(man + ".tmp", "w") as f:
        json.dump(files, f)
    os.replace(man + ".tmp", man)


def _tokenizer_file(job, root: str) -> str:
    """A tokenizer.json of the campaign's tokenizer (OLMo's, 2 MB) to hard-link into every model folder."""
    from proxy_exp.data.tokenizer import resolve_tokenizer_path

    path = ""
    try:
        p = resolve_tokenizer_path(job.tokenizer.path) if job.tokenizer.path else ""
        path = os.path.join(p, "tokenizer.json") if p and os.path.isdir(p) else p
    except Exception:  # noqa: BLE001 (a BPE campaign: no file yet)
        path = ""
    os.makedirs(root, exist_ok=True)
    dst = os.path.join(root, "bench_tokenizer.json")
    if path and os.path.isfile(path):
        shutil.copyfile(path, dst)
    else:
        with open(dst, "wb") as f:
            f.write(os.urandom(2_000_000))
    return dst


def _score_frames(rng, tasks: list[str], n_traces: int, quality: float) -> dict:
    import numpy as np
    import pandas as pd

    from proxy_exp.config import STATISTICS, WEIGHTINGS

    proxies = [f"{s}/{w}" for s in STATISTICS for w in WEIGHTINGS]
    trace_task = [tasks[i % len(tasks)] for i in range(n_traces)]
    per_trace = pd.DataFrame(rng.normal(size=(n_traces, len(proxies))) + quality, columns=proxies)
    per_trace.insert(0, "task", trace_task)
    per_trace.insert(0, "trace_id", [f"{t}-{i}" for i, t in enumerate(trace_task)])
    per_task = per_trace.groupby("task", sort=True)[proxies].mean().reset_index()
    n_tok = n_traces * 200
    tokens = pd.DataFrame({"trace_id": np.repeat(per_trace["trace_id"].to_numpy(), 200),
                           "task": np.repeat(np.asarray(trace_task), 200),
                           "token_id": rng.integers(0, 50000, n_tok).astype(np.int32),
                           "p_expert": rng.random(n_tok).astype(np.float32),
                           **{s: rng.random(n_tok).astype(np.float32) for s in STATISTICS}})
    return {"tokens": tokens, "per_trace": per_trace, "per_task": per_task}


def _write_runs(job, plan, root: str, b: dict, rng, sizes: dict, quality: dict, train_of: dict, traces_tasks: list,
                eval_tasks: list, n_traces: int, threads: int = 1) -> dict:
    """The campaign's parent run (as proxy-campaign creates it) and one run per unit, then runs of other campaigns
    up to the experiment's size. Returns the run counts."""
    from concurrent.futures import ThreadPoolExecutor

    from launchers.campaign import _parent_run, campaign_dir
    from proxy_exp import units
    from proxy_exp.config import STATISTICS, WEIGHTINGS
    from proxy_exp.tracking import Run, ensure_experiment, keys

    ensure_experiment(job.tracking, root)
    parent = _parent_run(job, plan, campaign_dir(job, plan))
    parent.end("FINISHED")
    proxies = [keys.proxy_key(s, w) for s in STATISTICS for w in WEIGHTINGS]
    seeds = [int(x) for x in rng.integers(0, 2**31, size=len(plan) * 4)]

    def one(u, campaign: str, parent_id: str, unit_id: str, seed: int, status: str = "FINISHED") -> None:
        import numpy as np

        from proxy_exp.tracking import keys as k

        r = np.random.default_rng(seed)
        q = quality.get(u.corpus, 0.0)
        tp = sizes[u.size]
        udir = units.unit_dir(root, u.id)
        scale = 1.0 + 0.2 * list(sizes).index(u.size)  # larger models see the recipes' quality more clearly
        tags = {k.CORPUS: u.corpus, k.SIZE: u.size, k.ROLE: u.role, k.SEED: u.seed}
        if u.kind != "train":
            tags[k.TRAIN_UNIT] = u.depends_on[0]
        name = f"{u.kind} {u.corpus} {u.size} s{u.seed}"
        run = Run(job.tracking, root, name, k.unit_tags(u.kind, unit_id, campaign, **tags), parent_id)
        cfg = u.config
        if u.kind == "train":
            run.log_params(k.flat_params(cfg.model, "model") | k.flat_params(cfg.pretrain, "pretrain")
                           | k.flat_params(cfg.corpus, "corpus") | k.flat_params(cfg.tokenizer, "tokenizer")
                           | {"seed": cfg.seed, k.N_PARAMS: tp.n_params, k.N_PARAMS_NON_EMBEDDING: tp.n_params_non_embedding,
                              "steps": tp.steps, "tokens": tp.tokens, "world_size": 8, "unit_dir": udir,
                              "packed_sequences": tp.tokens // cfg.pretrain.seq_len, "device": "cuda",
                              "gpus_per_node_resolved": 8, "bf16": True})
            for s in sorted(cfg.corpus.mix or {cfg.corpus.name: None}):
                w = float(cfg.corpus.mix[s].weight) if cfg.corpus.mix else 1.0
                run.log_metrics({k.data_key(s, "share"): w, k.data_key(s, "weight"): w, k.data_key(s, "epochs"): 0.5,
                                 k.data_key(s, "sequences"): w * tp.steps * cfg.pretrain.global_batch}, step=0)
            steps = np.unique(np.geomspace(1, tp.steps, b["loss_points"]).astype(int))
            fpt = tp.flops / max(tp.tokens, 1)
            for st in steps:
                tok = int(st) * cfg.pretrain.global_batch * cfg.pretrain.seq_len
                run.log_metrics({k.TRAIN_LOSS: 10.0 / (1 + np.log1p(st)) - 0.1 * q, k.TRAIN_LR: 0.003,
                                 k.TRAIN_TOKENS: tok, k.FLOPS_TRAIN: tok * fpt}, step=int(st))
            if u.role == "proxy":
                history = []
                for st in np.unique(np.geomspace(1, tp.steps, b["in_loop_points"]).astype(int)):
                    frac = st / tp.steps
                    m = {p: float(q * scale * frac + r.normal()) for p in proxies}
                    run.log_metrics(m, step=int(st))
                    history += [(int(st), key, value) for key, value in m.items()]
                if hasattr(k, "IN_LOOP_HISTORY"):  # a checkout whose train job logs its in-loop history as one file
                    _log_in_loop_history(run, k, udir, history, int(tp.steps))
            run.log_metrics({k.TRAIN_FINAL_LOSS: 3.0 - 0.1 * q, k.TRAIN_SECONDS: 3600.0, k.N_PARAMS: tp.n_params,
                             k.N_PARAMS_NON_EMBEDDING: tp.n_params_non_embedding}, step=int(tp.steps))
            run.set_tags({k.tag(k.MODEL_DIR): os.path.join(udir, "model")})
        elif u.kind == "score":
            run.log_params(k.flat_params(cfg.score, "score") | k.flat_params(cfg.traces, "traces")
                           | {"model.path": cfg.model.path, "model.ref": cfg.model.path, k.N_PARAMS: tp.n_params,
                              "n_traces": n_traces, "model.device_resolved": "cuda",
                              "model.dtype_resolved": "bfloat16"})
            run.log_params({"score.kernel_resolved": "triton", "score.batch_size_resolved": 8})
            m = {p: float(q * scale + r.normal()) for p in proxies}
            for t in traces_tasks:
                m.update({k.proxy_task_key(t, *p.split("/")[1:]): float(q * scale + r.normal()) for p in proxies})
            m.update({k.FLOPS_SCORE: 1e12, k.FLOPS_TRAIN: tp.flops, k.SCORE_TOKENS_SCORED: n_traces * 200,
                      k.SCORE_TOKENS_FORWARD: n_traces * 800, k.SCORE_SECONDS: 60.0})
            run.log_metrics(m, step=0)
            for name in ("tokens", "per_trace", "per_task"):
                path = os.path.join(udir, f"{name}.parquet")
                if os.path.exists(path):
                    run.log_artifact(path, "scores")
        else:
            run.log_params(k.flat_params(cfg.evaluate, "evaluate") | {"model.path": cfg.model.path,
                                                                      "model.ref": cfg.model.path,
                                                                      "model.device_resolved": "cuda",
                                                                      "model.dtype_resolved": "bfloat16"})
            run.log_params({k.EVAL_HIGHER_IS_BETTER: json.dumps({"acc": True, "acc_norm": True,
                                                                "logprob_per_char": True})})
            record = os.path.join(udir, "lm_eval_results.json")
            if os.path.exists(record):
                run.log_artifact(record, "lm_eval")
            m = {}
            for t in eval_tasks:
                m.update({k.eval_key(t, "acc"): 0.5 + 0.05 * q * scale + 0.01 * r.normal(),
                          k.eval_key(t, "acc_norm"): 0.5 + 0.05 * q * scale + 0.01 * r.normal(),
                          k.eval_key(t, "logprob_per_char"): -1.0 + 0.1 * q * scale + 0.01 * r.normal(),
                          k.eval_key(t, "n"): 100})
            for metric in ("acc", "acc_norm", "logprob_per_char"):
                m[k.eval_key(k.MEAN, metric)] = float(np.mean([m[k.eval_key(t, metric)] for t in eval_tasks]))
            m.update({k.FLOPS_EVAL: 1e13, k.FLOPS_TRAIN: tp.flops, k.EVAL_SECONDS: 120.0, k.EVAL_TOKENS_FORWARD: 10**6})
            run.log_metrics(m, step=0)
        run.end(status)

    model_units = [u for u in plan if u.kind in keys.UNIT_KINDS]
    jobs = [(u, job.campaign.name, parent.run_id, u.id, seeds[i], "FINISHED") for i, u in enumerate(model_units)]
    # other campaigns: the same kinds of runs (other unit ids; every 20th FAILED), 100 units and a parent each
    others = max(b["spec"]["experiment_runs"] - len(model_units) - 1, len(model_units) // 4)
    n_other, i = 0, len(jobs)
    other_parents = 0
    while n_other < others:
        name = f"other-{other_parents}"
        prun = Run(job.tracking, root, f"campaign {name}", keys.unit_tags("campaign", f"campaign-{name}", name))
        prun.end("FINISHED")
        other_parents += 1
        n_other += 1
        for u in model_units[:100]:
            if n_other >= others:
                break
            jobs.append((u, name, prun.run_id, f"{u.id}-{name}", seeds[i % len(seeds)],
                         "FAILED" if n_other % 20 == 0 else "FINISHED"))
            n_other += 1
            i += 1
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda a: one(*a), jobs))
    else:
        for a in jobs:
            one(*a)
    return {"campaign": len(model_units) + 1, "other": n_other, "total": len(model_units) + 1 + n_other}


# ------------------------------------------------------------------------------------------------- measuring
def measure(cmd: list[str], cwd: str, env: dict, limit_s: float, rss_limit_gb: float, log: str) -> dict:
    """Run ``cmd`` in a fresh process (own session); wall time and peak RSS (ru_maxrss of os.wait4); killed at
    ``limit_s`` or when the process tree's RSS passes ``rss_limit_gb``."""
    import psutil

    with open(log + ".out", "w") as out, open(log + ".err", "w") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
        proc = psutil.Process(p.pid)
        killed, polled_peak = "", 0
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            elapsed = time.perf_counter() - t0
            try:
                rss = sum(x.memory_info().rss for x in [proc, *proc.children(recursive=True)])
            except psutil.Error:
                rss = 0
            polled_peak = max(polled_peak, rss)
            if not killed and (elapsed > limit_s or rss > rss_limit_gb * 2**30):
                killed = "time" if elapsed > limit_s else "memory"
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    peak = max(ru.ru_maxrss * 1024, polled_peak)
    tail = ""
    if p.returncode != 0 and not killed:
        with open(log + ".err") as f:
            lines = [line.strip() for line in f if line.strip()]
        tail = lines[-1][:160] if lines else f"exit {p.returncode}"
    return {"seconds": seconds, "peak": peak, "rc": p.returncode, "killed": killed, "error": tail}


def commands(args, state: dict, stores: list[str], size: str) -> list[tuple[str, str, list[str], str]]:
    """(what, store, command, root) of every measurement of one size."""
    py = sys.executable
    conf, local = state["conf"], state["roots"]["local"]
    out = [("plan", "-", [py, "-m", "launchers.campaign", *overrides(conf, local), "action=plan"], local)]
    if size in ("tiny", "small"):
        out.append(("plan (bpe)", "-", [py, "-m", "launchers.campaign", *overrides(conf, local, tokenizer="bpe"),
                                        "action=plan"], local))
    out.append(("status", "-", [py, "-m", "launchers.campaign", *overrides(conf, local), "action=status"], local))
    for store in stores:
        root, uri = state["roots"][store], state["uris"][store]
        out.append(("collect", store, [py, "-m", "launchers.campaign", *overrides(conf, root, uri), "action=collect"],
                    root))
        analyze = [f"paths.root={root}", f"campaign_name={CAMPAIGN}", f"hydra.run.dir={root}/hydra/analyze",
                   f"output_dir={root}/analyze"] + ([f"tracking.uri={uri}"] if uri else [])
        out.append(("analyze", store, [py, "-m", "launchers.analyze", *analyze], root))
    return out


def run_size(args, size: str, workdir: str, stores: list[str]) -> tuple[dict, list[dict]]:
    base = os.path.join(workdir, size)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    state = build_state(args, size, base, stores)
    runs = state["runs"]
    print(f"[{size}] state built in {state['build_s']:.1f} s (files {state['files_s']:.1f} s, plan in the builder "
          f"{state['plan_s']:.1f} s, unit folders {state['folders_s']:.1f} s, MLflow "
          + ", ".join(f"{k} {v:.1f} s" for k, v in state["mlflow_s"].items()) + "): "
          f"{SIZES[size]['recipes']} recipes, {N_SOURCES} sources x {SIZES[size]['files']} files of "
          f"{state['file_size'] / 1e6:,.0f} MB (sparse), {state['counts']['units']} units ("
          + ", ".join(f"{n} {k}" for k, n in state["counts"].items() if k != "units") + "), runs per store: "
          + ", ".join(f"{k} {v['total']} ({v['campaign']} of the campaign)" for k, v in runs.items()), flush=True)
    results = []
    try:
        for what, store, cmd, root in commands(args, state, stores, size):
            log = os.path.join(base, f"log-{what.replace(' ', '_').strip('()')}-{store}")
            r = measure(cmd, args.repo, child_env(args.repo), args.limit_s, args.rss_limit_gb, log)
            r.update(what=what, store=store, size=size, train_units=state["train_units"], units=state["counts"]["units"])
            results.append(r)
            print(f"[{size}] {what:10s} {store:6s} {_cell(r)}", flush=True)
    finally:
        if "server" in stores:
            stop_server(args.repo, state["server_root"])
    return state, results


def _cell(r: dict) -> str:
    if r["killed"] == "time":
        return f"> limit ({r['seconds']:.0f} s), peak {r['peak'] / 2**30:.2f} GB so far"
    if r["killed"] == "memory":
        return f"> RSS limit at {r['seconds']:.0f} s ({r['peak'] / 2**30:.2f} GB)"
    if r["rc"] != 0:
        return f"failed (rc {r['rc']}: {r['error']})"
    return f"{r['seconds']:.1f} s, peak {r['peak'] / 2**30:.2f} GB"


def report(args, results: list[dict]) -> None:
    sys.path.insert(0, HERE)
    from measure import print_table

    rows, prev = [], {}
    for r in results:
        key = (r["what"], r["store"])
        ok = r["rc"] == 0 and not r["killed"]
        row = {"command": r["what"], "store": r["store"], "size": r["size"],
               "units (train)": f"{r['units']} ({r['train_units']})" if r["what"] != "plan (bpe)" else
               f"{r['units']} + bpe ({r['train_units']})"}
        if r["killed"] == "time":
            row["wall"] = f"> {args.limit_s:.0f} s (limit)"
        elif r["killed"] == "memory":
            row["wall"] = f"killed at {r['seconds']:.0f} s (RSS > {args.rss_limit_gb:g} GB)"
        elif not ok:
            row["wall"] = f"failed (rc {r['rc']})"
        else:
            row["wall"] = f"{r['seconds']:.1f} s"
        row["peak RSS"] = f"{r['peak'] / 2**30:.2f} GB" + (" (so far)" if r["killed"] else "")
        per = r["seconds"] / max(r["train_units"], 1)
        row["s / train unit"] = f"{per:.3f}" + ("+" if r["killed"] else "")
        if key in prev and ok and prev[key][1]:
            row["x per unit vs " + "prev."] = f"{per / prev[key][0]:.2f}x"
        prev[key] = (per, ok)
        base_what = r["what"].split(" ")[0]
        t = TARGETS.get(base_what)
        if t and r["what"] == base_what:
            limit_s, limit_gb = t
            row["target (medium)"] = f"<= {limit_s:g} s" + (f", <= {limit_gb:g} GB" if limit_gb else "")
            if r["size"] == TARGET_SIZE:
                met = ok and r["seconds"] <= limit_s and (limit_gb is None or r["peak"] <= limit_gb * 2**30)
                row["met"] = "yes" if met else "NO"
            else:
                row["met"] = "(at medium)"
        rows.append(row)
    cols = ["command", "store", "size", "units (train)", "wall", "peak RSS", "s / train unit", "x per unit vs prev.",
            "target (medium)", "met"]
    print_table(rows, cols, title=f"campaign driver at scale ({os.cpu_count()} cores; checkout {args.repo} at "
                                  f"{_commit(args.repo)}; limit {args.limit_s:g} s, {args.rss_limit_gb:g} GB)")
    print("x per unit vs prev.: time per train unit against the previous size of this run (<= 1.0x: no worse than "
          "linear). Targets (issue 20): plan <= 30 s and <= 1 GB, status <= 5 s, analysis <= 60 s at 25 recipes x 7 "
          "sizes x 3 seeds, 2,000-file sources, 3,000 runs; large no worse than linear.")


def _commit(repo: str) -> str:
    r = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    return (r.stdout.strip() or "?") + (" + uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="small")
    p.add_argument("--all", action="store_true", help="small, medium and large in turn")
    p.add_argument("--repo", default=THIS_REPO, help="the checkout to measure (default: this one)")
    p.add_argument("--workdir", default="", help="where the states are built (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the workdir")
    p.add_argument("--limit-s", type=float, default=300.0, help="time limit of each measured command")
    p.add_argument("--rss-limit-gb", type=float, default=12.0, help="kill a measured command past this RSS")
    p.add_argument("--stores", default="local,server", help="local (SQLite) and/or server (proxy-mlflow-server)")
    p.add_argument("--mlflow-up-to", choices=list(SIZES), default="",
                   help="build MLflow stores (and measure the analysis) only up to this size; larger sizes measure "
                        "plan and status (9,000 runs per store take hours to write on 2 cores)")
    p.add_argument("--source-gb", type=float, default=1000.0, help="apparent size of each source (sparse files)")
    p.add_argument("--loss-points", type=int, default=20, help="steps of train/loss etc. logged per train run")
    p.add_argument("--in-loop-points", type=int, default=8, help="steps of in-loop proxies per proxy train run")
    p.add_argument("--build-only", action="store_true", help="build the state, print its summary as JSON, stop")
    p.add_argument("--build-units", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build_units:
        _build_units(args.build_units)
        return
    args.repo = os.path.abspath(args.repo)
    stores = [s for s in args.stores.split(",") if s]
    sizes = ["small", "medium", "large"] if args.all else [args.size]
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_campaign_scale_")
    os.makedirs(workdir, exist_ok=True)
    results = []
    try:
        for size in sizes:
            if args.build_only:
                base = os.path.join(workdir, size)
                shutil.rmtree(base, ignore_errors=True)
                os.makedirs(base)
                state = build_state(args, size, base, stores)
                if "server" in stores:
                    stop_server(args.repo, state["server_root"])
                print(json.dumps({k: v for k, v in state.items() if k not in ("uris",)}, default=str))
                continue
            above = args.mlflow_up_to and list(SIZES).index(size) > list(SIZES).index(args.mlflow_up_to)
            _, res = run_size(args, size, workdir, [] if above else stores)
            results += res
        if results:
            report(args, results)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
