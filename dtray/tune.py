"""Hyper-parameter searches with Ray Tune, described by a YAML file in tune_configs/.

Tune has no YAML format of its own, so dtray defines one::

    base:                              # the run config every trial starts from
      config: configs/pendulum.yaml    #   a run config file (relative to the current directory)
      overrides:                       #   then section.key: value pairs applied to it
        train.max_steps: 400
    search_space:                      # section.key: node, sampled per trial
      train.lr: {loguniform: [1.0e-4, 3.0e-3]}
      model.embed_dim: {choice: [64, 128]}
    scheduler: {name: asha, max_t: 400, grace_period: 100, reduction_factor: 2}
    num_samples: 6                     # trials (times the grid, when there are grid nodes)
    metric: val_loss                   # any metric dtray.train reports
    mode: min
    max_concurrent_trials: 1
    resources_per_trial: {CPU: 0.25}   # the trial's driver; training workers come from run.*
    max_failures: 0                    # retries of a failed trial, which resumes from its checkpoint
    storage_path: runs                 # default: the base config's run.storage_path
    name: pendulum_quick               # default: the file's name; the experiment is storage_path/name

Nodes: ``{uniform: [a, b]}``, ``{loguniform: [a, b]}``, ``{quniform: [a, b, q]}``,
``{randint: [a, b]}`` and ``{qrandint: [a, b, q]}`` (b excluded for randint, as in
``tune.randint``), ``{choice: [...]}`` (sampled) and ``{grid: [...]}`` (every value).
Scheduler time is the training ``step``. Tune sees the reports that carry the metric:
``val_loss`` comes with each checkpoint (``train.checkpoint_every``), so ASHA rungs are best
multiples of it. ``section.key=value`` overrides change the base run config; other keys
(``num_samples=2``, ``scheduler.max_t=100``) change the search file.

Each trial trains with ``dtray.train.fit`` into ``<experiment>/runs/<trial name>``;
because Train resumes a run whose directory exists, a retried or resumed trial
continues from its latest checkpoint. The experiment directory then receives
``trials.csv``, ``best_config.yaml`` (a full run config for ``dtray train``) and
``best_checkpoint/``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import inspect
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from dtray import config as cfg
from dtray.errors import DtrayError

METRICS = ("step", "loss", "action_error", "val_loss", "val_action_error", "lr", "grad_norm",
           "samples_per_s", "data_wait_frac", "eval_return", "eval_score")
TABLE_METRICS = ("step", "loss", "val_loss", "val_action_error", "eval_return", "eval_score", "samples_per_s")
SCHEDULER_ALIASES = {"asha": "async_hyperband"}
SEARCH_KEYS = {"base", "search_space", "scheduler", "num_samples", "metric", "mode", "max_concurrent_trials",
               "resources_per_trial", "max_failures", "storage_path", "name"}
RUN_SECTIONS = {f.name for f in dataclasses.fields(cfg.Config)}


@dataclass
class Search:
    """A validated search file: everything Tune needs, plus the base run config it varies."""

    source: str  # the YAML file, for messages
    base: dict[str, Any]  # the run config as a plain dict, paths as written
    space: dict[str, Any]  # section.key -> ray.tune domain or grid
    scheduler: dict[str, Any]
    num_samples: int
    metric: str
    mode: str
    max_concurrent_trials: int | None
    resources_per_trial: dict[str, float]
    max_failures: int
    storage_path: str
    name: str

    @property
    def experiment_path(self) -> str:
        return f"{_absolute(self.storage_path).rstrip('/')}/{self.name}"


# ---------------------------------------------------------------- YAML -> search


def _numbers(source: str, key: str, kind: str, args: Any, count: int, cast: type) -> list:
    """YAML reads ``1e-5`` as a string, so range bounds are parsed here; ints must be whole."""
    try:
        if not isinstance(args, list) or len(args) != count:
            raise ValueError
        values = [float(a) for a in args]
        if cast is int and not all(v.is_integer() for v in values):
            raise ValueError
        return [cast(v) for v in values]
    except (TypeError, ValueError):
        kind_of = "whole numbers" if cast is int else "numbers"
        raise DtrayError(f"{source}: search_space.{key}: {kind} takes a list of {count} {kind_of}, "
                         f"got {args!r}") from None


def _node(source: str, key: str, node: Any) -> tuple[Any, list[Any]]:
    """One YAML node -> (Tune domain, the values to type-check against the config)."""
    from ray import tune

    if not (isinstance(node, dict) and len(node) == 1):
        raise DtrayError(f"{source}: search_space.{key}: expected one node like {{choice: [...]}}, got {node!r}")
    (kind, args), = node.items()
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise DtrayError(f"{source}: search_space.{key}: {kind} takes a non-empty list, got {args!r}")
        return (tune.choice(args) if kind == "choice" else tune.grid_search(args)), list(args)
    ranges = {"uniform": (2, float, tune.uniform), "loguniform": (2, float, tune.loguniform),
              "quniform": (3, float, tune.quniform), "randint": (2, int, tune.randint),
              "qrandint": (3, int, tune.qrandint)}
    if kind not in ranges:
        raise DtrayError(f"{source}: search_space.{key}: unknown node {kind!r}; "
                         f"use one of {sorted([*ranges, 'choice', 'grid'])}")
    count, cast, make = ranges[kind]
    args = _numbers(source, key, kind, args, count, cast)
    low, high = args[0], args[1]
    if not low < high or (kind == "loguniform" and low <= 0):
        raise DtrayError(f"{source}: search_space.{key}: {kind} needs 0 < a < b for log, a < b otherwise, got {args}")
    return make(*args), [low, high - 1 if kind == "randint" else high]


def _check_key(source: str, key: str) -> None:
    section, _, name = key.partition(".")
    if section not in RUN_SECTIONS or "." in name:
        raise DtrayError(f"{source}: search_space.{key}: expected section.key with a section in {sorted(RUN_SECTIONS)}")
    fields = {f.name for f in dataclasses.fields(type(getattr(cfg.Config(), section)))}
    if name not in fields:
        raise DtrayError(f"{source}: search_space.{key}: {section} has no key {name!r}; it has {sorted(fields)}")


def set_key(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set ``section.key`` in a plain run-config dict."""
    section, _, name = key.partition(".")
    data.setdefault(section, {})[name] = value
    return data


