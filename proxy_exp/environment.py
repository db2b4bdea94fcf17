"""The process environment every proxy-exp process and job runs in: no hub, quiet libraries.

:data:`OFFLINE_ENV` is the one list of the variables that keep transformers, datasets and the hub client off the
network; :func:`offline_env` sets them (and the job defaults) unless the user set them, :func:`set_offline` forces
them, also on HF modules imported before the call.
"""
from __future__ import annotations

import os
import sys

OFFLINE_ENV: dict[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# tokenizers' threads (a job that tokenizes sets its own), headless plots. DeepSpeed's accelerator is not among them:
# a training job sets it from its device plan (proxy_exp/devices.py:train_device_plan), before importing DeepSpeed.
JOB_ENV_DEFAULTS: dict[str, str] = {"TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}


def offline_env() -> None:
    """No hub: every transformers / datasets call reads local paths only (variables the user set are kept)."""
    for k, v in {**OFFLINE_ENV, **JOB_ENV_DEFAULTS}.items():
        os.environ.setdefault(k, v)


def set_offline() -> None:
    """Keep the HF stack off the network, also when its modules were imported before this call."""
    os.environ.update(OFFLINE_ENV)
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        cfg = sys.modules["datasets.config"]
        cfg.HF_HUB_OFFLINE = True
        cfg.HF_DATASETS_OFFLINE = True
