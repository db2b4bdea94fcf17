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


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(e).__name__


def user_error_message(e: BaseException) -> str | None:
    """The one line an entry point prints for an error the user can fix, or None for a bug (which keeps its
    traceback): proxy-exp's own errors (proxy_exp/errors.py), ValueError / FileNotFoundError raised with a message
    that names the setting or file, config validation errors (with the key), and an output that cannot be written."""
    import errno

    from omegaconf.errors import OmegaConfBaseException

    from proxy_exp.errors import ProxyExpError

    if isinstance(e, OmegaConfBaseException):
        key = getattr(e, "full_key", None)
        text = _one_line(e).split("; full_key:")[0].split("; object_type=")[0]
        return f"config error: {key}: {text}" if key else f"config error: {text}"
    if isinstance(e, (ProxyExpError, ValueError, FileNotFoundError)):
        return f"error: {_one_line(e)}"
    if isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EROFS)):
        return (f"error: cannot write {e.filename or 'an output'} ({e.strerror}): choose a writable paths.root "
                "(or fix the folder's permissions)")
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return (f"error: the disk is full writing {e.filename or 'an output'}: free space under paths.root (or move "
                "it), then rerun: finished units are kept and an interrupted one resumes from its last checkpoint")
    return None


def run_app(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point body; an error the user can fix ends with one clear line (exit 2), not a stack trace.
    ``PROXY_EXP_TRACEBACK=1`` shows the traceback of those too. Other exceptions are bugs and keep their traceback."""
    try:
        return fn(cfg)
    except Exception as e:  # noqa: BLE001
        message = user_error_message(e)
        if message is None or os.environ.get("PROXY_EXP_TRACEBACK"):
            raise
        print(f"{message}\n(set PROXY_EXP_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)


offline_env()
register_configs()
