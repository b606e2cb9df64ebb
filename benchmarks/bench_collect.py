"""Collection throughput of built-in datasets: env steps/s with 1 vs 2 Ray workers.

Starts its own local Ray (2 CPUs), warms the workers up, then collects the dataset once per
worker count (best of ``--repeats``: the host is shared, so the fastest run is the least
disturbed one); the wall time includes Ray scheduling, the 20 reference-score episodes and the
Parquet write. ``--all-defaults`` also collects every built-in dataset at its default size
and reports its size, time and returns (the numbers quoted in docs/data-format.md).

    python benchmarks/bench_collect.py [--dataset pendulum-medium-expert] [--episodes N] [--repeats 3] [--all-defaults]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import ray

from dtray.collect import collect, list_datasets
from dtray.describe import episode_returns


def timed_collect(name: str, out: Path, episodes: int | None, workers: int) -> dict:
    start = time.perf_counter()
    collect(name, out, episodes=episodes, num_workers=workers, overwrite=True)
    seconds = time.perf_counter() - start
    info, _, returns, lengths = episode_returns(str(out))
    return {"name": name, "workers": workers, "episodes": len(returns), "steps": int(lengths.sum()),
            "seconds": seconds, "mean_return": float(returns.mean()),
            "normalized": float(info.normalized_score(returns.mean())),
            "ref": (info.ref_min_score, info.ref_max_score)}


def throughput_table(name: str, episodes: int | None, workers: list[int], repeats: int, scratch: Path) -> str:
    rows = [min((timed_collect(name, scratch / f"{name}-{w}", episodes, w) for _ in range(repeats)),
                key=lambda row: row["seconds"])
            for w in workers]
    lines = [f"### {name}: {rows[0]['episodes']} episodes, {rows[0]['steps']} env steps",
             "", "| workers | wall s | env steps/s | speed-up |", "|---|---|---|---|"]
    for row in rows:
        rate = row["steps"] / row["seconds"]
        speedup = rows[0]["seconds"] / row["seconds"]
        lines.append(f"| {row['workers']} | {row['seconds']:.2f} | {rate:,.0f} | {speedup:.2f}x |")
    return "\n".join(lines)


def defaults_table(workers: int, scratch: Path) -> str:
    lines = ["### every built-in dataset at its default size", "",
             "| dataset | episodes | env steps | wall s | mean return | normalized | ref random / expert |",
             "|---|---|---|---|---|---|---|"]
    for name in list_datasets():
        row = timed_collect(name, scratch / name, None, workers)
        shutil.rmtree(scratch / name)
        low, high = row["ref"]
        lines.append(f"| {name} | {row['episodes']} | {row['steps']} | {row['seconds']:.1f} | "
                     f"{row['mean_return']:.1f} | {row['normalized']:.1f} | {low:.1f} / {high:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="pendulum-medium-expert")
    parser.add_argument("--episodes", type=int, default=None, help="default: the dataset's default size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all-defaults", action="store_true", help="also time every built-in dataset")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dtray-bench-") as tmp:
        scratch = Path(tmp)
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(scratch / "ray"),
                 configure_logging=False, log_to_driver=False)
        try:
            collect(args.dataset, scratch / "warm-up", episodes=2, num_workers=2)  # start both workers
            print(throughput_table(args.dataset, args.episodes, args.workers, args.repeats, scratch))
            if args.all_defaults:
                print()
                print(defaults_table(max(args.workers), scratch))
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
