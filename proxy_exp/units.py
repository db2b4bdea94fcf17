"""Unit identity and completion: a unit's id derives from the config that determines its result.

Identical units are shared across campaigns and reruns; a unit is done only when its completion
marker exists (written last, after every output was renamed into place).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from proxy_exp.config import (CorpusConfig, EvaluateConfig, ModelConfig, PretrainConfig, ScoreConfig,
                              TokenizerConfig, TracesConfig, to_dict)
from proxy_exp.files import file_sha256, held_lock, write_json

DONE = "DONE.json"
# Fields that change how a unit runs, not what it computes.
_OPERATIONAL = {"device", "device_map", "max_memory", "offload_folder", "trust_remote_code", "checkpoint_every", "keep_checkpoints", "stop_after_steps", "num_threads", "nodes",
                "gpus_per_node", "tasks_per_node", "preempt_signal", "batch_size", "auto_batch", "kernel", "stats_backend",
                "packing", "long_prompt", "compile", "name", "licence", "citation"}
# ... and the data layer's: a source's repetition cap and what a token shard keeps beside the tokens, tokenize
# units' parallelism and batching
_OPERATIONAL |= {"max_epochs", "repeat_policy", "id_field", "metadata_fields", "threads", "max_tasks", "batch_bytes",
                 "batch_docs"}
# The order a run reads its data in (bump when it changes): 2 = every source tokenized once into token shards and
# read as a budget-independent seeded order, of which each model size reads a prefix (proxy_exp/data/mixture.py)
DATA_ORDER_VERSION = 2
# What scoring computes (bump when a statistic, a weighting, the aggregation or the trace windowing changes its
# numbers): with the statistics' and weightings' names it enters every score unit's id, so an upgrade that changes
# them reruns the score units and nothing else. Evaluate ids carry lm-eval's version and each embedded task's
# metadata.version instead (evaluate_computation).
SCORE_VERSION = 1


@dataclass
class Unit:
    """One unit of a campaign's work: its stable id, kind (bpe | tokenize | train | score | evaluate), place in the
    campaign (role, corpus, size, seed; data units: role "data"), the job config it runs, and the ids of the units it
    needs first."""

    id: str
    kind: str  # bpe | tokenize | train | score | evaluate
    role: str  # proxy | target
    corpus: str
    size: str
    seed: int
    config: Any  # TrainJobConfig | ScoreJobConfig | EvaluateJobConfig
    depends_on: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.kind:8s} {self.role:6s} {self.corpus:12s} {self.size:4s} seed {self.seed}"


def _result_fields(obj: Any) -> Any:
    d = to_dict(obj)
    if isinstance(d, dict):
        return {k: _result_fields(v) for k, v in d.items() if k not in _OPERATIONAL}
    return d


def stable_id(kind: str, payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def train_unit_id(model: ModelConfig, tokenizer: TokenizerConfig, tokenizer_corpora: dict[str, CorpusConfig],
                  corpus: CorpusConfig, pretrain: PretrainConfig, seed: int) -> str:
    return train_unit_id_of(train_identity(model, tokenizer, tokenizer_corpora, corpus, pretrain), seed)


def train_identity(model: ModelConfig, tokenizer: TokenizerConfig, tokenizer_corpora: dict[str, CorpusConfig],
                   corpus: CorpusConfig, pretrain: PretrainConfig, corpus_id: dict | None = None) -> dict:
    """What determines a training unit's result but its seed (a plan makes it once for all seeds). ``corpus_id``:
    :func:`corpus_identity` of ``corpus`` when already made (a plan makes it once per corpus)."""
    # training builds fp32 master weights whatever model.dtype says (pretrain.precision sets the compute dtype)
    return {"model": _result_fields(model) | {"dtype": "float32"}, **tokenizer_identity(tokenizer, tokenizer_corpora),
            "corpus": (corpus_identity(corpus) if corpus_id is None else corpus_id) | {"name": corpus.name},
            "pretrain": _result_fields(pretrain), "data_order": DATA_ORDER_VERSION}


def train_unit_id_of(identity: dict, seed: int) -> str:
    """The id of the training unit of :func:`train_identity` ``identity`` and ``seed``."""
    return stable_id("train", {**identity, "seed": seed})


_INPUT_MEMO: dict[str, str] | None = None


@contextlib.contextmanager
def input_memo(cache_dir: str = ""):
    """Inside: each file source's files are listed and stat-ed once (readers.listing_memo) and its manifest's digest
    made once (a plan computes the ids of many units over the same corpora), and input files are named through the
    checksum index of ``cache_dir`` (readers.checksums_at: a touched, copied or moved file is the same input);
    outside, every call looks at the files afresh."""
    from proxy_exp.data.readers import checksums_at, listing_memo

    global _INPUT_MEMO
    outer, _INPUT_MEMO = _INPUT_MEMO, ({} if _INPUT_MEMO is None else _INPUT_MEMO)
    try:
        with listing_memo(), (checksums_at(cache_dir) if cache_dir else contextlib.nullcontext()):
            yield
    finally:
        _INPUT_MEMO = outer


def inputs_digest(src) -> str:
    """sha256 (16 hex digits) of a file source's input manifest, each file named by its identity
    (readers.identity_manifest: path, size, mtime of each file when first tokenized; no file is read to plan)."""
    from proxy_exp.data.readers import identity_manifest, input_files, manifest_digest, source_spec_key

    key = source_spec_key(src)
    if _INPUT_MEMO is not None and key in _INPUT_MEMO:
        return _INPUT_MEMO[key]
    digest = manifest_digest(identity_manifest(input_files(src)))
    if _INPUT_MEMO is not None:
        _INPUT_MEMO[key] = digest
    return digest


def corpus_identity(corpus) -> dict:
    """What determines a corpus's (or source's) documents: its result fields and, for file sources, the digest of
    its input manifest, so a changed, added or removed file changes it (packaged sources: their config, since the
    packages are pinned); a recipe's weight-0 sources are left out."""
    from proxy_exp.data.readers import is_file_source

    out = _result_fields(corpus)
    if is_file_source(corpus):
        out["inputs"] = inputs_digest(corpus)
        del out["paths"]  # the files are named by their identity: a folder moved (and corpus.paths with it) is the same
    for name, src in (getattr(corpus, "mix", None) or {}).items():
        if not src.weight > 0:  # a source the recipe does not read is not part of its identity
            del out["mix"][name]
        elif is_file_source(src):
            out["mix"][name]["inputs"] = inputs_digest(src)
            del out["mix"][name]["paths"]
    return out


