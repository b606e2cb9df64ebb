"""Score table: the Decision Transformer against behaviour cloning on every built-in dataset.

For each dataset (env x tier), method and seed, one run of the whole pipeline: the built-in
dataset (collected once, seed 0), ``dtray train`` with that env's shipped config
(``configs/<env>.yaml``, its ``train.max_steps`` is the budget unless ``--steps`` says
otherwise), then the actor-pool evaluation of the checkpoint ``dtray train`` picks, with
``--episodes`` episodes per target (default: the config's ``eval.episodes``). Methods differ only in the overrides below:

* ``dt``: the config as shipped; evaluated at the auto targets (0.1/0.5/0.9 quantiles of the
  dataset's returns, its max, and one beyond);
* ``bc``: the same network, trained on the same data, with the return hidden from it
  (``model.return_conditioned=false``): plain behaviour cloning, acting with its mean or
  most likely action (its best case); one target, since it ignores it;
* ``pi``: the DT with a return head (``model.return_head=true``), given no target: R̂ drawn
  from p(R | history, s_t) * exp(R / alpha) at the auto temperatures (``--methods pi``; not
  in the default set). Its "targets" are the alphas, its Spearman is between -alpha and the
  return achieved (does a colder tilt give more?). The same checkpoint is also evaluated at
  the auto targets (``auto_score``), so that choosing R̂ by the path integral is compared with
  the best hand-set target of the very same model; ``auto_score_in_data`` is the best of those
  at or below the dataset's best return, the most a tilt over the data's returns can ask.

``--acting`` evaluates each trained DT (and path-integral) checkpoint once per way of acting
(``greedy``, ``T0.8``: sampled at temperature 0.8, ``T1p0.9``: at temperature 1 within the
top-p 0.9 nucleus): the checkpoint is chosen by validation loss, not by how it acts, so one
training serves every way, a row each. Behaviour cloning always acts greedily.
``--choose-acting`` adds one row per DT run whose way is chosen among those it names, on the
same grid with the seed held out (``dtray evaluate --choose-acting``: the best return among the
ways with Spearman >= 0.9, else the best return), then scored on the run's own seed: a way of
acting picked on the very episodes it is scored on would be fitted to their noise.

Each finished run is appended to ``<out>/quality_runs.csv`` (a rerun skips the runs it holds,
so a long table can be stopped and continued), and the report is rebuilt from that file: a
markdown table (mean ± sample std over seeds; for path-integral runs, a second one of the
return at each alpha) written between the markers in
``docs/results.md`` (or to ``<out>/results.md``), and ``<out>/scores.png``.

Per dataset, action head, way of acting (greedy, or sampled at a temperature and top-p)
and method: the normalised score at the best target, Spearman's rank correlation between
the targets inside the dataset's return range and the mean returns achieved there
(calibration; undefined when either side is constant), the least-squares slope of those
returns on those targets (how much of a step in the target reaches the return: 1 one for one,
0 ignored; Spearman alone cannot tell a policy that ignores the target from one that follows
it up to a tie), and the dataset's own mean and max normalised return.

    python benchmarks/bench_quality.py                       # every dataset, 3 seeds (hours on 2 cores)
    python benchmarks/bench_quality.py --datasets pendulum-medium-expert --seeds 0 1 2
    python benchmarks/bench_quality.py --report              # rebuild the report from the runs file
    python benchmarks/bench_quality.py --quick --out /tmp/q  # one tiny dataset, one seed (the test suite)
    python benchmarks/bench_quality.py model.policy=binned --datasets lunarlander-medium-replay  # overrides first
    python benchmarks/bench_quality.py model.policy=binned --acting greedy T0.5p0.9 T1p0.9 --datasets reacher-medium
    python benchmarks/bench_quality.py --choose-acting greedy T0.5 T0.5p0.9 T1p0.9 T1 --datasets lunarlander-medium-replay
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from dtray import config as cfg
from dtray.checkpoint import read_meta
from dtray.cli import connect
from dtray.collect import TIERS, collect, list_datasets, parse_name
from dtray.describe import episode_returns
from dtray.config import ActionSampling
from dtray.errors import DtrayError
from dtray.evaluate import (best_targets, calibration, choose_acting, evaluate_checkpoints, rank_correlation,
                            target_slope, targets_in_data)
from dtray.train import best_checkpoint, fit

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"dt": [], "bc": ["model.return_conditioned=false", "eval.deterministic=true"],
           "pi": ["model.return_head=true", "eval.targets=path-integral"]}
DEFAULT_METHODS = ["dt", "bc"]
CHOSEN = "chosen of "  # the acting label of a row whose way was chosen on held-out seeds
Way = tuple[ActionSampling, ...]  # () = the config's own way; several = choose among them
RUN_KEYS = ["dataset", "method", "seed", "steps", "policy", "acting", "episodes"]  # policy: the action head
TABLE_START, TABLE_END = "<!-- score-table:start -->", "<!-- score-table:end -->"
QUICK = {"dataset": "pendulum-medium-expert", "episodes": 40, "steps": 40,
         "overrides": ["train.warmup_steps=10", "train.checkpoint_every=40", "train.log_every=20",
                       "model.embed_dim=32", "model.n_layer=1"]}


def ensure_dataset(name: str, data_dir: Path, episodes: int | None = None) -> Path:
    path = data_dir / name
    if not path.exists():
        collect(name, path, seed=0, episodes=episodes)
    return path


def parse_ways(names: list[str]) -> tuple[ActionSampling, ...]:
    try:
        return tuple(ActionSampling.parse(name) for name in names)
    except DtrayError as err:
        raise SystemExit(f"bench_quality: {err}")


def ways_of_acting(method: str, args) -> list[Way]:
    """The ways each trained checkpoint of ``method`` is evaluated with: a way is the config's
    own (``()``), one way of acting, or several to choose from on held-out seeds. Behaviour
    cloning always acts greedily (its METHODS entry); the path integral has no targets to
    choose a way on."""
    if method == "bc":
        return [()]
    ways = [way for way in args.ways if method == "dt" or len(way) < 2]
    return ways or [()]


def run_config(dataset: str, path: Path, method: str, seed: int, args, storage: str = "runs",
               way: Way = ()) -> cfg.Config:
    """The env's shipped config, pointed at the dataset, with the method's, the user's and
    the way of acting (none when it chooses among several)."""
    env, _ = parse_name(dataset)
    overrides = [f"data.paths=[{path}]", f"train.seed={seed}", f"run.storage_path={storage}",
                 f"run.name={dataset}-{method}-seed{seed}", *METHODS[method], *args.overrides]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    config = cfg.load(ROOT / "configs" / f"{env}.yaml", overrides)
    return dataclasses.replace(config, eval=config.eval.with_sampling(way[0])) if len(way) == 1 else config


def run_key(dataset, method, seed, steps, policy, acting, episodes) -> tuple:
    """A run's identity in the runs file, whose integer columns may read back as floats."""
    return dataset, method, int(seed), int(steps), policy, acting, int(episodes)