def trial_config(base: dict[str, Any], sampled: dict[str, Any], source: str = "trial") -> cfg.Config:
    """The base run config with one trial's sampled values."""
    data = copy.deepcopy(base)
    for key, value in sampled.items():
        set_key(data, key, value)
    return cfg.from_dict(data, source)


def _override(doc: dict[str, Any], base: dict[str, Any], item: str) -> None:
    """``section.key=value`` sets the base run config; other keys (``num_samples=2``,
    ``scheduler.max_t=100``) set the search file itself."""
    key = item.partition("=")[0]
    if key.partition(".")[0] in RUN_SECTIONS:
        cfg.apply_overrides(base, [item])
    else:
        cfg.apply_overrides({"search": doc}, [f"search.{item}"])


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise DtrayError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        raise DtrayError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise DtrayError(f"{path}: expected a mapping at top level")
    return doc


def _base(source: str, spec: Any) -> dict[str, Any]:
    spec = spec or {}
    if not isinstance(spec, dict) or set(spec) - {"config", "overrides"}:
        raise DtrayError(f"{source}: base: expected a mapping with 'config' and/or 'overrides'")
    data = _read_yaml(spec["config"]) if spec.get("config") else {}
    for key, value in (spec.get("overrides") or {}).items():
        if key.partition(".")[0] not in RUN_SECTIONS:
            raise DtrayError(f"{source}: base.overrides.{key}: expected section.key")
        set_key(data, key, value)
    return data


