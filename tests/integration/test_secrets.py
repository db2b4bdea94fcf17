"""Secrets in the environment never reach MLflow, the unit folders or Hydra's outputs.

Real jobs (proxy-train, proxy-score, proxy-eval through their console scripts, as a user runs them) log to a real
``proxy-mlflow-server`` from an environment that holds secrets with distinctive random values: a Hugging Face token,
MLflow's tracking password (with a user name, so that every request really carries it), an AWS secret key and a
made-up ``PROXY_EXP_TEST_SECRET``; one more proxy-eval logs into the embedded SQLite store under ``paths.root``.
Then every logged thing is searched for the values: the experiments, and every run's params, tags, metric keys and
inputs (MLflow client, both stores), every artifact (downloaded), the store files (SQLite bytes, a WAL if one is
left, and the rows as SQL text), the server's artifact folder and log, everything under ``paths.root`` (unit
folders: DONE.json, manifests, models and checkpoints, parquet; Hydra's output folders; caches), the jobs' working
folder, and what the jobs printed. Archives are searched inside (zip members such as torch checkpoints, gzip) and
Parquet decoded (its pages are compressed, so raw bytes could hide a value).

So that the search cannot pass by reading nothing, a canary (a random value passed on purpose as an extra MLflow
tag, ``+tags.canary=...``, logged as ``proxy_exp.canary``) must be found where such a value goes: the run's tags, the
store's bytes and Hydra's saved overrides; and the search must have read the files every job writes (a DONE.json per
unit, the scored tokens' parquet, lm-eval's results, checkpoints, the downloaded artifacts).
"""
from __future__ import annotations