def acting(config: cfg.Config, way: Way = ()) -> str:
    """How the policy picks its action when evaluated: ``greedy`` (its mean or most likely
    action) or sampled, at a temperature and nucleus, or chosen among several ways on
    held-out seeds. It moves both the score and the calibration, so runs that differ in it
    are rows of their own."""
    if len(way) > 1:
        return CHOSEN + ", ".join(candidate.name for candidate in way)
    sampling = config.eval.sampling
    if sampling.deterministic:
        return "greedy"
    return f"sampled T {sampling.temperature:g}" + (f" top-p {sampling.top_p:g}" if sampling.top_p < 1 else "")


def evaluate_run(checkpoint: str, config: cfg.Config, targets, episodes: int, seed: int, out: str) -> pd.DataFrame:
    """The evaluation summary of one checkpoint at ``targets`` (a list, "auto" or "path-integral")."""
    eval_config = dataclasses.replace(config.eval, episodes=episodes, seeds=[seed], out=out, targets=targets)
    return evaluate_checkpoints([checkpoint], eval_config, progress=False).summary


def run_once(dataset: str, path: Path, method: str, seed: int, episodes: int, ways: list[Way], args,
             storage: str) -> list[dict]:
    """Train once, then evaluate the checkpoint once per way of acting: a run (row) each."""
    configs = [run_config(dataset, path, method, seed, args, storage, way) for way in ways]
    info, _, returns, _ = episode_returns(str(path))
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # progress lines are not the point
        checkpoint = best_checkpoint(fit(configs[0])).path
    train_s = time.perf_counter() - start
    return [evaluate_once(dataset, method, seed, episodes, checkpoint, config, way, info, returns, train_s,
                          os.path.join(storage, f"eval-{i}")) for i, (config, way) in enumerate(zip(configs, ways))]


