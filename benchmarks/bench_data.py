"""Windows/s and peak memory: dtray's streaming Ray Data pipeline vs. an in-memory sampler.

The baseline is written like the original Decision Transformer's ``get_batch``: the whole
dataset in Python lists of numpy arrays, episodes picked with probability proportional to
their length, a random start, and a Python loop that pads each window.

Each measurement runs in a fresh subprocess; peak memory is the peak of the summed PSS of
that subprocess and all of its descendants (the Ray driver, GCS, raylet, workers and the
object store pages mapped into them), sampled every 0.1 s. The 10x dataset holds every file of
the 1x dataset ten times, with episode ids shifted per copy, so the same episodes ten times over.

Memory is measured twice: while windows are drawn as fast as possible (the windows/s rows),
and with a consumer paced like a trainer (``--pace`` windows/s), which lets the pipeline run
as far ahead as Ray Data allows; the last row shows Ray's own default look-ahead there.

    python benchmarks/bench_data.py [--dataset pendulum-medium-replay] [--episodes 5000] [--windows 200000] [--pace 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

BATCH = 64
K = 20


def tree_pss(pid: int) -> tuple[int, int]:
    """(summed PSS in bytes, process count) of a process and all its descendants.

    PSS splits shared pages (libraries, the object store's shared memory) among the
    processes that map them, so the many Ray workers are not counted many times over.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    total, count, stack = 0, 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            count += 1
        except (OSError, StopIteration):
            continue
    return total, count


STATS_DONE = "stats pass done"


def measure(mode: str, data: str, windows: int, data_memory_mb: int | None = None, pace: float = 0.0) -> dict:
    """Run one mode in a subprocess and sample its process tree's memory: the peak over the
    whole run, and for dtray also the peak while windows stream (after the statistics pass)."""
    command = [sys.executable, __file__, "--child", mode, "--data", data, "--windows", str(windows), "--pace", str(pace)]
    if data_memory_mb is not None:
        command += ["--data-memory-mb", str(data_memory_mb)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak, streaming_peak, processes, streaming = 0, 0, 0, False

    def sample():
        nonlocal peak, streaming_peak, processes
        while proc.poll() is None:
            pss, count = tree_pss(proc.pid)
            peak, processes = max(peak, pss), max(processes, count)
            if streaming:
                streaming_peak = max(streaming_peak, pss)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    lines = []
    for line in proc.stdout:
        streaming = streaming or line.strip() == STATS_DONE
        lines.append(line)
    proc.wait()
    sampler.join()
    reports = [line for line in lines if line.startswith("{")]
    if not reports:
        raise SystemExit(f"{mode} on {data} failed")
    if proc.returncode:  # Ray's teardown sometimes exits 1 once a background thread outlives ray.shutdown()
        print(f"note: {mode} on {data} exited {proc.returncode} after reporting", file=sys.stderr)
    result = json.loads(reports[-1])
    result["peak_mb"], result["processes"] = peak / 2**20, processes
    result["streaming_peak_mb"] = streaming_peak / 2**20 if streaming else float("nan")
    return result


def report(result: dict) -> None:
    """A child's result, one JSON line on stdout, sent before any teardown."""
    print(json.dumps(result), flush=True)


def in_memory_child(data: str, windows: int) -> None:
    """The original DT's sampler: load everything, then Python-loop over each window."""
    from dtray.format import read_episodes

    trajectories = [{"observations": e.observations, "actions": e.actions, "rewards": e.rewards}
                    for e in read_episodes(data)]
    images = trajectories[0]["observations"].ndim > 2  # frames stay uint8 and unnormalised, as in dtray
    if not images:
        states = np.concatenate([t["observations"] for t in trajectories])
        state_mean, state_std = states.mean(0), states.std(0) + 1e-6
    lengths = np.array([len(t["rewards"]) for t in trajectories])
    p_sample = lengths / lengths.sum()
    rng = np.random.default_rng(0)

    def discount_cumsum(x, gamma):
        out = np.zeros_like(x)
        out[-1] = x[-1]
        for t in reversed(range(x.shape[0] - 1)):
            out[t] = x[t] + gamma * out[t + 1]
        return out

    def get_batch(batch_size):
        idx = rng.choice(len(trajectories), size=batch_size, replace=True, p=p_sample)
        s, a, r, ts, m = [], [], [], [], []
        for i in idx:
            traj = trajectories[i]
            si = rng.integers(0, len(traj["rewards"]))
            obs, act = traj["observations"][si:si + K], traj["actions"][si:si + K]
            rtg = discount_cumsum(traj["rewards"][si:], 1.0)[: len(obs)] / 1000.0
            tlen = len(obs)
            pad = K - tlen
            obs = obs if images else ((obs - state_mean) / state_std).astype(np.float32)
            s.append(np.concatenate([np.zeros((pad, *obs.shape[1:]), obs.dtype), obs]))
            a.append(np.concatenate([np.zeros((pad, act.shape[1])), act]))
            r.append(np.concatenate([np.zeros(pad), rtg]))
            ts.append(np.concatenate([np.zeros(pad), np.arange(si, si + tlen)]))
            m.append(np.concatenate([np.zeros(pad), np.ones(tlen)]))
        return [np.stack(s)] + [np.stack(x).astype(np.float32) for x in (a, r, ts, m)]

    start = time.perf_counter()
    done = 0
    while done < windows:
        get_batch(BATCH)
        done += BATCH
    report({"windows_per_s": done / (time.perf_counter() - start)})


def streaming_child(data: str, windows: int, data_memory_mb: int | None, pace: float) -> None:
    """dtray's pipeline: statistics pass, then windows streamed into torch batches, taken as
    fast as they come or, with ``pace``, at that many windows/s (like a trainer)."""
    import ray

    from dtray.config import DataConfig
    from dtray.data import build_training_data

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="bench-data-"),
             logging_level="ERROR", log_to_driver=False)
    config = DataConfig(paths=[data], context_len=K, max_ep_len=1000, val_fraction=0.0)
    if data_memory_mb is not None:
        config.data_memory_mb = data_memory_mb
    stats_start = time.perf_counter()
    pipeline = build_training_data(config, seed=0)
    stats_s = time.perf_counter() - stats_start
    print(STATS_DONE, flush=True)
    start = time.perf_counter()
    done = 0
    batches = iter(pipeline.train.iter_torch_batches(batch_size=BATCH, local_shuffle_buffer_size=2048, drop_last=True))
    for batch in batches:
        done += len(batch["mask"])
        if done >= windows:
            break
        if pace:
            time.sleep(max(0.0, start + done / pace - time.perf_counter()))
    report({"windows_per_s": done / (time.perf_counter() - start), "stats_pass_s": stats_s})
    batches.close()  # stop the pipeline before Ray shuts down under it
    ray.shutdown()


