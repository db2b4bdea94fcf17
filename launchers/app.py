"""What every entry point shares: offline environment, schema re-validation, readable errors."""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import traceback
import typing
from typing import Any, Callable, TypeVar

from omegaconf import DictConfig, OmegaConf

from proxy_exp.config import register_configs
from proxy_exp.environment import offline_env

T = TypeVar("T")
CONF_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "conf"))


def to_job(cfg: DictConfig, cls: type[T]) -> T:
    """Re-validate against the schema (catches `+key=` additions that Hydra lets through) and build the dataclass.

    A config that Hydra composed on the schema (``defaults: [<cls>_schema]``) has had every value validated and
    converted; what it may still hold is a key that ``+key=`` added, which :func:`unknown_keys` finds in the plain
    container. Only then is it merged into the schema again, to raise OmegaConf's own error naming the key (the merge
    costs a second on a 25-recipe campaign, whose status must answer in a few seconds)."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    hydra_node = isinstance(container, dict) and container.pop("hydra", None) is not None
    if not hydra_node and OmegaConf.get_type(cfg) is cls and not unknown_keys(container, cls):
        job = OmegaConf.to_object(cfg)
    else:
        job = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), container))
    validate_job(job)
    return job  # type: ignore[return-value]


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def unknown_keys(value: Any, tp: Any, where: str = "") -> list[str]:
    """Dotted names of the keys of the plain ``value`` that its schema type ``tp`` does not declare (dataclasses
    inside dicts, lists and Optional followed; ``Any`` and plain dicts accept any key)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return unknown_keys(value, args[0], where) if len(args) == 1 else []
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        fields = _field_types(tp)
        out = []
        for k, v in value.items():
            name = f"{where}.{k}" if where else str(k)
            out += unknown_keys(v, fields[k], name) if k in fields else [name]
        return out
    if origin is dict and isinstance(value, dict):
        vt = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        return [bad for k, v in value.items() for bad in unknown_keys(v, vt, f"{where}.{k}" if where else str(k))]
    if origin in (list, tuple) and isinstance(value, list):
        vt = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        return [bad for i, v in enumerate(value) for bad in unknown_keys(v, vt, f"{where}[{i}]")]
    return []


def validate_job(job: Any) -> None:
    """Checks that need no data, run for every job before any work starts: a training job's sizes and batch split
    (:func:`proxy_exp.train.plan.check_train_config`). Raises ValueError with one line naming the setting."""
    from proxy_exp.config import TrainJobConfig

    if isinstance(job, TrainJobConfig):
        from proxy_exp.train.plan import check_train_config

        check_train_config(job)


def check_tie_rule(analysis: Any) -> None:
    """``analysis.ties=datadecide`` is for ``analysis=datadecide``: a campaign's analysis counts ties as half (its
    intervals assume it). Raises ValueError in one line; called by proxy-campaign and proxy-analyze before any work."""
    from proxy_exp.config import AnalysisKind, TieRule

    if analysis.ties != TieRule.half and analysis.kind != AnalysisKind.datadecide:
        raise ValueError(f"analysis.ties={analysis.ties}: DataDecide's tie rule applies to analysis=datadecide only; "
                         f"a {analysis.kind} analysis counts ties as half (its intervals assume it): drop analysis.ties")


def _omegaconf_text(e: BaseException) -> str:
    """An OmegaConf error's own sentence, without the key / type details it appends (the line names the key)."""
    return _one_line(e).split("; full_key:")[0].split("; object_type=")[0].split("; reference_type=")[0]


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(e).__name__


def user_error_message(e: BaseException) -> str | None:
    """The one line an entry point prints for an error the user can fix, or None for a bug (which keeps its
    traceback): proxy-exp's own errors (proxy_exp/errors.py), ValueError / FileNotFoundError raised by proxy-exp's own
    code (:func:`raised_in_project`: its messages name the setting or file; the same errors out of a library are
    bugs), config validation errors (with the key), and an output that cannot be written."""
    import errno

    from omegaconf.errors import OmegaConfBaseException

    from proxy_exp.errors import ProxyExpError

    if isinstance(e, OmegaConfBaseException):
        key = getattr(e, "full_key", None)
        text = _omegaconf_text(e)
        return f"config error: {key}: {text}" if key else f"config error: {text}"
    if isinstance(e, ProxyExpError) or (isinstance(e, (ValueError, FileNotFoundError)) and raised_in_project(e)):
        return f"error: {_one_line(e)}"
    if isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EROFS)):
        return (f"error: cannot write {e.filename or 'an output'} ({e.strerror}): choose a writable paths.root "
                "(or fix the folder's permissions)")
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return (f"error: the disk is full writing {e.filename or 'an output'}: free space under paths.root (or move "
                "it), then rerun: finished units are kept and an interrupted one resumes from its last checkpoint")
    return None


