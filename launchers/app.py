"""What every entry point shares: offline environment, schema re-validation, readable errors."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, TypeVar

from omegaconf import DictConfig, OmegaConf

from proxy_exp.config import register_configs
from proxy_exp.environment import offline_env

T = TypeVar("T")
CONF_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "conf"))


def to_job(cfg: DictConfig, cls: type[T]) -> T:
    """Re-validate against the schema (catches `+key=` additions that Hydra lets through) and build the dataclass."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if isinstance(container, dict):
        container.pop("hydra", None)
    merged = OmegaConf.merge(OmegaConf.structured(cls), container)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def run_app(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point body; a configuration or input error ends with one clear line, not a stack trace."""
    try:
        return fn(cfg)
    except (ValueError, FileNotFoundError, KeyError) as e:
        if os.environ.get("PROXY_EXP_TRACEBACK"):
            raise
        print(f"error: {e}\n(set PROXY_EXP_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # omegaconf validation errors carry the key's name
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(e, OmegaConfBaseException) and not os.environ.get("PROXY_EXP_TRACEBACK"):
            print(f"config error: {e}", file=sys.stderr)
            sys.exit(2)
        raise


offline_env()
register_configs()
