"""Start, stop and inspect a shared MLflow tracking server for proxy-exp jobs (the logic of ``proxy-mlflow-server``,
whose command line is launchers/mlflow_server.py)::

    proxy-mlflow-server start  --root DIR [--host 127.0.0.1] [--port 5000] [--backend sqlite|postgresql]
                               [--backend-uri URI] [--allowed-hosts h1,h2] [--workers 1] [--timeout 60]
    proxy-mlflow-server status --root DIR
    proxy-mlflow-server stop   --root DIR

``start`` runs the venv's ``mlflow server`` detached in its own session (output in ``DIR/server.log``) with the job
runner off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: 2 processes, ~0.5 GB instead of 10 and 2.5 GB), the
backend store ``sqlite:///DIR/mlflow.db`` (or a PostgreSQL URI) and proxied artifacts under ``DIR/artifacts``.
It records ``DIR/server.json`` and waits for ``GET /health``. Jobs then use ``tracking.uri=<uri>``.

Security: the server binds 127.0.0.1 (this machine only) unless ``--host`` says otherwise. MLflow has no
authentication by default, so a server bound to ``0.0.0.0`` (or any address others can reach) lets anyone who can
reach the port read, change and delete every experiment, run and artifact. Expose it only behind a firewall that
admits the cluster's nodes, through an SSH tunnel, or with MLflow's basic-auth app (``pip install 'mlflow[auth]'``,
``mlflow server --app-name basic-auth``; jobs then set ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``).

MLflow's security middleware rejects requests whose ``Host`` header is not allowed (403), against DNS rebinding; it
is no access control (any client can send an allowed name). Its default list is localhost and private IPs; passing
``--allowed-hosts`` to MLflow *replaces* that list, so this command passes MLflow's defaults plus the advertised
host name plus the given names (each with and without ``:port``).
"""
from __future__ import annotations

import datetime as dt
import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import psutil
from filelock import FileLock

from proxy_exp.files import write_json

SERVER_JSON = "server.json"
SERVER_LOG = "server.log"
LOCK_FILE = ".server.lock"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


# -- small pieces ------------------------------------------------------------------------------------------------

def mlflow_executable() -> str:
    """The ``mlflow`` script of the running interpreter's environment (next to ``sys.executable``)."""
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    if not os.access(exe, os.X_OK):
        raise FileNotFoundError(f"no mlflow executable at {exe}: install mlflow in this environment "
                                f"({sys.executable} -m pip install mlflow)")
    return exe


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def advertised_host(host: str) -> str:
    """The host name jobs connect to: the node's name when bound to all interfaces, else the bound host."""
    return socket.gethostname() if host in WILDCARD_HOSTS else host


def connect_host(host: str) -> str:
    """Where this machine reaches the server (loopback when bound to all interfaces)."""
    if host == "::":
        return "::1"
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