def tokenizer_identity(tokenizer: TokenizerConfig, tokenizer_corpora: dict[str, CorpusConfig]) -> dict:
    """What determines the tokenizer: a pretrained one is its config alone (the campaign's other corpora do not enter
    the ids of units that use it); a BPE also its sample, the distinct sources the corpora list
    (:func:`proxy_exp.data.tokenizer.sample_sources`: no recipe name or weight enters)."""
    out: dict[str, Any] = {"tokenizer": _result_fields(tokenizer)}
    if str(tokenizer.kind) == "bpe":
        from proxy_exp.data.tokenizer import sample_sources

        out["tokenizer_sample"] = {k: corpus_identity(v) for k, v in sample_sources(tokenizer_corpora).items()}
    return out


def bpe_unit_id(tokenizer: TokenizerConfig, corpora: dict[str, CorpusConfig]) -> str:
    return stable_id("bpe", tokenizer_identity(tokenizer, corpora))


def tokenize_unit_id(tokenizer: TokenizerConfig, tokenizer_corpora: dict[str, CorpusConfig], source,
                     files: list[str]) -> str:
    """A tokenize unit: a tokenizer, a source's reader settings and the manifest of the files it tokenizes (a
    packaged source: its config)."""
    from proxy_exp.data.readers import identity_manifest
    from proxy_exp.data.corpora import shard_reader_key
    from proxy_exp.data.shards import SHARD_FORMAT

    inputs = [[e["path"], e["size"], e["mtime_ns"]] for e in identity_manifest(files)] if files else [
        str(source.source)]
    return stable_id("tokenize", {**tokenizer_identity(tokenizer, tokenizer_corpora), "reader": shard_reader_key(source),
                                  "inputs": inputs, "format": SHARD_FORMAT})


def score_unit_id(model_ref: str, traces: TracesConfig, score: ScoreConfig, extra: dict | None = None) -> str:
    """``extra``: what else determines a standalone score unit's result (the checkpoint's identity, the run and step
    its proxies are logged at); a campaign's units have none (their model is named by its training unit)."""
    from proxy_exp.config import STATISTICS, WEIGHTINGS

    payload = {"model": model_ref, "traces": to_dict(traces), "score": _result_fields(score),
               "computation": {"version": SCORE_VERSION, "statistics": list(STATISTICS), "weightings": list(WEIGHTINGS)}}
    return stable_id("score", payload | ({"extra": extra} if extra else {}))


