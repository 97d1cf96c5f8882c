"""`ynat-ray tune`: hyperparameter search with Ray Tune over the same training loop, in Ray Train V2's pattern.

Shape (Ray's "Hyperparameter Tuning with Ray Tune" guide for Train V2):
  Tuner(train_driver) -> each trial: TrainConfig(base + sampled values) -> `train.prepare_run` ->
  `train.make_trainer(callbacks=[TuneReportCallback()])`.fit()
  ASHAScheduler reads each epoch's validation macro-F1 (rank 0's report) and stops weak trials early.
Not `Tuner(trainer)`: that V1 API is gone in Train V2; a trial is a small driver that builds its own trainer.

The search space is a YAML file of training options in which some values are ranges (see `load_space` and the shipped
`ynat_ray/assets/tune_space.yaml`), so the winner is written back as a plain `best.yaml` that
`ynat-ray train --config best.yaml` runs as is.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from ynat_ray.config import TrainConfig, TuneConfig, UsageError, check_options, is_uri, read_text
from ynat_ray.tracking import TRIAL_TAG, TrackedRun, run_scope
from ynat_ray.train import SCORE_METRIC as METRIC
from ynat_ray.train import unique_run_name

DEFAULT_SPACE = str(Path(__file__).parent / "assets" / "tune_space.yaml")
# A searched value is a one-key mapping: {loguniform: [lo, hi]}, {uniform: [lo, hi]}, {randint: [lo, hi)},
# {choice: [a, b, ...]} or {grid: [a, b, ...]} (every value, times --num_samples).
SPACE_KINDS = ("loguniform", "uniform", "randint", "choice", "grid")
# What a trial's driver function holds: it only builds a TorchTrainer and waits (Tune refuses 0).
TRIAL_DRIVER_CPUS = 0.05
# Fields a search may not vary: they name the run or its storage, not the recipe.
NOT_SEARCHABLE = {"run_name", "storage_path", "push_to_hub", "verbose", "progress_bar", "use_gpu", "num_workers", "tracking_uri"}


@dataclass
class SearchSpace:
    """A space file split into fixed training options and searched ones (name -> (kind, arguments))."""

    path: str
    fixed: dict[str, Any]
    searched: dict[str, tuple[str, list[Any]]]

    def param_space(self) -> dict[str, Any]:
        """Ray Tune domains for the searched fields."""
        from ray import tune

        make = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}
        space: dict[str, Any] = {}
        for name, (kind, args) in self.searched.items():
            if kind == "choice":
                space[name] = tune.choice(args)
            elif kind == "grid":
                space[name] = tune.grid_search(args)
            else:
                space[name] = make[kind](*args)
        return space

    def max_epochs(self, base: TrainConfig) -> int:
        """The longest trial, in epochs: ASHA's max_t."""
        kind, args = self.searched.get("epochs", ("fixed", [base.train.epochs]))
        return int(max(args) - 1 if kind == "randint" else max(args))


def load_space(path: str) -> SearchSpace:
    """Read and check a space file; every mistake names the file and the key."""
    text = read_text(path, "search space file")
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"search space {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(values, dict):
        raise UsageError(f"search space {path}: expected a mapping of option names to values or ranges")
    check_options(TrainConfig, values, where=f"search space {path}")
    fixed: dict[str, Any] = {}
    searched: dict[str, tuple[str, list[Any]]] = {}
    for name, value in values.items():
        if not isinstance(value, dict):
            fixed[name] = value
            continue
        if name in NOT_SEARCHABLE:
            raise UsageError(f"search space {path}: {name!r} cannot be searched (it names the run, not the recipe)")
        if len(value) != 1 or next(iter(value)) not in SPACE_KINDS:
            raise UsageError(f"search space {path}: {name!r} must be a value or one of {{{' | '.join(SPACE_KINDS)}: [...]}}, got {value!r}")
        kind, args = next(iter(value.items()))
        if not isinstance(args, list) or not args:
            raise UsageError(f"search space {path}: {name}.{kind} needs a non-empty list")
        if kind in ("loguniform", "uniform", "randint"):
            if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or not args[0] < args[1]:
                raise UsageError(f"search space {path}: {name}.{kind} needs [low, high] numbers with low < high, got {args!r}")
            if kind == "loguniform" and args[0] <= 0:
                raise UsageError(f"search space {path}: {name}.loguniform needs a positive low end, got {args[0]!r}")
        searched[name] = (kind, list(args))
    return SearchSpace(path, fixed, searched)


def trial_label(trial_id: str) -> str:
    """A trial's name in console lines, the results table and its MLflow run's tag: one spelling, so they line up."""
    return f"trial-{trial_id}"