def evaluate_once(dataset: str, method: str, seed: int, episodes: int, checkpoint: str, config: cfg.Config,
                  way: Way, info, returns: np.ndarray, train_s: float, out: str) -> dict:
    start = time.perf_counter()
    label, chosen = acting(config, way), ""
    max_return = read_meta(checkpoint)[3].return_max  # the auto targets' own max
    with contextlib.redirect_stdout(io.StringIO()):  # the eval table is not the point
        if len(way) > 1:  # on this grid's targets and episodes, with its seed held out
            grid = dataclasses.replace(config.eval, episodes=episodes, seeds=[seed], out=out)
            sampling = choose_acting(checkpoint, list(way), grid, progress=False).sampling
            config = dataclasses.replace(config, eval=config.eval.with_sampling(sampling))
            chosen = sampling.name
        # behaviour cloning ignores the target: one is enough
        targets = config.eval.targets if config.model.return_conditioned else [float(returns.max())]
        summary = evaluate_run(checkpoint, config, targets, episodes, seed, os.path.join(out, "targets"))
        auto_score = auto_score_in_data = np.nan
        if method == "pi":  # the same model at the hand-set targets, for the comparison
            auto = evaluate_run(checkpoint, config, "auto", episodes, seed, os.path.join(out, "auto"))
            auto_score = float(best_targets(auto).iloc[0]["score_mean"])
            auto_score_in_data = float(best_targets(targets_in_data(auto, max_return)).iloc[0]["score_mean"])
    eval_s = time.perf_counter() - start
    best = best_targets(summary).iloc[0]
    if method == "pi":
        conditions, slope = summary["alpha"], np.nan
        rho = rank_correlation(-summary["alpha"].to_numpy(), summary["return_mean"].to_numpy())
    else:
        conditions, rho, slope = summary["target"], calibration(summary, max_return), target_slope(summary, max_return)
    return {
        "dataset": dataset, "method": method, "seed": seed, "steps": config.train.max_steps,
        "policy": config.model.policy, "acting": label, "chosen": chosen,
        "best_score": float(best["score_mean"]), "best_target": float(best["alpha" if method == "pi" else "target"]),
        "best_return": float(best["return_mean"]),
        "spearman": rho, "slope": slope, "auto_score": auto_score, "auto_score_in_data": auto_score_in_data,
        "targets": json.dumps([round(float(t), 3) for t in conditions]),
        "returns": json.dumps([round(float(r), 3) for r in summary["return_mean"]]),
        "data_mean_score": float(info.normalized_score(returns.mean())),
        "data_max_score": float(info.normalized_score(returns.max())),
        "train_s": train_s, "eval_s": eval_s, "episodes": episodes,
        "date": date.today().isoformat(), "commit": _commit(),
    }


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def write_csv(runs: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    runs.to_csv(tmp, index=False)
    os.replace(tmp, path)


# --- the report -------------------------------------------------------------------------


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, action head, acting, steps, episodes, method): mean and sample std over seeds."""
    # runs from before these columns have none
    runs = runs.assign(**{column: runs.get(column, np.nan) for column in ("auto_score_in_data", "slope")})
    grouped = runs.groupby(["dataset", "policy", "acting", "steps", "episodes", "method"], sort=False)
    table = grouped.agg(seeds=("seed", "nunique"), chosen=("chosen", lambda ways: "/".join(ways.dropna())),
                        score=("best_score", "mean"), score_std=("best_score", "std"),
                        auto=("auto_score", "mean"), auto_std=("auto_score", "std"),
                        auto_in=("auto_score_in_data", "mean"), auto_in_std=("auto_score_in_data", "std"),
                        spearman=("spearman", "mean"), spearman_std=("spearman", "std"),
                        slope=("slope", "mean"), slope_std=("slope", "std"),
                        data_mean=("data_mean_score", "mean"), data_max=("data_max_score", "mean"),
                        wall_s=("train_s", "mean"), eval_s=("eval_s", "mean")).reset_index()
    table["wall_s"] += table.pop("eval_s")
    return table.sort_values(["steps", "dataset", "policy", "acting", "episodes"], key=_dataset_rank)


def _dataset_rank(column: pd.Series) -> pd.Series:
    """A sort key: datasets in the built-in order (env, then tier), other columns as they are."""
    if column.name != "dataset":
        return column
    return column.map({name: i for i, name in enumerate(list_datasets())})


def _pm(row, field: str, digits: int = 1) -> str:
    """``field`` of a summary row as mean ± std over seeds; – where the row or its mean is missing."""
    mean, std = (getattr(row, field), getattr(row, f"{field}_std")) if row else (np.nan, np.nan)
    if np.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if np.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(table: pd.DataFrame) -> str:
    lines = []
    with_pi = "pi" in set(table["method"])
    for steps, rows in table.groupby("steps", sort=True):
        pi_header = ((" DT, path-integral (best alpha) | same model, best auto target | same model, best target "
                      "within the data | PI Spearman(-alpha) |", "---:|---:|---:|---:|") if with_pi else ("", ""))
        lines += [f"Budget: {steps:,} training steps per run.", "",
                  f"| dataset | head | acting | episodes | DT score | BC score |{pi_header[0]} DT Spearman "
                  f"| DT target slope | dataset mean / max | seeds | wall s (DT) |",
                  f"|---|---|---|---:|---:|---:|{pi_header[1]}---:|---:|---:|---:|---:|"]
        for (dataset, policy, how, episodes), group in rows.groupby(["dataset", "policy", "acting", "episodes"],
                                                                    sort=False):
            by = {row.method: row for row in group.itertuples()}
            dt, bc, pi = by.get("dt"), by.get("bc"), by.get("pi")
            ref = dt or bc or pi
            pi_cells = (f" {_pm(pi, 'score')} | {_pm(pi, 'auto')} | {_pm(pi, 'auto_in')} | {_pm(pi, 'spearman', 2)} |"
                        if with_pi else "")
            seeds = "/".join(str(by[m].seeds) for m in METHODS if m in by)
            how = f"{how} (chose {dt.chosen})" if dt and dt.chosen else how
            lines.append(
                f"| {dataset} | {policy} | {how} | {episodes:.0f} | {_pm(dt, 'score')} | {_pm(bc, 'score')} |"
                f"{pi_cells} {_pm(dt, 'spearman', 2)} | {_pm(dt, 'slope', 2)} | "
                f"{ref.data_mean:.1f} / {ref.data_max:.1f} | {seeds} | {dt.wall_s if dt else ref.wall_s:.0f} |")
        lines.append("")
    return "\n".join(lines)


def _figures(x: float, digits: int) -> str:
    """``x`` to ``digits`` significant figures (more left of the point), never in exponent notation."""
    if x == 0 or not np.isfinite(x):
        return f"{x:g}"
    return f"{x:,.{max(0, digits - 1 - int(np.floor(np.log10(abs(x)))))}f}"


def alpha_curves(runs: pd.DataFrame) -> str:
    """The path integral's return at each temperature, mean ± std over seeds, coldest first:
    does the score rise as alpha falls? Seeds share a row when their alphas are the same
    fractions of their own return range (the auto ones, or the same ``eval.alpha`` list; the
    runs file keeps three decimals, hence the grid in tenths of a decade)."""
    pi = runs[runs["method"] == "pi"]
    if pi.empty:
        return ""
    curves = []
    for run in pi.itertuples(index=False):
        alphas, returns = np.array(json.loads(run.targets)), np.array(json.loads(run.returns))
        order = np.argsort(alphas)
        curves.append({"dataset": run.dataset, "policy": run.policy, "acting": run.acting, "steps": run.steps,
                       "episodes": run.episodes, "grid": tuple(np.round(np.log10(alphas[order] / alphas.max()), 1)),
                       "alphas": alphas[order], "returns": returns[order]})
    lines = ["**The path integral's return at each temperature** (mean ± std over seeds; alpha in return units,",
             "averaged over seeds; coldest first):", "",
             "| dataset | head | acting | steps | episodes | seeds | alpha | return | Spearman(-alpha) of the mean |",
             "|---|---|---|---:|---:|---:|---|---|---:|"]
    keys = ["dataset", "policy", "acting", "steps", "episodes", "grid"]
    curves = pd.DataFrame(curves).sort_values("dataset", key=_dataset_rank, kind="stable")
    for (dataset, policy, how, steps, episodes, _), group in curves.groupby(keys, sort=False):
        alphas, returns = np.stack(group["alphas"]).mean(axis=0), np.stack(group["returns"])
        mean = returns.mean(axis=0)
        std = returns.std(axis=0, ddof=1) if len(returns) > 1 else np.full_like(mean, np.nan)
        cells = [_figures(m, 4) if np.isnan(s) else f"{_figures(m, 4)} ± {_figures(s, 2)}" for m, s in zip(mean, std)]
        lines.append(f"| {dataset} | {policy} | {how} | {steps:,.0f} | {episodes:.0f} | {len(group)} | "
                     f"{' / '.join(_figures(a, 3) for a in alphas)} | {' / '.join(cells)} | "
                     f"{rank_correlation(-alphas, mean):.2f} |")
    return "\n".join(lines + [""])


def plot(table: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    steps = table.groupby("steps")["seeds"].sum().idxmax()  # the budget of most runs; per row its most episodes
    rows = table[table["steps"] == steps].reset_index(drop=True)  # the index keeps the table's order
    rows = rows.sort_values("episodes").drop_duplicates(["dataset", "policy", "acting", "method"], keep="last").sort_index()
    variant = rows["policy"] + (", " + rows["acting"]).where(rows["acting"] != "greedy", "")
    rows = rows.assign(label=rows["dataset"].where(variant.groupby(rows["dataset"]).transform("nunique") == 1,
                                                   rows["dataset"] + " (" + variant + ")"))
    datasets = list(dict.fromkeys(rows["label"]))
    y = np.arange(len(datasets))  # one horizontal bar group per row: readable however many rows
    fig = Figure(figsize=(9.0, max(4.0, 0.3 * len(datasets) + 1.5)), layout="constrained")
    ax = fig.subplots()
    methods = list(dict.fromkeys(rows["method"]))
    height = 0.8 / len(methods)
    for i, method in enumerate(methods):
        part = rows[rows["method"] == method].set_index("label").reindex(datasets)
        ax.barh(y + (i - (len(methods) - 1) / 2) * height, part["score"], height, xerr=part["score_std"].fillna(0),
                capsize=2, label=method.upper())
    data = rows.drop_duplicates("label").set_index("label").reindex(datasets)
    ax.scatter(data["data_mean"], y, marker="|", s=120, color="black", zorder=3, label="dataset mean")
    ax.axvline(100, color="0.4", lw=0.8, ls="--")
    ax.set_yticks(y, datasets, fontsize="small")
    ax.invert_yaxis()
    ax.set(xlabel="score at best target (mean ± std)",
           title=f"dtray score table ({steps:,} steps per run)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, format="png", dpi=100)


def write_report(runs: pd.DataFrame, out: Path, doc: Path | None) -> None:
    table = summarise(runs)
    text = "\n".join([markdown(table), alpha_curves(runs)])
    plot(table, out / "scores.png")
    if doc is not None and doc.exists() and TABLE_START in doc.read_text():
        before, rest = doc.read_text().split(TABLE_START, 1)
        after = rest.split(TABLE_END, 1)[1]
        doc.write_text(f"{before}{TABLE_START}\n{text}\n{TABLE_END}{after}")
    else:
        (out / "results.md").write_text(text)
    print(text)


# --- entry ------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=None, choices=list_datasets(), metavar="DATASET",
                        help="built-in datasets (e.g. lunarlander-medium-replay); default: every one")
    parser.add_argument("--tiers", nargs="+", default=list(TIERS), choices=TIERS)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="training steps; default: the env config's")
    parser.add_argument("--episodes", type=int, default=None,
                        help="evaluation episodes per target; default: the config's eval.episodes")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md",
                        help="markdown file whose score-table markers receive the table")
    parser.add_argument("--report", action="store_true", help="only rebuild the report from the runs file")
    parser.add_argument("--quick", action="store_true", help="one tiny dataset, one seed, few steps")
    parser.add_argument("--acting", nargs="+", default=[], metavar="WAY",
                        help="evaluate each trained DT once per way: greedy, T<temperature>[p<top_p>] "
                             "(e.g. greedy T1p0.9); default: the config's eval settings")
    parser.add_argument("--choose-acting", nargs="+", default=[], metavar="WAY",
                        help="one more row per DT: the way among these with the best return of those that "
                             "follow the target, chosen on held-out seeds (dtray evaluate --choose-acting)")
    parser.add_argument("--address", default="local")
    parser.add_argument("overrides", nargs="*", help="section.key=value for every run")
    args = parser.parse_args(argv)
    args.ways = [(way,) for way in parse_ways(args.acting)]  # bad input fails here, before Ray starts
    if args.choose_acting:
        args.ways.append(parse_ways(args.choose_acting))
    if args.quick:
        args.datasets, args.seeds, args.steps, args.episodes = [QUICK["dataset"]], [0], QUICK["steps"], 2
        args.overrides = QUICK["overrides"] + args.overrides
        args.doc = None
    return args


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs_file = args.out / "quality_runs.csv"
    runs = pd.read_csv(runs_file) if runs_file.exists() else pd.DataFrame(columns=RUN_KEYS)
    if not args.report:
        datasets = args.datasets or [d for d in list_datasets() if parse_name(d)[1] in args.tiers]
        connect(args.address)
        data_dir = args.data_dir if not args.quick else args.out / "data"
        done = {run_key(*row) for row in runs[RUN_KEYS].itertuples(index=False)}
        for dataset in datasets:
            path = ensure_dataset(dataset, data_dir, QUICK["episodes"] if args.quick else None)
            for seed in args.seeds:
                for method in args.methods:
                    ways = ways_of_acting(method, args)
                    configs = [run_config(dataset, path, method, seed, args, way=way) for way in ways]
                    episodes = args.episodes or configs[0].eval.episodes
                    ways = [way for way, config in zip(ways, configs) if run_key(
                        dataset, method, seed, config.train.max_steps, config.model.policy, acting(config, way),
                        episodes) not in done]
                    if not ways:
                        continue
                    storage = tempfile.mkdtemp(prefix="dtray-quality-")
                    try:
                        rows = run_once(dataset, path, method, seed, episodes, ways, args, storage)
                    finally:
                        shutil.rmtree(storage, ignore_errors=True)
                    for row in rows:
                        print(f"{dataset} {method} seed {seed} {row['acting']} {row['chosen']}: score {row['best_score']:.1f} at "
                              f"target {row['best_target']:.1f}, Spearman {row['spearman']:.2f}, "
                              f"{row['train_s']:.0f} s training, {row['eval_s']:.0f} s evaluation", flush=True)
                    runs = pd.concat([runs, pd.DataFrame(rows)], ignore_index=True)
                    write_csv(runs, runs_file)
    if len(runs):
        write_report(runs, args.out, args.doc)
    return runs


if __name__ == "__main__":
    main()