def standalone_extra(model_path: str | None, run_id: str = "", step: int = -1, parent_run_id: str = "",
                     dtype: str = "") -> dict:
    """What determines a standalone score or evaluate unit beyond its configs: the checkpoint's identity (a rewritten
    `latest/` folder is a new model), where its results go (another run, another step, a child of another parent)
    and the dtype the model runs in on this machine (``model.dtype=auto`` is fp32 on CPU, bf16 on a GPU: the two
    are different results; fp32 adds nothing, so CPU ids stay as they were). A campaign's units come with their id
    (their model is named by its training unit)."""
    extra: dict = {}
    if model_path and os.path.isdir(str(model_path)):
        extra["identity"] = model_identity(str(model_path))
    if run_id:
        extra["run_id"] = run_id
    if step >= 0:
        extra["step"] = step
    if parent_run_id:
        extra["parent_run_id"] = parent_run_id
    if dtype and dtype != "float32":
        extra["dtype"] = dtype
    return extra


def standalone_extra_of(job) -> dict:
    """:func:`standalone_extra` of a standalone score or evaluate job config, with the dtype its model runs in on
    this machine (proxy_exp/devices.py); {} for a campaign's unit, whose id is given."""
    if job.unit_id:
        return {}
    from proxy_exp.devices import resolve_placement

    dtype = str(resolve_placement(job.model).dtype).removeprefix("torch.")
    return standalone_extra(job.model.path, job.tracking.run_id, job.step, job.parent_run_id, dtype)


