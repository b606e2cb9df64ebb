"""GPU throughput in one run: the model step, `dtray train` end to end, and evaluation.

Needs a CUDA device: without one it says so and exits 0. ``--smoke`` runs every section on
the CPU with tiny sizes instead, to check the script itself. On the GPU machine
(../shared/notes/gpu.md): ``. .gpu/setup.sh && python3 benchmarks/bench_gpu.py``.

1. **Model step** (forward, masked MSE, backward, AdamW, clip; synthetic batch, K=20): Hugging
   Face's ``DecisionTransformerModel`` and dtray's, eager in fp32 and under bf16 autocast, and
   dtray compiled with CUDA graphs (``torch.compile(mode="reduce-overhead")``, what
   ``train.compile: auto`` does on GPUs). Median of ``--steps`` steps after warm-up.
2. **`dtray train` end to end** on the built-in pendulum-medium-expert (collected here), one
   GPU worker, d=128, 3 layers, K=20, at batch 64 and 1,024: samples/s and data_wait_frac of
   the last report (the first one holds compilation).
3. **Evaluation**: 10 targets x 100 Pendulum episodes on GPU actors (a d=128, K=20 policy):
   episodes/s; and the fp32 GPU returns of the first two targets against the CPU path's for
   the same env seeds.

    python benchmarks/bench_gpu.py [--sections step train eval] [--steps 50] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import dtray_model, hf_model, make_batch  # noqa: E402 - the same models and batch as on CPU

from dtray import checkpoint  # noqa: E402
from dtray import config as cfg  # noqa: E402
from dtray.config import Config, EvalConfig  # noqa: E402
from dtray.data import WindowSpec  # noqa: E402
from dtray.format import DatasetInfo  # noqa: E402
from dtray.policy import DTPolicy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEP_CASES = [("d=128, 3 layers, 1 head", (128, 3, 1), 64), ("d=128, 3 layers, 1 head", (128, 3, 1), 1024),
              ("d=512, 6 layers, 8 heads", (512, 6, 8), 256)]
SMOKE_STEP_CASES = [("d=32, 1 layer, 1 head", (32, 1, 1), 8)]
TRAIN_OVERRIDES = ["model.embed_dim=128", "data.context_len=20", "train.log_every=250", "data.prefetch_batches=4",
                   "run.use_gpu=true", "run.torch_threads=0"]
EVAL_TARGETS = [float(t) for t in np.linspace(-1500.0, -150.0, 10)]


def step_runner(builder, size, batch_size: int, device: torch.device, bf16: bool, compiled: bool):
    """A closure that runs one training step on ``device`` and waits for it."""
    torch.manual_seed(0)
    model, groups, loss_fn = builder(*size)
    model.to(device).train()
    optimizer = torch.optim.AdamW(groups, lr=1e-4, fused=True)
    batch = {key: value.to(device) for key, value in make_batch(batch=batch_size).items()}
    forward = torch.compile(loss_fn, mode="reduce-overhead" if device.type == "cuda" else None) if compiled else loss_fn
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = forward(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def model_step_table(device: torch.device, cases, steps: int) -> list[str]:
    variants = {"HF fp32": (hf_model, False, False), "dtray fp32": (dtray_model, False, False),
                "HF bf16": (hf_model, True, False), "dtray bf16": (dtray_model, True, False),
                "dtray bf16, compiled (CUDA graphs)": (dtray_model, True, True)}
    lines = ["| model | batch | variant | samples/s | vs HF fp32 |", "|---|---:|---|---:|---:|"]
    for name, size, batch in cases:
        rates = {}
        for variant, (builder, bf16, compiled) in variants.items():
            step = step_runner(builder, size, batch, device, bf16, compiled)
            for _ in range(max(3, steps // 5)):  # warm-up (and compilation)
                step()
            seconds = []
            for _ in range(steps):
                start = time.perf_counter()
                step()
                seconds.append(time.perf_counter() - start)
            rates[variant] = batch / statistics.median(seconds)
            lines.append(f"| {name} | {batch:,} | {variant} | {rates[variant]:,.0f} | "
                         f"{rates[variant] / rates['HF fp32']:.2f}x |")
            print(lines[-1], flush=True)
    return lines


def train_table(dataset: Path, storage: str, batches: list[int], steps: int, extra: list[str]) -> list[str]:
    from dtray.train import fit

    lines = ["| batch | steps | samples/s (last report) | data_wait_frac | wall s |", "|---:|---:|---:|---:|---:|"]
    for batch in batches:
        config = cfg.load(ROOT / "configs" / "pendulum.yaml", [
            f"data.paths=[{dataset}]", f"train.batch_size={batch}", f"train.max_steps={steps}",
            f"train.checkpoint_every={steps // 2}", f"run.storage_path={storage}", f"run.name=batch{batch}",
            *TRAIN_OVERRIDES, *extra])
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            metrics = fit(config).metrics
        lines.append(f"| {batch:,} | {steps:,} | {metrics['samples_per_s']:,.0f} | {metrics['data_wait_frac']:.1%} "
                     f"| {time.perf_counter() - start:.0f} |")
        print(lines[-1], flush=True)
    return lines


def eval_policy(device: str, amp: str, embed_dim: int = 128, context_len: int = 20) -> DTPolicy:
    """The same randomly initialised Decision Transformer in every process (seeded)."""
    torch.manual_seed(0)
    env = gym.make("Pendulum-v1")
    info = DatasetInfo("Pendulum-v1", env.observation_space, env.action_space)
    config = Config()
    config.model.embed_dim, config.data.context_len = embed_dim, context_len
    stats = SimpleNamespace(return_min=-1500.0, return_max=-150.0, return_quantiles={})
    model = checkpoint.build_model(config, info).eval().to(device)
    return DTPolicy(model, info, WindowSpec.from_config(config.data, None), stats, device, amp=amp)


def eval_table(device: str, episodes: int, actors: int, envs_per_actor: int, size: dict) -> list[str]:
    import ray

    from dtray.evaluate import evaluate_grid, evaluate_in_process

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors cannot import benchmarks/
    gpu_share = 1.0 / actors if device == "cuda" else 0.0
    lines = ["| policy on | amp | actors x envs | episodes | episodes/s |", "|---|---|---|---:|---:|"]
    grids = {}
    for amp in ("off", "auto"):
        config = EvalConfig(targets=EVAL_TARGETS, seeds=[0], episodes=episodes, num_actors=actors,
                            cpus_per_actor=1.0, gpus_per_actor=gpu_share, envs_per_actor=envs_per_actor)
        with contextlib.redirect_stdout(io.StringIO()):
            grids[amp] = evaluate_grid({"dt": functools.partial(eval_policy, device, amp, **size)}, config,
                                       tempfile.mkdtemp(prefix="bench-gpu-eval-"), progress=False)
        rate = len(grids[amp].episodes) / grids[amp].seconds
        lines.append(f"| {device} | {amp} | {actors} x {envs_per_actor} | {len(grids[amp].episodes):,} | {rate:,.1f} |")
        print(lines[-1], flush=True)
    rows, n = grids["off"].episodes, min(5, episodes)
    check = rows[rows["target"].isin(EVAL_TARGETS[:2]) & (rows["episode"] < n)]
    cpu = [evaluate_in_process(eval_policy("cpu", "off", **size), [target], n, seed=0, num_envs=n)
           for target in EVAL_TARGETS[:2]]
    cpu_means = np.array([r["return"] for r in cpu])
    gpu_means = check.groupby("target", sort=True)["return"].mean().to_numpy()
    lines.append(f"\nfp32 {device} vs CPU, mean return of {n} episodes at the first two targets: "
                 f"{np.round(gpu_means, 3).tolist()} vs {np.round(cpu_means, 3).tolist()} "
                 f"(largest difference {np.abs(gpu_means - cpu_means).max():.4f})")
    print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["step", "train", "eval"], choices=["step", "train", "eval"])
    parser.add_argument("--steps", type=int, default=50, help="timed model steps per variant")
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="every section on the CPU, tiny sizes")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        print("bench_gpu: no CUDA device here, nothing to measure (--smoke checks the script on the CPU)")
        return 0
    device = torch.device("cpu" if args.smoke else "cuda")
    name = "CPU (smoke run)" if args.smoke else torch.cuda.get_device_name()
    print(f"# bench_gpu on {name}, torch {torch.__version__}, {os.cpu_count()} CPU cores\n", flush=True)
    out = []
    if "step" in args.sections:
        out += ["## Model step", ""] + model_step_table(device, SMOKE_STEP_CASES if args.smoke else STEP_CASES,
                                                        3 if args.smoke else args.steps) + [""]
    if "train" in args.sections or "eval" in args.sections:
        import ray

        from dtray.cli import connect

        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        cpus = os.cpu_count() or 2
        ray.init(num_cpus=cpus, num_gpus=0 if args.smoke else 1, include_dashboard=False,
                 _temp_dir=tempfile.mkdtemp(prefix="bench-gpu-"))
        connect()
        scratch = Path(tempfile.mkdtemp(prefix="bench-gpu-data-"))
    if "train" in args.sections:
        from dtray.collect import collect

        dataset = scratch / "pendulum-medium-expert"
        collect("pendulum-medium-expert", dataset, episodes=40 if args.smoke else None,
                num_workers=2 if args.smoke else min(8, cpus))
        smoke = ["run.use_gpu=false", "model.embed_dim=16", "train.log_every=10", "run.cpus_per_worker=0.5"]
        worker_cpus = [f"run.cpus_per_worker={min(8, max(1, cpus - 4))}"]
        out += ["## `dtray train` end to end", ""] + train_table(
            dataset, str(scratch / "runs"), [16] if args.smoke else [64, 1024], 20 if args.smoke else args.train_steps,
            smoke if args.smoke else worker_cpus) + [""]
    if "eval" in args.sections:
        size = {"embed_dim": 16, "context_len": 4} if args.smoke else {}
        out += ["## Evaluation", ""] + eval_table(device.type, 2 if args.smoke else 100, 2 if args.smoke else 4,
                                                  10 if args.smoke else 250, size)
    print("\n" + "\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