def trial_name(trial: Any) -> str:
    """Stable per trial (Tune's trial id: experiment tag + index), so restores and logs line up."""
    return trial_label(trial.trial_id)


def train_driver(
    params: dict[str, Any], base: dict[str, Any], trial_cpus: float, train_storage: str, tune_name: str,
    parent: dict[str, str] | None = None, tracking_env: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """One trial: the base config with this trial's sampled values, trained by a TorchTrainer that reports to Tune.
    Its MLflow run is a child of the search's (`parent`); `tracking_env` carries the driver's MLflow credentials,
    which a trial's process does not inherit."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ynat_ray.train import make_trainer, prepare_run

    os.environ.update(tracking_env or {})
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = TrainConfig.of(**{**base, **params, "run_name": f"{tune_name}-{trial_id}", "storage_path": train_storage})
    parent_run = TrackedRun(**parent) if parent else None
    run = prepare_run(cfg, cluster_cpus=trial_cpus, parent=parent_run, tags={TRIAL_TAG: trial_label(trial_id)})
    with run_scope(run.tracking):  # a trial ASHA stops never gets here: the search's end closes its run (KILLED)
        result = make_trainer(run, callbacks=[TuneReportCallback()]).fit()
        if result.error:
            raise result.error


class TrialLines(Callback):
    """Tune callback: one console line per trial epoch, and one when a trial ends (finished or stopped by ASHA)."""

    def __init__(self, searched: list[str], epochs_of: Any) -> None:
        self.searched, self.epochs_of = searched, epochs_of
        self.started = time.perf_counter()

    def _params(self, trial: Any) -> str:
        return " ".join(f"{k}={_fmt(trial.config.get(k))}" for k in self.searched)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"[ynat-ray] {trial_name(trial)} started: {self._params(trial)}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if METRIC in result:
            print(
                f"[ynat-ray] {trial_name(trial)} epoch {result.get('epoch')}/{self.epochs_of(trial)}: val macro-F1 "
                f"{result[METRIC]:.4f} val_loss {result.get('val_loss', float('nan')):.4f} "
                f"({time.perf_counter() - self.started:.0f} s into the search)",
                flush=True,
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = (trial.last_result or {}).get("epoch", 0)
        how = "finished" if done >= self.epochs_of(trial) else f"stopped early by ASHA after epoch {done}"
        print(f"[ynat-ray] {trial_name(trial)} {how}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"[ynat-ray] {trial_name(trial)} failed (see {trial.local_path})", flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


@dataclass
class TuneOutcome:
    name: str
    path: str
    table: list[dict[str, Any]]
    best: dict[str, Any]
    best_yaml: str
    csv_path: str
    plot_path: str


def check_scheduler(grace_period: int, reduction_factor: float, max_epochs: int) -> None:
    """ASHA's own checks are bare asserts (a traceback after Ray has started); say what to change instead."""
    if not 1 <= grace_period <= max_epochs:
        raise UsageError(f"--grace_period {grace_period} must be between 1 and the trials' most epochs ({max_epochs})")
    if reduction_factor <= 1:
        raise UsageError(f"--reduction_factor {reduction_factor:g} must be greater than 1")


def run_tune(cfg: TuneConfig, space: SearchSpace) -> TuneOutcome:
    """Run the search; write results.csv, trials.png and best.yaml; print the table; track it in MLflow."""
    import ray
    from ray import tune

    from ynat_ray.cluster import init_ray
    from ynat_ray.distill import check_teacher
    from ynat_ray.resources import trial_concurrency
    from ynat_ray.tracking import worker_env

    search, args = cfg.tune, cfg.train
    recipe = cfg.trial().with_recipe()  # the epochs a trial runs when the space does not search them
    max_t = space.max_epochs(recipe)
    check_scheduler(search.grace_period, search.reduction_factor, max_t)
    check_teacher(cfg.distill)  # every trial's teacher (a searched one is checked when its trial starts)
    init_ray(verbose=args.verbose)
    cpus, gpus = ray.cluster_resources().get("CPU", 1.0), ray.cluster_resources().get("GPU", 0.0)
    concurrency = trial_concurrency(cpus, gpus, args.num_workers, args.cpus_per_worker, args.use_gpu, search.max_concurrent_trials)
    trial_cpus = cpus / concurrency - TRIAL_DRIVER_CPUS
    name = args.run_name or unique_run_name(cfg.model.model, "tune")
    storage = args.resolved_storage_path()
    path = f"{storage}/{name}"  # the search's folder (a local absolute path or a URI: '/' joins both)
    parent = start_search_run(cfg, space, name, storage)
    # Concurrent trials' bars would interleave (each epoch prints a line); trials log to the search's store, resolved here.
    base = cfg.trial().flat() | {"progress_bar": False, "tracking_uri": parent.uri if parent else "none"}
    print(
        f"[ynat-ray] tune {name}: {search.num_samples} sample(s) of {len(space.searched)} searched option(s) from {space.path}; "
        f"{concurrency} trial(s) at a time, {trial_cpus:g} CPU each; ASHA on {METRIC} (grace {search.grace_period} epoch(s), "
        f"reduction {search.reduction_factor}, max {max_t} epochs)",
        flush=True,
    )
    trainable = tune.with_parameters(
        train_driver, base=base, trial_cpus=trial_cpus, train_storage=f"{path}/train_runs", tune_name=name,
        parent=parent.to_json() if parent else None, tracking_env=worker_env(),
    )  # fmt: skip
    # The trial driver only builds a TorchTrainer; the trainer's workers and Ray Data ask for their own CPUs (planned
    # inside `trial_cpus`), so the driver holds a sliver (Tune refuses an empty request) and concurrency is explicit.
    trainable = tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPUS})

    def epochs_of(trial: Any) -> int:
        return int(trial.config.get("epochs") or recipe.train.epochs)

    with run_scope(parent):
        started = time.perf_counter()
        grid = make_tuner(trainable, cfg, space, name, max_t, concurrency, epochs_of).fit()
        print(f"[ynat-ray] search finished in {time.perf_counter() - started:.0f} s", flush=True)
        return write_outcome(cfg.trial(), space, grid, name, path, search.out, parent)