def model_identity(path: str) -> str:
    """The identity of a local model folder's current contents (16 hex digits): the name, size and modification
    time of every file in it, and the text of a sharded checkpoint's weights index, so that a checkpoint rewritten in
    place (a `latest/` folder) is a different model."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        st = os.stat(full)
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        if name.endswith(".index.json"):
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def eval_unit_id(model_ref: str, evaluate: EvaluateConfig, extra: dict | None = None) -> str:
    """Settings added after the first campaigns (``EvaluateConfig.ID_WHEN_SET``) enter the id only when set away from
    their default, so older ids stay valid; a team's task folder enters by its files' identity. ``extra``: as in
    :func:`score_unit_id` (a standalone unit's checkpoint identity, run and step)."""
    fields = _result_fields(evaluate)
    default = EvaluateConfig()
    for name in EvaluateConfig.ID_WHEN_SET:
        if getattr(evaluate, name) == getattr(default, name):
            fields.pop(name, None)
    if evaluate.include_path:
        from proxy_exp.evaluate.registry import include_path_fingerprint

        fields["include_path_files"] = include_path_fingerprint(evaluate.include_path)
    payload = {"model": model_ref, "evaluate": fields, "computation": evaluate_computation(evaluate)}
    return stable_id("evaluate", payload | ({"extra": extra} if extra else {}))


def evaluate_computation(evaluate: EvaluateConfig) -> dict:
    """What else determines an evaluation's numbers: the installed lm-eval's version and the ``metadata.version`` of
    each embedded task it runs (a team's task folder enters by its files' identity; a registry task by lm-eval's
    version). Read from package metadata and the task YAMLs: lm-eval is not imported."""
    from proxy_exp.evaluate.task_data import available_tasks

    embedded = sorted(set(evaluate.tasks) & set(available_tasks()))
    return {"lm_eval": _lm_eval_version(), "tasks": {t: _embedded_task_version(t) for t in embedded}}


@functools.lru_cache(maxsize=None)
def _embedded_task_version(task: str) -> str:
    """An embedded task's ``metadata.version`` (read once per process: a plan asks for it per evaluate unit)."""
    from proxy_exp.evaluate.task_data import embedded_task_yaml

    return str((embedded_task_yaml(task).get("metadata") or {}).get("version"))


@functools.lru_cache(maxsize=1)
def _lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "not installed"


@contextlib.contextmanager
def unit_lock(root: str, unit_id: str):
    """Hold the unit's lock while it runs: two campaigns (or reruns) that share a unit run it once; the second waits,
    then finds the first one's completion marker. The lock file lives beside the unit folders, on the same
    filesystem as the outputs (fcntl locks; shared filesystems that support them)."""
    with held_lock(os.path.join(root, "units", f".{unit_id}.lock"),
                   f"unit {unit_id} is running in another process: waiting for it"):
        yield


def unit_dir(root: str, unit_id: str) -> str:
    return os.path.join(root, "units", unit_id)


MANIFEST = "MANIFEST.json"
def manifest(folder: str, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``folder`` (names in ``skip`` left out)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(dirpath, name), folder)
            if name in skip or ".tmp" in name or name.endswith(".lock"):
                continue
            full = os.path.join(folder, rel)
            out[rel] = {"size": os.path.getsize(full), "sha256": file_sha256(full)}
    return out


HASH_CHECK_MAX_BYTES = 64 << 20  # larger files (a target model's weights) are checked by size on every read


def verify_manifest(folder: str, expected: dict[str, dict], hash_max_bytes: float = HASH_CHECK_MAX_BYTES) -> str:
    """"" when every file of ``expected`` is under ``folder`` with its size and (files up to ``hash_max_bytes``)
    checksum, else what is wrong."""
    for rel, want in sorted(expected.items()):
        full = os.path.join(folder, rel)
        if not os.path.isfile(full):
            return f"{rel} is missing"
        size = os.path.getsize(full)
        if size != want["size"]:
            return f"{rel} has {size} bytes, {want['size']} when it was written (truncated?)"
        if 0 < hash_max_bytes and size <= hash_max_bytes and file_sha256(full) != want["sha256"]:
            return f"{rel} does not match its checksum (corrupt)"
    return ""


def read_done(root: str, unit_id: str, hash_max_bytes: int | None = HASH_CHECK_MAX_BYTES) -> dict | None:
    """The unit's result if it is done and its outputs are intact (MANIFEST.json: every file's size, and the checksum
    of files up to ``hash_max_bytes``; None = every file); a unit whose outputs were damaged since (a truncated model
    file, a corrupt Parquet) is not done: it is recomputed, never used (its marker is moved aside, with a warning).
    A job reads its own unit this way; a campaign's driver asks :func:`is_done` (markers and sizes, nothing moved)."""
    d = unit_dir(root, unit_id)
    path = os.path.join(d, DONE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        done = json.load(f)
    problem = _manifest_problem(d, hash_max_bytes)
    if problem:
        import sys

        print(f"[proxy-exp] unit {unit_id}: {problem}; its outputs are not used, the unit runs again",
              file=sys.stderr, flush=True)
        os.replace(path, os.path.join(d, f"{DONE}.invalid"))
        return None
    return done


def _manifest_problem(d: str, hash_max_bytes: int | None) -> str:
    man = os.path.join(d, MANIFEST)
    if not os.path.exists(man):
        return ""
    with open(man) as f:
        expected = json.load(f)
    return verify_manifest(d, expected, hash_max_bytes=float("inf") if hash_max_bytes is None else hash_max_bytes)


def is_done(root: str, unit_id: str) -> bool:
    """Whether the unit's completion marker exists and every output it recorded has its recorded size: what status,
    plans and the driver read (no output is read or hashed, nothing is changed on disk; checksums are verified when a
    job reads its own unit and by ``proxy-campaign action=verify``)."""
    d = unit_dir(root, unit_id)
    return os.path.exists(os.path.join(d, DONE)) and not _manifest_problem(d, 0)


def verify_done(root: str, unit_id: str) -> str:
    """``proxy-campaign action=verify``: every output of a done unit against its recorded checksum (whatever its
    size). "" when intact or not done; else what is wrong, and the unit's marker is moved aside so that it reruns."""
    d = unit_dir(root, unit_id)
    if not os.path.exists(os.path.join(d, DONE)):
        return ""
    problem = _manifest_problem(d, None)
    if problem:
        os.replace(os.path.join(d, DONE), os.path.join(d, f"{DONE}.invalid"))
    return problem


def write_done(root: str, unit_id: str, result: Any) -> None:
    """Record the checksums of the unit's outputs (MANIFEST.json), then atomically write the completion marker
    (tmp + rename): a unit is done only when both exist and the outputs still match."""
    d = unit_dir(root, unit_id)
    os.makedirs(d, exist_ok=True)
    data = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result
    files = manifest(d, skip=(DONE, MANIFEST, f"{DONE}.invalid", FAILED, "mlflow_run_id"))
    files = {rel: v for rel, v in files.items() if not rel.startswith("checkpoints" + os.sep)}
    write_json(os.path.join(d, MANIFEST), files)
    write_json(os.path.join(d, DONE), data)
    failed = os.path.join(d, FAILED)
    if os.path.exists(failed):
        os.remove(failed)


FAILED = "FAILED.json"


def write_failed(root: str, unit_id: str, reason: str) -> None:
    """Record why a unit failed (shown by ``proxy-campaign action=status``); a later success removes it."""
    d = unit_dir(root, unit_id)
    os.makedirs(d, exist_ok=True)
    import time

    write_json(os.path.join(d, FAILED), {"reason": reason, "time": time.time()})


def record_failure(root: str, unit_id: str, e: BaseException) -> None:
    """:func:`write_failed` with the error's type and first line; a full or read-only disk must not hide the job's own
    error, so a failure to record it is only said on stderr."""
    lines = str(e).strip().splitlines()
    try:
        write_failed(root, unit_id, f"{type(e).__name__}: {lines[0] if lines else ''}"[:2000])
    except OSError as record_error:
        import sys

        print(f"[proxy-exp] unit {unit_id}: could not record its failure ({record_error})", file=sys.stderr, flush=True)


def read_failed(root: str, unit_id: str) -> str:
    path = os.path.join(unit_dir(root, unit_id), FAILED)
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return str(json.load(f).get("reason", ""))