def health(host: str, port: int, timeout: float = 2.0) -> int | None:
    """HTTP status of ``GET /health`` (exempt from MLflow's host check), or None if nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def port_in_use(host: str, port: int) -> bool:
    """True if (host, port) cannot be bound (uvicorn binds with SO_REUSEADDR, so TIME_WAIT does not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, i.e. exited but not yet reaped, counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _is_mlflow(pid: int) -> bool:
    """True if ``pid`` runs an mlflow command (guards against a recycled pid)."""
    try:
        return any("mlflow" in part for part in psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # cannot tell: trust the pid


def group_processes(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    pids = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.info["pid"]) == pgid:
                pids.append(proc.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return pids


def rss_mb(pids: list[int]) -> float:
    """Summed resident memory of ``pids`` in MB."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def log_tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"


def read_state(root: str) -> dict[str, Any] | None:
    path = os.path.join(root, SERVER_JSON)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): delete it if no server runs") from e


def write_state(root: str, state: dict[str, Any]) -> None:
    write_json(os.path.join(root, SERVER_JSON), state)


def remove_state(root: str) -> None:
    try:
        os.remove(os.path.join(root, SERVER_JSON))
    except FileNotFoundError:
        pass


def _locked(root: str) -> FileLock:
    """Serialize start/stop on one root (two starts at once would both launch a server)."""
    return FileLock(os.path.join(root, LOCK_FILE))


def backend_store_uri(root: str, backend: str, backend_uri: str) -> str:
    """The ``--backend-store-uri``: SQLite under ``root`` by default, or the given URI (checked against backend)."""
    if backend == "sqlite":
        if backend_uri and not backend_uri.startswith("sqlite:///"):
            raise ValueError(f"--backend-uri {backend_uri!r} does not match --backend sqlite: "
                             "give a sqlite:///ABS/PATH.db URI or drop --backend-uri")
        return backend_uri or f"sqlite:///{os.path.join(root, 'mlflow.db')}"
    if backend == "postgresql":
        if not backend_uri.startswith("postgresql"):
            raise ValueError("--backend postgresql needs --backend-uri postgresql://USER:PASSWORD@HOST:PORT/DB")
        scheme = backend_uri.split("://", 1)[0]
        if "+" not in scheme:  # plain postgresql:// uses SQLAlchemy's default driver psycopg2
            import importlib.util

            if importlib.util.find_spec("psycopg2") is None:
                raise ValueError("--backend postgresql needs the psycopg2 driver: pip install psycopg2-binary "
                                 "(or name another driver, e.g. postgresql+psycopg://...)")
        return backend_uri
    raise ValueError(f"--backend {backend!r}: use sqlite or postgresql")


def allowed_hosts(names: list[str], host: str, port: int) -> list[str]:
    """Host-header patterns for MLflow's ``--allowed-hosts``: its defaults, the advertised host and ``names``.

    A name without a port is allowed both bare and as ``name:port`` (clients send ``Host: name:port``).
    """
    from mlflow.server.security_utils import get_default_allowed_hosts

    out = list(get_default_allowed_hosts())
    extra = list(names)
    if advertised_host(host) not in LOOPBACK_HOSTS:
        extra.insert(0, _url_host(advertised_host(host)))
    for name in extra:
        forms = [name] if name.rsplit(":", 1)[-1].isdigit() and not name.endswith("]") else [name, f"{name}:{port}"]
        out += [f for f in forms if f not in out]
    return out


def _split_names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if "/" in n or " " in n]
    if bad:
        raise ValueError(f"--allowed-hosts: {bad} are not host names (give e.g. node01,node01.cluster:5000)")
    return names


# -- commands ----------------------------------------------------------------------------------------------------

def _running(state: dict[str, Any]) -> bool:
    """The recorded server is healthy (and, on its own node, its pid is a live mlflow process)."""
    if state.get("node") == socket.gethostname() and not (alive(state["pid"]) and _is_mlflow(state["pid"])):
        return False
    if state.get("node") == socket.gethostname():
        return health(connect_host(state["host"]), state["port"]) == 200
    uri = urlsplit(state["uri"])
    return health(uri.hostname or "", uri.port or state["port"]) == 200


def _terminate(pgid: int, grace_s: float = 15.0) -> bool:
    """SIGTERM the process group, wait up to ``grace_s``, then SIGKILL. True if it had to kill."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(pgid)
        if not group_processes(pgid) and not alive(pgid):
            return False
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    for _ in range(25):
        _reap(pgid)
        if not group_processes(pgid) and not alive(pgid):
            break
        time.sleep(0.2)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child (otherwise it would linger as a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def start(root: str, host: str = "127.0.0.1", port: int = 5000, backend: str = "sqlite", backend_uri: str = "",
          allowed: str = "", workers: int = 1, timeout_s: float = 60.0) -> int:
    """Start the server detached (or report it already runs). Returns the exit code."""
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    store_uri = backend_store_uri(root, backend, backend_uri)
    names = _split_names(allowed)
    if workers < 1:
        raise ValueError(f"--workers {workers}: give 1 or more")
    with _locked(root):
        state = read_state(root)
        if state is not None:
            if _running(state):
                print(f"already running: {state['uri']} (pid {state['pid']} on {state.get('node', '?')}, "
                      f"started {state.get('started', '?')})")
                _print_usage(state["uri"])
                return 0
            if state.get("node", socket.gethostname()) != socket.gethostname():
                print(f"error: {root}/{SERVER_JSON} records a server on node {state['node']} that does not answer "
                      f"at {state['uri']}; run `proxy-mlflow-server stop --root {root}` on {state['node']}, "
                      f"or delete {SERVER_JSON} if that node is gone", file=sys.stderr)
                return 1
            if alive(state["pid"]) and _is_mlflow(state["pid"]):
                print(f"error: server pid {state['pid']} is alive but {state['uri']}/health does not answer; "
                      f"see {os.path.join(root, SERVER_LOG)} or run `proxy-mlflow-server stop --root {root}`",
                      file=sys.stderr)
                return 1
            remove_state(root)  # stale: the recorded server is gone

        if port_in_use(host, port):
            print(f"error: port {port} on {host} is in use by another process; pick a free one with --port "
                  f"(see `ss -ltnp | grep :{port}`)", file=sys.stderr)
            return 1

        cmd = [mlflow_executable(), "server", "--host", host, "--port", str(port), "--workers", str(workers),
               "--backend-store-uri", store_uri, "--artifacts-destination", os.path.join(root, "artifacts")]
        if names or advertised_host(host) not in LOOPBACK_HOSTS:
            cmd += ["--allowed-hosts", ",".join(allowed_hosts(names, host, port))]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        log_path = os.path.join(root, SERVER_LOG)
        t0 = time.monotonic()
        with open(log_path, "ab") as log:
            log.write(f"\n=== {dt.datetime.now().isoformat(timespec='seconds')} {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=root, env=env, start_new_session=True)
        uri = f"http://{_url_host(advertised_host(host))}:{port}"
        state = {"pid": proc.pid, "uri": uri, "host": host, "port": port, "backend": backend,
                 "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "node": socket.gethostname(), "log": log_path}
        write_state(root, state)

        deadline = t0 + timeout_s
        while True:
            if health(connect_host(host), port) == 200:
                break
            if proc.poll() is not None:
                print(f"error: mlflow server exited with code {proc.returncode} during start-up; "
                      f"last lines of {log_path}:\n{log_tail(log_path)}", file=sys.stderr)
                remove_state(root)
                return 1
            if time.monotonic() > deadline:
                _terminate(proc.pid)
                remove_state(root)
                print(f"error: {uri}/health did not answer within {timeout_s:.0f} s (server stopped; raise "
                      f"--timeout on a slow node); last lines of {log_path}:\n{log_tail(log_path)}",
                      file=sys.stderr)
                return 1
            time.sleep(0.3)
        procs = group_processes(proc.pid)
        print(f"started: {uri} (pid {proc.pid}, ready in {time.monotonic() - t0:.1f} s, "
              f"{len(procs)} processes, {rss_mb(procs):.0f} MB RSS; log {log_path})")
        _print_usage(uri)
        return 0


def _print_usage(uri: str) -> None:
    print(f"jobs log to it with the override: tracking.uri={uri}")


def stop(root: str, grace_s: float = 15.0) -> int:
    """SIGTERM the server's process group (SIGKILL after ``grace_s``) and remove server.json."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--root {root} does not exist")
    with _locked(root):
        state = read_state(root)
        if state is None:
            print(f"not running (no {os.path.join(root, SERVER_JSON)})")
            return 0
        if state.get("node", socket.gethostname()) != socket.gethostname():
            print(f"error: the server runs on node {state['node']}, this is {socket.gethostname()}; "
                  f"run `proxy-mlflow-server stop --root {root}` there", file=sys.stderr)
            return 1
        pid = state["pid"]
        if not (alive(pid) and _is_mlflow(pid)):
            remove_state(root)
            print(f"not running (pid {pid} is gone; removed stale {SERVER_JSON})")
            return 0
        killed = _terminate(pid, grace_s)
        remove_state(root)
        print(f"stopped: {state['uri']} (pid {pid}{', killed after ' + str(grace_s) + ' s' if killed else ''})")
        return 0


def status(root: str) -> int:
    """Print the recorded server and whether it answers. Returns 0 if it runs, 1 otherwise."""
    root = os.path.abspath(root)
    state = read_state(root) if os.path.isdir(root) else None
    if state is None:
        print(f"not running (no {os.path.join(root, SERVER_JSON)})")
        return 1
    running = _running(state)
    info = dict(state, running=running)
    if state.get("node") == socket.gethostname():
        procs = group_processes(state["pid"])
        info.update(processes=len(procs), rss_mb=round(rss_mb(procs)))
    print(json.dumps(info, indent=2))
    if running:
        _print_usage(state["uri"])
    return 0 if running else 1