# proxy-exp's own packages (pyproject.toml [tool.setuptools.packages.find])
_PROJECT_DIRS = tuple(os.path.join(os.path.dirname(CONF_DIR), d) + os.sep
                      for d in ("proxy_exp", "launchers", "analysis"))


def _in_project(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PROJECT_DIRS) and f"{os.sep}site-packages{os.sep}" not in path


def raised_in_project(e: BaseException) -> bool:
    """Whether proxy-exp's own code (proxy_exp/, launchers/, analysis/) raised ``e``: the innermost frame of its
    traceback (or, for an error re-raised from a worker process, of the worker's traceback text) is one of its
    files. A ValueError that numpy, pandas or torch raise inside proxy-exp is not: it is a bug that a check of ours
    did not catch."""
    remote = getattr(e.__cause__, "tb", None)  # concurrent.futures / multiprocessing: the worker's traceback text
    if isinstance(remote, str):
        files = [line.split('"')[1] for line in remote.splitlines() if line.strip().startswith('File "')]
        return bool(files) and _in_project(files[-1])
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return _in_project(tb.tb_frame.f_code.co_filename)


def run_app(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point body; an error the user can fix ends with one clear line (exit 2), not a stack trace.
    ``PROXY_EXP_TRACEBACK=1`` shows the traceback of those too (still exit 2). Other exceptions are bugs: a line
    saying so, then their traceback (exit 1)."""
    try:
        return fn(cfg)
    except Exception as e:  # noqa: BLE001
        message = user_error_message(e)
        if message is None:
            print(f"internal error: {type(e).__name__} is a bug in proxy-exp, not a problem with your input; please "
                  "report it with the traceback below", file=sys.stderr)
            raise
        if os.environ.get("PROXY_EXP_TRACEBACK"):
            traceback.print_exc()
            print(message, file=sys.stderr)
        else:
            print(f"{message}\n(set PROXY_EXP_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)


def compose_error_message(e: BaseException) -> str | None:
    """The one line for a command line Hydra cannot compose (an unknown config group option, an unknown key, a
    value an enumerated or typed setting does not allow), or None for any other error."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
        group, _, option = str(e.missing_cfg_file).rpartition("/")
        if group:
            return (f"error: {group}={option}: no option {option!r} in config group {group!r}; choose one of: "
                    f"{', '.join(sorted(e.options))} (or add conf/{group}/{option}.yaml)")
    if isinstance(e, OverrideParseException):
        text = _one_line(e).split("; See https://")[0]
        return (f"error: cannot parse the override {getattr(e, 'override', '')!r}: {text}; write overrides as "
                "key=value (quote a value with brackets or spaces: key='[a, b]')")
    if not isinstance(e, ConfigCompositionException):
        return None
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or ""
        text = _omegaconf_text(cause)
        fix = "fix the value on the command line"
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            fields = _dataclass_fields(getattr(cause, "object_type", None))
            fix = "check the spelling" + (f"; the keys there are: {', '.join(fields)}" if fields else "")
            if getattr(cause, "object_type", None) is dict:  # a Dict setting: Hydra adds its keys only with ++
                parent = key.rpartition(".")[0]
                fix = f"a dict setting takes new keys only with ++, e.g. '++{parent}={{key: value}}'"
        return f"error: {key}: {text}; {fix}" if key else f"error: {text}; {fix}"
    return f"error: {_one_line(e)}"


def _dataclass_fields(cls: Any) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(cls)] if isinstance(cls, type) and dataclasses.is_dataclass(cls) else []


def _report_compose_errors(report: Callable[[Callable[[], Any]], Any]) -> Callable[[Callable[[], Any]], Any]:
    """Wrap Hydra's ``run_and_report`` (which prints a composition error over several lines and exits 1) so that a
    command line that does not compose ends with one line and exit 2, like every other user error.
    ``PROXY_EXP_TRACEBACK=1`` or ``HYDRA_FULL_ERROR=1`` leave Hydra's own report."""

    def run_and_report(func: Callable[[], Any]) -> Any:
        def checked() -> Any:
            try:
                return func()
            except Exception as e:  # noqa: BLE001
                # a command line that does not compose, or a paths.root Hydra cannot create its run folder in
                message = compose_error_message(e) or (user_error_message(e) if isinstance(e, OSError) else None)
                if message is None or os.environ.get("PROXY_EXP_TRACEBACK") or os.environ.get("HYDRA_FULL_ERROR"):
                    raise
                print(message, file=sys.stderr)
                sys.exit(2)

        return report(checked)

    run_and_report.__wrapped__ = report  # type: ignore[attr-defined]
    return run_and_report


def _install_compose_errors() -> None:
    import hydra._internal.utils as hydra_utils

    if not hasattr(hydra_utils.run_and_report, "__wrapped__"):
        hydra_utils.run_and_report = _report_compose_errors(hydra_utils.run_and_report)


offline_env()
register_configs()
_install_compose_errors()