def load_search(path: str | Path, overrides: Sequence[str] = ()) -> Search:
    """Read and check a search file without Ray: bad nodes, unknown keys or values the
    run config rejects fail here, naming the file and key, before any trial starts."""
    source = str(path)
    doc = _read_yaml(path)
    base = _base(source, doc.get("base"))
    for item in overrides:
        _override(doc, base, item)
    if unknown := set(doc) - SEARCH_KEYS:
        raise DtrayError(f"{source}: unknown key(s) {sorted(unknown)}; expected {sorted(SEARCH_KEYS)}")
    base_config = cfg.from_dict(copy.deepcopy(base), f"{source}: base")
    space = {}
    for key, node in (doc.get("search_space") or {}).items():
        _check_key(source, key)
        space[key], values = _node(source, key, node)
        for value in values:
            trial_config(base, {key: value}, f"{source}: search_space.{key}={value!r}")
    if not space:
        raise DtrayError(f"{source}: search_space is empty")
    metric, mode = doc.get("metric", "val_loss"), doc.get("mode", "min")
    if metric not in METRICS:
        raise DtrayError(f"{source}: metric {metric!r} is not reported by training; use one of {list(METRICS)}")
    if metric.startswith("eval_") and not base_config.train.eval_every:
        raise DtrayError(f"{source}: metric {metric} needs train.eval_every > 0 in the base config")
    if mode not in ("min", "max"):
        raise DtrayError(f"{source}: mode must be min or max, got {mode!r}")
    scheduler = dict(doc.get("scheduler") or {"name": "asha"})
    scheduler.setdefault("name", "asha")
    if scheduler["name"] in ("asha", "async_hyperband", "hyperband"):
        scheduler.setdefault("max_t", base_config.train.max_steps)
    search = Search(
        source=source, base=base, space=space, scheduler=scheduler,
        num_samples=_count(source, doc, "num_samples", 1), metric=metric, mode=mode,
        max_concurrent_trials=_count(source, doc, "max_concurrent_trials", None),
        resources_per_trial=_resources(source, doc.get("resources_per_trial") or {"CPU": 0.25}),
        max_failures=_count(source, doc, "max_failures", 0),
        storage_path=str(doc.get("storage_path") or base_config.run.storage_path),
        name=str(doc.get("name") or Path(path).stem),
    )
    make_scheduler(search)  # its arguments fail now rather than after Ray has started
    return search


def _count(source: str, doc: dict[str, Any], key: str, default: int | None) -> int | None:
    value = doc.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise DtrayError(f"{source}: {key} must be a whole number >= 0, got {value!r}")
    return value


def _resources(source: str, resources: Any) -> dict[str, float]:
    try:
        return {str(name): float(amount) for name, amount in resources.items()}
    except (AttributeError, TypeError, ValueError):
        raise DtrayError(f"{source}: resources_per_trial: expected e.g. {{CPU: 1, GPU: 0}}, got {resources!r}") from None


def make_scheduler(search: Search):
    """``tune.create_scheduler`` with YAML names; time is counted in training steps."""
    from ray import tune

    from ray.tune.schedulers import SCHEDULER_IMPORT

    options = dict(search.scheduler)
    name = str(options.pop("name")).lower()
    name = SCHEDULER_ALIASES.get(name, name)
    if name not in SCHEDULER_IMPORT:
        raise DtrayError(f"{search.source}: scheduler: unknown name {name!r}; use asha or one of {list(SCHEDULER_IMPORT)}")
    if name != "fifo":
        options.setdefault("time_attr", "step")
    scheduler_class = SCHEDULER_IMPORT[name]
    if inspect.isclass(scheduler_class):  # create_scheduler silently drops unknown arguments: a typo would too
        if unknown := set(options) - set(inspect.signature(scheduler_class).parameters):
            raise DtrayError(f"{search.source}: scheduler: {name} has no argument(s) {sorted(unknown)}")
    try:
        return tune.create_scheduler(name, **options)
    except (AssertionError, ValueError, TypeError) as err:
        raise DtrayError(f"{search.source}: scheduler: {err}") from None