def make_tuner(trainable: Any, cfg: TuneConfig, space: SearchSpace, name: str, max_t: int, concurrency: int, epochs_of: Any) -> Any:
    """The Tuner: ASHA on validation macro-F1 over the space, trials named `trial-<id>`, one console line per epoch."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    search = cfg.tune
    asha = ASHAScheduler(
        time_attr="training_iteration", max_t=max_t, grace_period=search.grace_period, reduction_factor=search.reduction_factor
    )
    tune_config = tune.TuneConfig(
        metric=METRIC, mode="max", scheduler=asha, num_samples=search.num_samples, max_concurrent_trials=concurrency,
        trial_name_creator=trial_name, trial_dirname_creator=trial_name,
    )  # fmt: skip
    run_config = tune.RunConfig(
        name=name, storage_path=cfg.train.resolved_storage_path(), callbacks=[TrialLines(list(space.searched), epochs_of)], verbose=0,
        failure_config=tune.FailureConfig(max_failures=search.trial_failures),  # trial level; worker level: --max_failures
    )  # fmt: skip
    return tune.Tuner(trainable, param_space=space.param_space(), tune_config=tune_config, run_config=run_config)


def start_search_run(cfg: TuneConfig, space: SearchSpace, name: str, storage: str) -> TrackedRun | None:
    """The search's MLflow run (the parent of every trial's run): the options every trial shares and the searched
    ranges as params (`search.<option>`), the space file as an artifact. None when tracking is off."""
    from ynat_ray.tracking import attach_text, flat_params, start_run

    options = flat_params({"tune": asdict(cfg.tune), **cfg.run_spec_config()})
    shared = {k: v for k, v in options.items() if k.split(".")[-1] not in space.searched}
    searched = {f"search.{k}": f"{kind} {args}" for k, (kind, args) in space.searched.items()}
    parent = start_run(cfg.train.tracking_uri, storage, name, shared | searched, tags={"ynat.kind": "tune"})
    attach_text(parent, read_text(space.path, "search space file"), "search_space.yaml")
    return parent


def trial_table(grid: Any, searched: list[str], epochs_default: int) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """One row per trial (best epoch by validation macro-F1) and each trial's per-epoch history."""
    rows, curves = [], {}
    for result in grid:
        history = [] if result.metrics_dataframe is None else result.metrics_dataframe.to_dict("records")
        history = [h for h in history if isinstance(h.get(METRIC), (int, float)) and not math.isnan(h[METRIC])]
        name = trial_label(result.metrics.get("trial_id", "?") if result.metrics else "?")
        config = result.config or {}
        epochs = int(config.get("epochs", epochs_default))
        best = max(history, key=lambda h: h[METRIC]) if history else {}
        curves[name] = history
        rows.append(
            {
                "trial": name,
                **{k: config.get(k) for k in searched},
                "epochs_run": len(history),
                "status": "error" if result.error else ("finished" if len(history) >= epochs else "stopped early (ASHA)"),
                "best_epoch": best.get("epoch"),
                METRIC: best.get(METRIC),
                "val_accuracy": best.get("val_accuracy"),
                "val_loss": best.get("val_loss"),
                "time_s": round(sum(h.get("epoch_time_s", 0.0) for h in history), 1),
            }
        )
    rows.sort(key=lambda r: -1.0 if r[METRIC] is None else r[METRIC], reverse=True)
    return rows, curves