import glob
import gzip
import io
import os
import secrets
import sqlite3
import zipfile

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tests.helpers import mlflow_server, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EXPERIMENT = "secrets"
SECRETS = {
    "HF_TOKEN": "hf_" + secrets.token_hex(16),
    "MLFLOW_TRACKING_PASSWORD": "pw-" + secrets.token_hex(16),
    "AWS_SECRET_ACCESS_KEY": "aws-" + secrets.token_hex(20),
    "PROXY_EXP_TEST_SECRET": "pxs-" + secrets.token_hex(16),
}
# Not secrets, but what makes the client use the ones above: Basic auth on every request, an AWS key pair.
COMPANIONS = {"MLFLOW_TRACKING_USERNAME": "proxy-exp-test", "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper()}
CANARY = "canary-" + secrets.token_hex(12)
TRAIN = ["tokenizer.vocab_size=512", "tokenizer.sample_bytes_per_corpus=100000", "corpus.max_bytes=200000",
         "pretrain.max_tokens=10240"]
SCORE = ["traces.tasks=[gsm8k,mbpp]", "traces.per_task=2"]  # packaged traces that fit the tiny model's 256 positions


class Finder:
    """Collects where each needle (secret or canary) occurs, and which places were searched."""

    def __init__(self, needles: dict[str, str]):
        self.needles = {name: value.encode() for name, value in needles.items()}
        self.found: dict[str, list[str]] = {name: [] for name in needles}
        self.searched: list[str] = []

    def text(self, where: str, value) -> None:
        self.blob(where, str(value).encode("utf-8", "replace"))

    def blob(self, where: str, data: bytes) -> None:
        self.searched.append(where)
        for name, needle in self.needles.items():
            if needle in data:
                self.found[name].append(where)

    def file(self, path: str) -> None:
        with open(path, "rb") as f:
            data = f.read()
        self.blob(path, data)
        if data[:4] == b"PAR1":  # Parquet: compressed pages; decode every value and the schema's metadata
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
            self.text(f"{path} (parquet rows: {table.num_rows})", table.to_pylist())
            self.text(f"{path} (parquet schema)", table.schema.to_string(show_schema_metadata=True))
        elif data[:2] == b"\x1f\x8b":
            self.blob(f"{path} (gunzipped)", gzip.decompress(data))
        elif data[:4] == b"PK\x03\x04":  # zip: torch checkpoints (.pt), archives
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for member in z.namelist():
                    self.blob(f"{path} (zip member {member})", z.read(member))
        if data[:16] == b"SQLite format 3\x00":  # a store: its rows as SQL text too
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                self.text(f"{path} (SQL dump)", "\n".join(con.iterdump()))
            finally:
                con.close()

    def tree(self, root: str) -> int:
        n = 0
        for d, _, files in os.walk(root):
            for name in files:
                path = os.path.join(d, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    self.file(path)
                    n += 1
        return n

    def report(self, names) -> str:
        return "\n".join(f"  {name} (= {self.needles[name].decode()}) found in:\n    "
                         + "\n    ".join(self.found[name]) for name in names if self.found[name])


def search_mlflow(uri: str, finder: Finder, download_to: str) -> list:
    """Every experiment, run (params, tags, metric keys, inputs), logged model and artifact of the store at ``uri``."""
    client = MlflowClient(uri)
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = []
    for exp in experiments:
        finder.text(f"experiment {exp.name!r} (name, tags, artifact location)",
                    [exp.name, exp.tags, exp.artifact_location])
        for run in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=10000):
            label = f"run {run.info.run_name!r} ({run.info.run_id})"
            finder.text(f"{label} params", run.data.params)
            finder.text(f"{label} tags", run.data.tags)
            finder.text(f"{label} metric keys", sorted(run.data.metrics))
            finder.text(f"{label} info and inputs", [run.info, run.inputs])
            dest = os.path.join(download_to, run.info.run_id)
            os.makedirs(dest)
            if client.list_artifacts(run.info.run_id):
                client.download_artifacts(run.info.run_id, "", dest)
            finder.tree(dest)
            runs.append(run)
        for model in client.search_logged_models([exp.experiment_id]):
            finder.text(f"logged model {model.name!r}", [model.name, model.params, model.tags])
    return runs


def test_secrets_in_the_environment_never_reach_mlflow_or_disk(tmp_path):
    root, server_root, cwd, downloads = (tmp_path / d for d in ("runs", "server", "cwd", "downloads"))
    cwd.mkdir()
    env = {**SECRETS, **COMPANIONS}
    finder = Finder({**SECRETS, "canary": CANARY})
    with mlflow_server(server_root) as uri:
        common = [f"paths.root={root}", f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}"]
        outputs = [run_cli("proxy-train", *common, *TRAIN, f"+tags.canary={CANARY}", env=env, cwd=str(cwd))]
        (model_dir,) = glob.glob(f"{root}/units/train-*/model")
        outputs.append(run_cli("proxy-score", *common, f"model.path={model_dir}", *SCORE, env=env, cwd=str(cwd)))
        outputs.append(run_cli("proxy-eval", *common, f"model.path={model_dir}", "evaluate.tasks=[piqa]",
                               "evaluate.limit=4", env=env, cwd=str(cwd)))
        # and one job into the embedded store (tracking.uri empty: SQLite under paths.root, written by the job itself)
        outputs.append(run_cli("proxy-eval", *common[:1], "tracking.uri=", f"tracking.experiment={EXPERIMENT}",
                               f"model.path={model_dir}", "evaluate.tasks=[piqa]", "evaluate.limit=2", env=env,
                               cwd=str(cwd)))
        for name, r in zip(("proxy-train", "proxy-score", "proxy-eval", "proxy-eval (embedded store)"), outputs):
            finder.text(f"what {name} printed (stdout and stderr)", r.stdout + r.stderr)
        runs = search_mlflow(uri, finder, str(downloads / "server"))
        embedded = search_mlflow(f"sqlite:///{root}/mlflow.db", finder, str(downloads / "embedded"))
    # the files, once the server has stopped (its store checkpointed, the WAL folded in or left beside it)
    counts = {str(d): finder.tree(str(d)) for d in (server_root, root, cwd)}

    leaked = [name for name in SECRETS if finder.found[name]]
    assert not leaked, ("secrets from the environment reached what proxy-exp logs or writes:\n"
                        + finder.report(leaked))

    # the search itself: it read the runs and the files every job writes, and finds a value where one goes
    kinds = sorted(r.data.tags.get("proxy_exp.kind", "") for r in runs)
    assert kinds == ["evaluate", "score", "train"], f"runs in the server's store: {kinds}"
    kinds = sorted(r.data.tags.get("proxy_exp.kind", "") for r in embedded)
    assert kinds == ["evaluate"], f"runs in the embedded store: {kinds}"
    searched = "\n".join(finder.searched)
    for expected in (f"{server_root}/mlflow.db", f"{root}/mlflow.db", "(SQL dump)", "server.log", "DONE.json",
                     "tokens.parquet (parquet rows:", "lm_eval", f"{downloads}/server/", f"{downloads}/embedded/",
                     "/hydra/", "overrides.yaml", "(zip member"):
        assert expected in searched, f"the search never read anything matching {expected!r}; it read {counts}"
    canary = "\n".join(finder.found["canary"])
    (train,) = [r for r in runs if r.data.tags.get("proxy_exp.kind") == "train"]
    assert train.data.tags.get("proxy_exp.canary") == CANARY, f"the train run's tags: {train.data.tags}"
    for expected in ("tags", "mlflow.db", "overrides.yaml"):
        assert expected in canary, (f"the canary {CANARY} (passed as tags.canary=...) was not found in anything "
                                    f"matching {expected!r}: the search is blind there; found in:\n{canary}")
    print(f"searched {len(finder.searched)} places, files per folder {counts}; the canary was found in:\n{canary}")