# ---------------------------------------------------------------- running


def _absolute(path: str) -> str:
    """Trials run in their own working directory, so local paths are fixed on the driver."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _run_trial(sampled: dict[str, Any], *, base: dict[str, Any], runs_path: str, metric: str) -> None:
    """The Tune trainable: one Ray Train run, its reports forwarded to Tune."""
    from ray import tune
    from ray.data import DataContext
    from ray.tune.integration.ray_train import TuneReportCallback

    from dtray.train import fit

    class ReportsWithMetric(TuneReportCallback):
        """Tune rejects results without the search metric, and training reports val_loss
        only with checkpoints: Tune gets those reports (each one names its checkpoint)."""

        def after_report(self, run_context, metrics, checkpoint):
            if metric in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    DataContext.get_current().enable_progress_bars = False  # one bar per trial would flood the driver's log
    trial = tune.get_context().get_trial_name()
    config = trial_config(base, sampled, f"trial {trial}")
    config.run.storage_path, config.run.name = runs_path, trial
    fit(config, callbacks=[ReportsWithMetric()])


def _trainable(search: Search):
    from ray import tune

    base = copy.deepcopy(search.base)
    data = base.setdefault("data", {})
    data["paths"] = [_absolute(p) for p in data.get("paths", [])]
    runs_path = f"{search.experiment_path}/runs"
    return tune.with_resources(tune.with_parameters(_run_trial, base=base, runs_path=runs_path,
                                                    metric=search.metric),
                               search.resources_per_trial)


def _check_resources(search: Search) -> None:
    """One trial (its driver and its workers) must leave Ray Data a CPU to read with;
    otherwise reads wait forever for a CPU that never frees up."""
    import ray

    run = cfg.from_dict(copy.deepcopy(search.base)).run
    total = ray.cluster_resources().get("CPU", 0)
    trial = search.resources_per_trial.get("CPU", 0) + run.num_workers * run.cpus_per_worker
    if total and total - trial < 0.5:
        raise DtrayError(f"{search.source}: one trial takes {trial:g} of {total:g} CPUs (resources_per_trial + "
                         f"run.num_workers x run.cpus_per_worker), leaving none to read data")


def run_search(config_path: str | Path, resume: bool = False, overrides: Sequence[str] = ()):
    """Run (or ``resume``) the search on the connected Ray cluster, then export its results."""
    from ray import tune

    from dtray.data import check_dataset

    search = load_search(config_path, overrides)
    path = search.experiment_path
    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise DtrayError(f"--resume: no search to resume at {path}")
    if exists and not resume:
        raise DtrayError(f"{path} already holds this search: pass --resume to continue it, or name=<new name>")
    _check_resources(search)
    if not resume:  # a bad dataset fails here once, not in every trial
        check_dataset(cfg.from_dict(search.base, search.source).data)
    if resume:
        tuner = tune.Tuner.restore(path, trainable=_trainable(search), resume_errored=False)
    else:
        tuner = tune.Tuner(
            _trainable(search),
            param_space=search.space,
            tune_config=tune.TuneConfig(metric=search.metric, mode=search.mode, num_samples=search.num_samples,
                                        scheduler=make_scheduler(search),
                                        max_concurrent_trials=search.max_concurrent_trials),
            run_config=tune.RunConfig(name=search.name, storage_path=_absolute(search.storage_path),
                                      failure_config=tune.FailureConfig(max_failures=search.max_failures)),
        )
    grid = tuner.fit()
    export(search, grid)
    return grid


# ---------------------------------------------------------------- results


def _best_value(result, metric: str, mode: str) -> float:
    frame = result.metrics_dataframe
    if frame is None or metric not in frame or frame[metric].dropna().empty:
        return math.nan
    values = frame[metric].dropna()
    return float(values.min() if mode == "min" else values.max())


def ranked_trials(search: Search, grid) -> list[tuple[dict[str, Any], Any]]:
    """(table row, Tune result) per trial, best first; rows hold the sampled values, the
    last reported metrics and the trial's best value of the search metric."""
    best_key = f"best_{search.metric}"
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        row = {"trial": os.path.basename(result.path)}
        params = _trial_params(result, grid.filesystem)
        row.update({key: params.get(key) for key in search.space})
        row.update({key: metrics.get(key) for key in TABLE_METRICS})
        row[best_key] = _best_value(result, search.metric, search.mode)
        row["time_total_s"] = metrics.get("time_total_s")
        row["error"] = type(result.error).__name__ if result.error else ""
        rows.append((row, result))
    sign = 1 if search.mode == "min" else -1
    return sorted(rows, key=lambda pair: sign * pair[0][best_key] if not math.isnan(pair[0][best_key]) else math.inf)


