"""proxy-mlflow-server: a real MLflow server on 127.0.0.1 (free port, root in tmp_path), used by tracking.Run."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from proxy_exp.tracking.server import group_processes, rss_mb
from proxy_exp.config import TrackingConfig
from proxy_exp.tracking import Run

from tests.helpers import REPO, run_cli  # noqa: E402
HTTP_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the command as a user would (a separate process, so the server outlives it)."""
    return run_cli("proxy-mlflow-server", *args, ok=False, timeout=timeout, cwd=REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running(pid: int) -> bool:
    """pid exists and is not a zombie (an exited server re-parented to a non-reaping init stays a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def get(port: int, path: str, host_header: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host_header} if host_header else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def server_root(tmp_path, monkeypatch):
    """A root for one server; teardown always stops it (and kills its group if stop failed)."""
    for name in HTTP_ENV:  # tracking.configure sets these globally: restore them after the test
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "mlflow-server"
    yield str(root)
    state_path = root / "server.json"
    pid = json.loads(state_path.read_text())["pid"] if state_path.exists() else None
    cli("stop", "--root", str(root))
    if pid is not None and running(pid):
        os.killpg(pid, signal.SIGKILL)


def test_start_log_read_back_host_check_stop(server_root, tmp_path):
    port = free_port()
    t0 = time.monotonic()
    r = cli("start", "--root", server_root, "--port", str(port), "--allowed-hosts", "node-a.cluster")
    startup_s = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    uri = f"http://127.0.0.1:{port}"
    assert f"tracking.uri={uri}" in r.stdout
    state = json.loads((tmp_path / "mlflow-server" / "server.json").read_text())
    assert state["uri"] == uri and state["port"] == port and state["backend"] == "sqlite"
    assert set(state) >= {"pid", "uri", "host", "port", "backend", "started"}
    pid = state["pid"]
    assert running(pid)
    assert get(port, "/health")[0] == 200
    # job execution off: 2 processes (~0.5 GB) instead of 10 (~2.5 GB)
    procs = group_processes(pid)
    print(f"start-up {startup_s:.1f} s, {len(procs)} processes, {rss_mb(procs):.0f} MB RSS")
    assert 1 <= len(procs) <= 3, procs
    # no --host: bound to 127.0.0.1 alone (another loopback address, which a 0.0.0.0 bind would answer, is refused)
    assert state["host"] == "127.0.0.1", state
    assert listening_addresses(procs) == {("127.0.0.1", port)}, (
        f"the server listens on {sorted(listening_addresses(procs))}, expected 127.0.0.1:{port} alone")
    assert refused("127.0.0.2", port), f"the server answers on 127.0.0.2:{port}: it is not bound to 127.0.0.1 alone"

    # a job logs through proxy_exp.tracking
    cfg = TrackingConfig(uri=uri, experiment="server-test")
    artifact = tmp_path / "table.csv"
    artifact.write_text("a,b\n1,2\n")
    losses = [2.5, 1.75, 1.25, 1.0, 0.875]
    with Run(cfg, str(tmp_path), name="unit0", tags={"proxy_exp.kind": "train"}) as run:
        run.log_params({"lr": 0.01, "size": "4M"})
        for step, loss in enumerate(losses):
            run.log_metric("train/loss", loss, step=step * 10)
        run.flush()
        run.log_artifact(str(artifact), "outputs")
    run_id = run.run_id

    # read back with MlflowClient
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"lr": "0.01", "size": "4M"}
    assert got.data.tags["proxy_exp.kind"] == "train"
    # the experiment opens on MLflow 3's training-runs view, not its GenAI overview
    assert client.get_experiment_by_name("server-test").tags.get(KIND_TAG) == "custom_model_development"
    history = sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(10 * i, v) for i, v in enumerate(losses)]
    assert [a.path for a in client.list_artifacts(run_id, "outputs")] == ["outputs/table.csv"]
    local = client.download_artifacts(run_id, "outputs/table.csv", str(tmp_path / "download"))
    assert open(local).read() == "a,b\n1,2\n"
    stored = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(server_root, "artifacts")) for f in fs]
    assert [os.path.basename(p) for p in stored] == ["table.csv"]  # proxied to the root's artifacts/

    # security middleware: a foreign Host header is rejected unless it was passed with --allowed-hosts
    api = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=server-test"
    status, body = get(port, api, host_header=f"node-b.cluster:{port}")
    assert status == 403 and b"Invalid Host header" in body
    assert get(port, api, host_header=f"node-a.cluster:{port}")[0] == 200
    assert get(port, api, host_header="node-a.cluster")[0] == 200
    assert get(port, api, host_header=f"localhost:{port}")[0] == 200  # MLflow's defaults are kept
    assert get(port, api)[0] == 200

    # idempotent start
    r = cli("start", "--root", server_root, "--port", str(port))
    assert r.returncode == 0 and "already running" in r.stdout, r.stdout + r.stderr
    assert json.loads((tmp_path / "mlflow-server" / "server.json").read_text())["pid"] == pid
    r = cli("status", "--root", server_root)
    assert r.returncode == 0 and json.loads(r.stdout.split("\njobs")[0])["running"] is True

    # stop: the whole process group is gone, server.json removed
    r = cli("stop", "--root", server_root)
    assert r.returncode == 0 and "stopped" in r.stdout, r.stdout + r.stderr
    assert not running(pid) and group_processes(pid) == []
    assert not (tmp_path / "mlflow-server" / "server.json").exists()
    assert cli("status", "--root", server_root).returncode == 1

    # a job against the stopped server fails fast (tracking.configure lowers MLflow's retries), not after minutes
    t0 = time.monotonic()
    with pytest.raises(Exception, match="Max retries exceeded|Connection refused"):
        Run(cfg, str(tmp_path), name="after-stop")
    assert time.monotonic() - t0 < 30


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        r = cli("start", "--root", str(tmp_path / "root"), "--port", str(port))
    assert r.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in r.stderr
    assert not (tmp_path / "root" / "server.json").exists()


def test_bad_backend_and_stale_state(tmp_path):
    r = cli("start", "--root", str(tmp_path), "--backend", "postgresql")
    assert r.returncode == 2 and "--backend postgresql needs --backend-uri" in r.stderr
    r = cli("start", "--root", str(tmp_path), "--backend-uri", "mysql://x/y")
    assert r.returncode == 2 and "does not match --backend sqlite" in r.stderr
    # a server.json left by a server that died is cleaned up, not trusted
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "server.json").write_text(json.dumps({"pid": dead.pid, "uri": "http://127.0.0.1:1", "host": "127.0.0.1",
                                                      "port": 1, "backend": "sqlite", "node": socket.gethostname()}))
    assert cli("status", "--root", str(tmp_path)).returncode == 1
    r = cli("stop", "--root", str(tmp_path))
    assert r.returncode == 0 and "stale" in r.stdout
    assert not (tmp_path / "server.json").exists()


KIND_TAG = "mlflow.experimentKind"


def listening_addresses(pids: list[int]) -> set[tuple[str, int]]:
    """The (ip, port) pairs that ``pids`` listen on (TCP)."""
    import psutil

    out = set()
    for pid in pids:
        for c in psutil.Process(pid).net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                out.add((c.laddr.ip, c.laddr.port))
    return out


def refused(host: str, port: int) -> bool:
    """Nothing accepts a TCP connection at (host, port)."""
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def _words(text: str) -> str:
    """Help text as one line: argparse wraps lines, also at hyphens."""
    import re

    return " ".join(re.sub(r"-\n\s*", "-", text).split())


def test_help_says_what_exposing_the_server_means():
    """The default bind is 127.0.0.1, and --help says what --host 0.0.0.0 exposes and how to protect it."""
    from launchers.mlflow_server import build_parser

    assert build_parser().parse_args(["start", "--root", "x"]).host == "127.0.0.1"
    for args in (["--help"], ["start", "--help"]):
        r = cli(*args)
        assert r.returncode == 0, r.stderr
        text = _words(r.stdout)
        for phrase in ("binds 127.0.0.1 (this machine only) unless --host says otherwise",
                       "MLflow has no authentication by default", "--host 0.0.0.0",
                       "anyone who can reach the port can read, change and delete every experiment, run",
                       "firewall", "SSH tunnel", "basic-auth", "--allowed-hosts is no access control"):
            assert phrase in text, f"`proxy-mlflow-server {' '.join(args)}` does not say {phrase!r}:\n{r.stdout}"
    import argparse

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    host_help = next(a.help for a in subparsers.choices["start"]._actions if a.dest == "host")
    assert _words(host_help) in _words(cli("start", "--help").stdout)  # shown as written
    for phrase in ("default 127.0.0.1: this machine only", "0.0.0.0", "no authentication",
                   "read and write every run and artifact", "firewall", "SSH tunnel"):
        assert phrase in host_help, f"the --host help does not say {phrase!r}: {host_help}"


def test_experiments_are_tagged_for_the_training_runs_view(tmp_path):
    """ensure_experiment tags the experiments it creates, and an existing one without the tag (one that a run made
    before proxy-exp tagged experiments); a kind someone chose is kept."""
    from mlflow.tracking import MlflowClient

    from proxy_exp.tracking import ensure_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    created = ensure_experiment(TrackingConfig(experiment="fresh"), str(tmp_path))
    client = MlflowClient(uri)
    assert client.get_experiment(created).tags.get(KIND_TAG) == "custom_model_development"
    old = client.create_experiment("made-before")
    assert KIND_TAG not in client.get_experiment(old).tags
    assert ensure_experiment(TrackingConfig(experiment="made-before"), str(tmp_path)) == old
    assert client.get_experiment(old).tags.get(KIND_TAG) == "custom_model_development"
    chosen = client.create_experiment("genai", tags={KIND_TAG: "genai_development"})
    assert ensure_experiment(TrackingConfig(experiment="genai"), str(tmp_path)) == chosen
    assert client.get_experiment(chosen).tags.get(KIND_TAG) == "genai_development"