def write_outcome(
    cfg: TrainConfig, space: SearchSpace, grid: Any, name: str, path: str, out_dir: str | None, parent: TrackedRun | None = None
) -> TuneOutcome:
    """results.csv, trials.png and best.yaml in `out_dir` (default: the search's folder, local or URI), and the printed
    table; the three files and each trial's end also go to the search's MLflow run (`parent`)."""
    out = out_dir or path
    if not is_uri(out):
        return _write_outcome(cfg, space, grid, name, path, out, out, parent)
    with tempfile.TemporaryDirectory(prefix="ynat-tune-") as tmp:  # written here, uploaded beside the search's trials
        outcome = _write_outcome(cfg, space, grid, name, path, tmp, out, parent)
        import pyarrow.fs

        pyarrow.fs.copy_files(tmp, out)
    return outcome


def _write_outcome(
    cfg: TrainConfig, space: SearchSpace, grid: Any, name: str, path: str, local: str, out: str, parent: TrackedRun | None
) -> TuneOutcome:
    """Write the three files into the local folder `local`; paths printed and returned are under `out`."""
    from ynat_ray.artifacts import plot_trials
    from ynat_ray.tracking import close_search

    searched = list(space.searched)
    table, curves = trial_table(grid, searched, cfg.with_recipe().train.epochs)
    os.makedirs(local, exist_ok=True)
    with open(os.path.join(local, "results.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]) if table else ["trial"])
        writer.writeheader()
        writer.writerows(table)
    plot_trials(table, curves, os.path.join(local, "trials.png"), METRIC)
    scored = [r for r in table if r[METRIC] is not None]
    if not scored:
        raise RuntimeError(f"no trial of {name} reported {METRIC}; see the trial logs under {path}")
    best = scored[0]
    write_best_yaml(os.path.join(local, "best.yaml"), cfg, space, best, name)
    close_search(parent, table, [os.path.join(local, f) for f in ("best.yaml", "results.csv", "trials.png")], METRIC)
    csv_path, plot_path, best_yaml = (f"{out.rstrip('/')}/{f}" for f in ("results.csv", "trials.png", "best.yaml"))
    print(format_table(table, searched))
    print(f"[ynat-ray] best {best['trial']}: {METRIC} {best[METRIC]:.4f} at epoch {best['best_epoch']}")
    print(f"[ynat-ray] wrote {csv_path}, {plot_path} and {best_yaml}  (ynat-ray train --config {best_yaml})", flush=True)
    if parent is not None:
        print(f"[ynat-ray] MLflow: the search and its {len(table)} trial run(s): {parent.where()}", flush=True)
    return TuneOutcome(name, path, table, best, best_yaml, csv_path, plot_path)


def write_best_yaml(path: str, cfg: TrainConfig, space: SearchSpace, best: dict[str, Any], name: str) -> None:
    """Every option the search fixed (space file and command line, where not the default) plus the winner's
    searched values: a plain training config that `ynat-ray train --config` runs as the trial ran."""
    defaults = TrainConfig().flat()
    values = {k: v for k, v in cfg.flat().items() if v != defaults[k] and k not in ("run_name", "progress_bar")}
    values.update(space.fixed)
    for key in space.searched:
        value = best[key]
        values[key] = float(f"{value:.4g}") if isinstance(value, float) else value
    TrainConfig.of(**values)  # what train will accept
    header = (
        f"# Best trial of `ynat-ray tune` run {name} ({best['trial']}): validation macro-F1 {best[METRIC]:.4f} "
        f"at epoch {best['best_epoch']}.\n# Search space: {space.path}\n"
    )
    Path(path).write_text(header + yaml.safe_dump(values, allow_unicode=True, sort_keys=False), encoding="utf-8")


def format_table(table: list[dict[str, Any]], searched: list[str]) -> str:
    """The results as a Markdown table (what docs/tuning.md quotes)."""
    cols = ["trial", *searched, "epochs_run", "status", "best_epoch", METRIC, "val_loss", "time_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table:
        cells = []
        for col in cols:
            value = row.get(col)
            cells.append("-" if value is None else (f"{value:.4f}" if col in (METRIC, "val_loss") else _fmt(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