def _trial_params(result, filesystem) -> dict[str, Any]:
    """A trial's sampled values. Tune forgets them for a trial that errored before a restore,
    but they stay in the trial's params.json."""
    if result.config:
        return result.config
    try:
        with filesystem.open_input_stream(f"{result.path}/params.json") as stream:
            return json.loads(stream.read())
    except (OSError, ValueError):
        return {}


def _best_checkpoint(result, search: Search, filesystem) -> str | None:
    """The best trial's best reported checkpoint that is still stored (older ones are pruned)."""
    import pyarrow.fs as pafs

    frame = result.metrics_dataframe
    if frame is None or "checkpoint_path" not in frame or search.metric not in frame:
        return None
    frame = frame.dropna(subset=["checkpoint_path", search.metric])
    for path in frame.sort_values(search.metric, ascending=search.mode == "min")["checkpoint_path"]:
        if filesystem.get_file_info(path).type == pafs.FileType.Directory:
            return path
    return None


def export(search: Search, grid) -> None:
    """Write trials.csv, best_config.yaml and best_checkpoint/ into the experiment directory
    (local or s3), and print where they are. Errored trials are listed, never fatal."""
    import pyarrow.fs as pafs

    fs, root = grid.filesystem, grid.experiment_path
    ranked = ranked_trials(search, grid)
    rows = [row for row, _ in ranked]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    _write_text(fs, f"{root}/trials.csv", table.getvalue())
    print(table.getvalue() + f"trials: {root}/trials.csv")
    if failed := [row["trial"] for row in rows if row["error"]]:
        print(f"{len(failed)} trial(s) failed: {', '.join(failed)}")
    best_key = f"best_{search.metric}"
    if not rows or math.isnan(rows[0][best_key]):
        raise DtrayError(f"no trial of {search.name} reported {search.metric}; see {root}")
    best_row, best = ranked[0]
    config = trial_config(search.base, {key: best.config[key] for key in search.space})
    config.run.name = ""  # `dtray train` starts a fresh run instead of resuming the trial's
    _write_text(fs, f"{root}/best_config.yaml", cfg.dumps(config))
    print(f"best trial {best_row['trial']}: {search.metric} {best_row[best_key]:.4f} with "
          + ", ".join(f"{key}={best.config[key]!r}" for key in search.space))
    print(f"best config: {root}/best_config.yaml")
    checkpoint = _best_checkpoint(best, search, fs)
    if checkpoint is None:
        print("best checkpoint: none stored")
        return
    target = f"{root}/best_checkpoint"
    if fs.get_file_info(target).type != pafs.FileType.NotFound:
        fs.delete_dir(target)
    fs.create_dir(target)
    pafs.copy_files(checkpoint, target, source_filesystem=fs, destination_filesystem=fs)
    print(f"best checkpoint: {target} (copied from {checkpoint})")


def _write_text(filesystem, path: str, text: str) -> None:
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())
