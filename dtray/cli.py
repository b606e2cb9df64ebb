"""The ``dtray`` command: one entry point for every stage of the pipeline."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dtray.errors import DtrayError

if TYPE_CHECKING:
    from dtray.config import Config


def connect(address: str | None = None, verbose: bool = False) -> None:
    """Join the cluster this process runs on (``ray submit``/``ray job submit`` set it up,
    or RAY_ADDRESS names it); otherwise start a local one. ``--address local`` always
    starts a private local instance. Unless ``verbose``, Ray's INFO lines are off in this
    process and in every worker of the job (:func:`quiet_ray_logs`)."""
    import ray
    import ray.data  # configures Ray Data's loggers, which quiet_ray_logs then adjusts

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.INFO if verbose else logging.WARNING,
                 runtime_env=None if verbose else {"worker_process_setup_hook": quiet_ray_logs})
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()  # bars are not for logs
    if not verbose:
        quiet_ray_logs()


def quiet_ray_logs() -> None:
    """Ray's INFO lines (Train's reports and checkpoints, Ray Data's executions) off on the
    console of this process, and the notice that progress bars are off; warnings and errors
    stay, and Ray Data's log file keeps everything. Runs as Ray's worker_process_setup_hook
    in every worker of the job."""
    import ray.data  # noqa: F401 - its loggers are set up on import: after that, levels stay

    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setLevel(logging.WARNING)
                handler.addFilter(lambda record: not record.getMessage().startswith("Progress bars disabled"))


def _cmd_datasets(args) -> None:
    from dtray.collect import list_datasets

    print("\n".join(list_datasets()))


def _cmd_collect(args) -> None:
    from dtray.collect import collect

    connect(args.address, args.verbose)
    files = collect(args.name, args.out, seed=args.seed, episodes=args.episodes,
                    num_workers=args.workers, overwrite=args.overwrite)
    print(f"wrote {len(files)} file(s) to {args.out}")


def _cmd_convert(args) -> None:
    from dtray.convert import convert

    kwargs = {"env_id": args.env_id} if args.env_id else {}
    files = convert(args.source, args.out, overwrite=args.overwrite, **kwargs)
    print(f"wrote {len(files)} file(s) to {args.out}")


def _cmd_validate(args) -> None:
    from dtray.validate import validate

    info = validate(args.paths)
    print(f"ok: {info.env_id} dataset, all episodes valid")


def _cmd_inspect(args) -> None:
    from dtray.describe import describe

    print(describe(args.paths, alphas=args.alphas))


def _cmd_train(args) -> None:
    from dtray import config as cfg
    from dtray.train import best_checkpoint, fit, resume_config

    if args.resume:
        config = resume_config(args.resume, args.config, args.overrides)
    else:
        config = cfg.load(args.config, args.overrides)
    connect(args.address, args.verbose)
    result = fit(config, verbose=args.verbose)
    best = best_checkpoint(result)
    metrics = result.metrics or {}
    nan = float("nan")
    print(f"final step {metrics.get('step')}: loss {metrics.get('loss', nan):.4f}, val_loss "
          f"{metrics.get('val_loss', nan):.4f} (untrained model: {metrics.get('initial_val_loss', nan):.4f})")
    print(f"checkpoint: {best.path if best else None}")


def _cmd_demo(args) -> None:
    """The main job: built-in dataset -> Ray Train -> evaluation grid, on one machine."""
    from dtray import config as cfg
    from dtray.collect import collect
    from dtray.evaluate import evaluate_checkpoints
    from dtray.train import best_checkpoint, fit

    config = cfg.load(args.config, args.overrides)
    connect(args.address, args.verbose)
    dataset = Path(config.data.paths[0])
    if not dataset.exists():
        print(f"collecting {args.dataset} into {dataset} ...")
        collect(args.dataset, dataset, seed=config.train.seed)
    result = fit(config, verbose=args.verbose)
    best = best_checkpoint(result)
    print(f"checkpoint: {best.path}")
    evaluate_checkpoints([best.path], config.eval)


def evaluation_config(args) -> Config:
    """``--config`` if given, else the first checkpoint's run config, which says how its policy
    acts (e.g. CartPole's sampling temperature); then the overrides and the flags."""
    from dtray import config as cfg
    from dtray.checkpoint import read_meta

    if args.config:
        config = cfg.load(args.config, args.overrides)
    else:
        trained = read_meta(args.checkpoint[0])[0]
        config = cfg.from_dict(cfg.apply_overrides(trained.to_dict(), args.overrides), str(args.checkpoint[0]))
    for field in ("targets", "alpha", "envs", "seeds", "episodes", "num_actors", "out"):
        value = getattr(args, field)
        if value is not None:
            setattr(config.eval, field, value)
    return config


def _cmd_evaluate(args) -> None:
    from dtray.evaluate import choose_acting, evaluate_checkpoints
    from dtray.policy import load_policy

    config = evaluation_config(args)
    if args.choose_acting and len(args.checkpoint) > 1:
        raise DtrayError(f"--choose-acting chooses for one checkpoint at a time, got {len(args.checkpoint)}")
    for path in args.checkpoint:  # a broken checkpoint fails here, before a cluster starts
        load_policy(path)
    connect(args.address, args.verbose)
    if args.choose_acting:
        config.eval = config.eval.with_sampling(choose_acting(args.checkpoint[0], args.choose_acting,
                                                              config.eval).sampling)
    evaluate_checkpoints(args.checkpoint, config.eval)


def _cmd_tune(args) -> None:
    from dtray.tune import run_search

    connect(args.address, args.verbose)
    run_search(args.config, resume=args.resume, overrides=args.overrides)


def _targets(text: str):
    if text in ("auto", "pi", "path-integral"):
        return "path-integral" if text == "pi" else text
    return _numbers(text)


def _numbers(text: str):
    if text == "auto":
        return "auto"
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or numbers separated by commas, got {text!r}")


def _way(text: str):
    from dtray.config import ActionSampling

    try:
        return ActionSampling.parse(text)
    except DtrayError as err:
        raise argparse.ArgumentTypeError(str(err))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, handler, help_text, ray_cluster=False):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if ray_cluster:
            p.add_argument("--address", default=os.environ.get("DTRAY_RAY_ADDRESS"),
                           help="Ray address; default: the cluster this runs on, else a new local one; "
                                "'local' forces a new local instance")
            p.add_argument("--verbose", action="store_true", help="show Ray's INFO logs too")
        return p

    datasets = command("datasets", _cmd_datasets, "built-in datasets")
    datasets.add_argument("action", choices=["list"])

    p = command("collect", _cmd_collect, "generate a built-in dataset with Ray tasks", ray_cluster=True)
    p.add_argument("name")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")

    p = command("convert", _cmd_convert, "convert minari:<id> or steps:<path> to the episode format")
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--env-id", default=None, help="env id for step tables without dtray metadata")
    p.add_argument("--overwrite", action="store_true")

    p = command("validate", _cmd_validate, "check every episode of a dataset")
    p.add_argument("paths", nargs="+")

    p = command("inspect", _cmd_inspect, "summarise a dataset: returns, path-integral weights")
    p.add_argument("paths", nargs="+")
    p.add_argument("--alphas", type=float, nargs="+", default=None)

    for name, handler, text in (("demo", _cmd_demo, "main job: collect, train and evaluate on Pendulum"),
                                ("train", _cmd_train, "train a Decision Transformer with Ray Train"),
                                ("evaluate", _cmd_evaluate, "evaluate checkpoints over a target-return grid"),
                                ("tune", _cmd_tune, "run a Ray Tune search from tune_configs/")):
        p = command(name, handler, text, ray_cluster=True)
        p.add_argument("--config", default="configs/pendulum.yaml" if name == "demo" else None,
                       required=name == "tune",
                       help="default: the first checkpoint's run config" if name == "evaluate" else None)
        p.add_argument("overrides", nargs="*", help="section.key=value")
    evaluate = sub.choices["evaluate"]
    evaluate.add_argument("--checkpoint", nargs="+", required=True)
    evaluate.add_argument("--targets", type=_targets, default=None,
                          help="'auto', comma-separated returns, or 'pi': R̂ from the return head, tilted by exp(R/alpha)")
    evaluate.add_argument("--alpha", type=_numbers, default=None,
                          help="with --targets pi: 'auto' or comma-separated temperatures, in return units")
    evaluate.add_argument("--envs", nargs="+", default=None)
    evaluate.add_argument("--seeds", type=int, nargs="+", default=None)
    evaluate.add_argument("--episodes", type=int, default=None)
    evaluate.add_argument("--num-actors", type=int, default=None)
    evaluate.add_argument("--out", default=None)
    evaluate.add_argument("--choose-acting", nargs="+", type=_way, default=None, metavar="WAY",
                          help="first choose how the policy acts, among greedy, T<temperature>[p<top_p>] "
                               "(e.g. greedy T0.5 T1p0.9): the best return among the ways that follow the "
                               "target, on held-out seeds (each seed + 1000)")
    sub.choices["demo"].add_argument("--dataset", default="pendulum-medium-expert",
                                     help="built-in dataset collected when data.paths[0] is missing")
    sub.choices["tune"].add_argument("--resume", action="store_true", help="continue a stopped search")
    sub.choices["train"].add_argument("--resume", metavar="RUN_DIR", default=None,
                                      help="continue the run in RUN_DIR (e.g. after its driver died) from its "
                                           "latest checkpoint, with the config it started with")
    return parser


def user_error(err: BaseException) -> DtrayError | None:
    """Find a DtrayError behind Ray's wrappers (task errors, training failures). A task's
    error is also an instance of its cause's class, with the remote traceback as its text:
    the cause itself is the one-line message."""
    from ray.exceptions import RayError

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DtrayError) and not isinstance(err, RayError):
            return err
        cause = getattr(err, "cause", None)
        err = cause if isinstance(cause, BaseException) else (err.__cause__ or err.__context__)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except KeyboardInterrupt:
        print("dtray: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `dtray datasets list | head`
        sys.stderr.close()
        return 0
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        found = user_error(err)
        if found is None:
            raise
        print(f"dtray: error: {found}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