def make_datasets(name: str, episodes: int, root: Path) -> tuple[str, str]:
    import ray

    from dtray.collect import collect

    one = root / "x1"
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="bench-collect-"),
             logging_level="ERROR", log_to_driver=False)
    collect(name, one, seed=0, episodes=episodes)
    ray.shutdown()
    ten = root / "x10"
    ten.mkdir()
    for copy in range(10):  # episode ids must stay unique (training refuses duplicates)
        for f in sorted(one.glob("*.parquet")):
            table = pq.read_table(f)
            ids = pc.add(table.column("episode_id"), copy * episodes)
            pq.write_table(table.set_column(table.schema.get_field_index("episode_id"), "episode_id", ids),
                           ten / f"c{copy}-{f.name}", compression="zstd")
    return str(one), str(ten)


def validation_cost(path: str, repeats: int = 5) -> dict[str, float]:
    """Seconds (median of ``repeats``) for the episode checks on the dataset's first file,
    against the statistics pass that runs them (once per run) and one epoch of window cutting
    of the same file (every epoch), both in process."""
    import pyarrow as pa

    from dtray import data
    from dtray.config import DataConfig
    from dtray.format import read_info

    info, file = read_info(path), sorted(Path(path).glob("*.parquet"))[0]
    table = pq.read_table(file)
    with_path = table.append_column(data.PATH_COLUMN, pa.array([str(file)] * table.num_rows))
    config = DataConfig(paths=[path], context_len=K)
    summary = data._summarise_episodes(with_path, info, config, seed=0)
    steps = summary["length"].sum()
    mean = summary["state_sum"].sum(0) / steps
    std = np.sqrt(np.maximum(summary["state_sumsq"].sum(0) / steps - mean ** 2, 1e-12))
    returns = summary["ret"]
    vector = len(info.obs_shape) == 1  # images are not normalised
    stats = data.NormStats(state_mean=tuple(mean) if vector else None, state_std=tuple(std) if vector else None,
                           train_episodes=len(returns),
                           train_steps=int(steps), val_episodes=0, val_steps=0, return_min=float(returns.min()),
                           return_max=float(returns.max()), return_mean=float(returns.mean()),
                           return_std=float(returns.std()), return_quantiles={}, log_z=0.0,
                           top_threshold=float(returns.min()))
    spec = data.WindowSpec.from_config(config, stats)

    def median_seconds(work) -> float:
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            seconds.append(time.perf_counter() - start)
        return float(np.median(seconds))

    return {"checks": median_seconds(lambda: data.check_episodes(str(file), table, info)),
            "stats_pass": median_seconds(lambda: data._summarise_episodes(with_path, info, config, seed=0)),
            "epoch_of_windows": median_seconds(lambda: sum(1 for _ in data._cut_windows(
                with_path, info, spec, config, stats, 0, "train", 1))),
            "steps": int(steps)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="pendulum-medium-replay", help="built-in dataset to stream (1x and 10x)")
    parser.add_argument("--episodes", type=int, default=5000, help="episodes of the 1x dataset")
    parser.add_argument("--windows", type=int, default=200_000, help="windows drawn per measurement")
    parser.add_argument("--pace", type=float, default=5000.0, help="windows/s of the trainer-paced rows")
    parser.add_argument("--child", choices=["in_memory", "streaming"])
    parser.add_argument("--data")
    parser.add_argument("--data-memory-mb", type=int, help="data.data_memory_mb (default: DataConfig's)")
    parser.add_argument("--validation-only", action="store_true", help="only the cost of the episode checks")
    args = parser.parse_args()
    if args.child:
        if args.child == "in_memory":
            in_memory_child(args.data, args.windows)
        else:
            streaming_child(args.data, args.windows, args.data_memory_mb, args.pace)
        return
    from dtray.config import DataConfig
    from dtray.describe import episode_returns

    streaming = f"dtray Ray Data streaming, data_memory_mb={DataConfig().data_memory_mb}"
    paced = f"{args.pace:,.0f}/s"
    with tempfile.TemporaryDirectory(prefix="bench-data-") as root:
        one, ten = make_datasets(args.dataset, args.episodes, Path(root))
        cost = validation_cost(one)
        print(f"episode checks on one file ({cost['steps']:,} steps): {1e3 * cost['checks']:.1f} ms = "
              f"{100 * cost['checks'] / cost['stats_pass']:.0f}% of its statistics pass "
              f"({1e3 * cost['stats_pass']:.0f} ms, once per run), "
              f"{100 * cost['checks'] / cost['epoch_of_windows']:.1f}% of one epoch of its windows "
              f"({1e3 * cost['epoch_of_windows']:.0f} ms)", flush=True)
        if args.validation_only:
            return
        info, _, _, lengths = episode_returns(one)
        rows = [("in-memory get_batch (DT)", "1x", "fast", measure("in_memory", one, args.windows)),
                (streaming, "1x", "fast", measure("streaming", one, args.windows)),
                ("in-memory get_batch (DT)", "10x", "fast", measure("in_memory", ten, args.windows)),
                (streaming, "10x", "fast", measure("streaming", ten, args.windows)),
                (streaming, "1x", paced, measure("streaming", one, args.windows, pace=args.pace)),
                (streaming, "10x", paced, measure("streaming", ten, args.windows, pace=args.pace)),
                ("dtray, data_memory_mb=0 (Ray's default look-ahead)", "10x", paced,
                 measure("streaming", ten, args.windows, data_memory_mb=0, pace=args.pace))]
    base = rows[0][3]["windows_per_s"]
    steps = int(lengths.sum())
    print(f"\n{args.dataset} (observations {info.obs_shape} {info.observation_space.dtype}), {steps:,} steps (1x) / "
          f"{10 * steps:,} (10x), K={K}, batch {BATCH}, {args.windows:,} windows per row, 2 CPUs\n")
    print("| sampler | data | consumer | windows/s | vs in-memory 1x | peak memory, PSS (MB) "
          "| of it while streaming (MB) | processes |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, size, consumer, r in rows:
        print(f"| {name} | {size} | {consumer} | {r['windows_per_s']:,.0f} | {r['windows_per_s'] / base:.2f}x "
              f"| {r['peak_mb']:,.0f} | {r['streaming_peak_mb']:,.0f} | {r['processes']} |".replace("| nan |", "| – |"))


if __name__ == "__main__":
    main()
