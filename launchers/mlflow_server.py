"""proxy-mlflow-server: start, stop and inspect a shared MLflow tracking server (an argparse command, not Hydra).

The logic is :mod:`proxy_exp.tracking.server`; see its docstring for what ``start`` runs and records.
"""
from __future__ import annotations

import argparse
import sys

from proxy_exp.tracking.server import start, status, stop

# What binding to another interface means, said in `proxy-mlflow-server --help` and `proxy-mlflow-server start --help`.
SECURITY = ("Security: the server binds 127.0.0.1 (this machine only) unless --host says otherwise. MLflow has no "
            "authentication by default: served on --host 0.0.0.0 (or any address others can reach), anyone who can "
            "reach the port can read, change and delete every experiment, run, param, metric and artifact. Expose "
            "it only to whom you trust: behind a firewall that admits your cluster's nodes alone, through an SSH "
            "tunnel (bind 127.0.0.1 and run `ssh -N -L 5000:127.0.0.1:5000 <server-node>` where you work), or with "
            "MLflow's own basic-auth app (`pip install 'mlflow[auth]'`, `mlflow server --app-name basic-auth ...`; "
            "jobs then set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD). --allowed-hosts is no access "
            "control: it checks only the Host header a client sends (against DNS rebinding).")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proxy-mlflow-server", description=f"{__doc__.split(chr(10) * 2)[0]} {SECURITY}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start the tracking server detached (idempotent)",
                       description=f"Start the tracking server detached (idempotent). {SECURITY}")
    s.add_argument("--root", required=True, help="directory for mlflow.db, artifacts/, server.json, server.log "
                                                 "(on the shared filesystem)")
    s.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only). 0.0.0.0 serves other nodes, and "
                        "anyone else who can reach the port: MLflow has no authentication by default, so they can "
                        "read and write every run and artifact; use a firewall, an SSH tunnel or MLflow's "
                        "basic-auth app")
    s.add_argument("--port", type=int, default=5000)
    s.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    s.add_argument("--backend-uri", default="", help="backend store URI (required for postgresql)")
    s.add_argument("--allowed-hosts", default="", help="comma-separated Host names clients use (node names, "
                                                       "with or without :port), added to MLflow's defaults")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for /health")
    for name, text in (("stop", "stop the server (SIGTERM, SIGKILL after 15 s)"), ("status", "show the server")):
        sub.add_parser(name, help=text).add_argument("--root", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "start":
            return start(args.root, args.host, args.port, args.backend, args.backend_uri, args.allowed_hosts,
                         args.workers, args.timeout)
        if args.command == "stop":
            return stop(args.root)
        return status(args.root)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
