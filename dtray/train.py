"""Distributed training with Ray Train: ``fit(config)`` on the driver, ``train_loop`` on workers.

The driver computes dataset statistics and builds lazy window datasets; each worker
streams its shard, trains a DDP replica, and rank 0 writes checkpoints that carry
everything needed to act (weights, config, window spec, dataset info and statistics).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from datetime import datetime
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from dtray import checkpoint
from dtray.config import Config, TrainConfig, differences, dumps, from_dict, load, loads
from dtray.data import NormStats, WindowSpec, build_training_data, execution_options
from dtray.errors import DtrayError
from dtray.format import DatasetInfo
from dtray.model import autocast


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up to the base lr, then constant or cosine decay to 10% at max_steps."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_state() -> dict[str, torch.Tensor]:
    """Torch's generators drive dropout and sampling; data order is seeded separately."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class LossModule(torch.nn.Module):
    """Model + loss in one forward, so that DDP sees the whole computation it must sync."""

    def __init__(self, model: torch.nn.Module, entropy_coef: float):
        super().__init__()
        self.model, self.entropy_coef = model, entropy_coef

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.model.loss(batch, entropy_coef=self.entropy_coef)


class Trainer:
    """One worker's training state and steps; rank 0 also writes checkpoints."""

    def __init__(self, config: Config, info: DatasetInfo, spec: WindowSpec, stats: NormStats):
        self.config, self.info, self.spec, self.stats = config, info, spec, stats
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        if config.run.torch_threads:
            torch.set_num_threads(config.run.torch_threads)
        torch.manual_seed(config.train.seed)  # identical init on every rank
        self.model = checkpoint.build_model(config, info, stats).to(self.device)
        tc = config.train
        self.optimizer = torch.optim.AdamW(
            self.model.optimizer_groups(tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas),
            fused=True)  # one kernel per step; at least as fast as foreach on CPU too
        self.clip_groups = self.model.clip_groups()  # clipped apart; the first is the action model's
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, tc))
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.resumed_from_step = 0
        resume_from = ray.train.get_checkpoint()
        if resume_from is not None:
            with resume_from.as_directory() as directory:
                self._restore(directory)
        else:
            torch.manual_seed(tc.seed + 1000 * self.rank)  # different dropout per rank
        self.loss_module = ray.train.torch.prepare_model(LossModule(self.model, tc.entropy_coef))
        if tc.compile == "on" or (tc.compile == "auto" and self.device.type == "cuda"):
            # the step's shapes never change (drop_last): on GPUs, CUDA graphs replay it without
            # launching each small kernel from Python, which bounds small models there
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self.loss_module = torch.compile(self.loss_module, mode=mode)
        # the untrained model's validation loss: the baseline that learning must beat
        self.initial_val_loss = self.validate().get("val_loss", float("nan")) if resume_from is None else None
        self.batch_size = max(1, tc.batch_size // self.world_size)

    def _restore(self, directory: str) -> None:
        checkpoint.load_weights(directory, self.model)
        state = checkpoint.load_train_state(directory)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        self.resumed_from_step = self.step
        _set_rng_state(state["rng"][self.rank % len(state["rng"])])

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Endless stream of training batches, epoch after epoch; resumes mid-epoch exactly
        by skipping the batches a restored run had already consumed."""
        shard = ray.train.get_dataset_shard("train")
        while True:
            seed = hash((self.config.train.seed, self.epoch, self.rank)) % (2**32)
            iterator = shard.iter_torch_batches(
                batch_size=self.batch_size, drop_last=True, device=self.device,
                prefetch_batches=self.config.data.prefetch_batches, pin_memory=self.device.type == "cuda",
                local_shuffle_buffer_size=self.config.data.shuffle_buffer or None,
                local_shuffle_seed=seed)
            for index, batch in enumerate(iterator):
                if index < self.batch_in_epoch:
                    continue
                self.batch_in_epoch = index + 1
                yield batch
            if self.batch_in_epoch == 0:
                raise DtrayError("an epoch produced no full batch: the dataset is smaller than one batch")
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimiser step; metrics stay on the device (reading them would make the host
        wait for the GPU every step), to be averaged and read once per report."""
        self.loss_module.train()
        with autocast(self.config.train.amp, self.device):
            loss, metrics = self.loss_module(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm, *_ = [torch.nn.utils.clip_grad_norm_(group, self.config.train.grad_clip) for group in self.clip_groups]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach(), **metrics}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Action loss on held-out episodes: a score that needs no environment. Every worker
        holds the whole (small, bounded) validation set, so all ranks agree without a collective."""
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, error*n, n
        for batch in ray.train.get_dataset_shard("val").iter_torch_batches(batch_size=256, device=self.device):
            with autocast(self.config.train.amp, self.device):
                loss, metrics = self.model.loss(batch, entropy_coef=0.0)
            n = batch["mask"].sum().double()
            totals += torch.stack([loss.double() * n, metrics["action_error"].double() * n, n])
        if totals[2] == 0:
            return {}
        return {"val_loss": (totals[0] / totals[2]).item(), "val_action_error": (totals[1] / totals[2]).item()}

    def evaluate_in_env(self) -> dict[str, float]:
        """A small rollout grid on rank 0 (others report NaN): asking for the dataset's best
        return or, with path-integral targets, at the lowest temperature of ``eval.alpha``."""
        if self.rank != 0:
            return {"eval_return": float("nan"), "eval_score": float("nan")}
        from dtray.evaluate import eval_alphas, evaluate_in_process
        from dtray.policy import DTPolicy

        config = self.config.eval
        policy = DTPolicy(self.model, self.info, self.spec, self.stats, self.device, amp=config.amp,
                          sampling=config.sampling)
        coldest = sorted(eval_alphas(config, "training", policy.return_stats))[:1]
        result = evaluate_in_process(policy, targets=[] if coldest else [self.stats.return_max],
                                     episodes=config.episodes, seed=self.config.train.seed, max_steps=config.max_steps,
                                     alphas=coldest, resample=config.resample_return)
        return {"eval_return": float(result["return"]), "eval_score": float(result["score"])}

    def train_state(self) -> dict[str, Any]:
        states = [_rng_state()]
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rng": states}

    def report(self, metrics: dict[str, float], with_checkpoint: bool) -> None:
        """Every rank reports (it is a barrier); only rank 0 attaches the checkpoint."""
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        state = self.train_state()
        with tempfile.TemporaryDirectory(prefix="dtray-ckpt-") as directory:
            ckpt = None
            if self.rank == 0:
                checkpoint.save(directory, self.model, self.config, self.info, self.spec, self.stats, state, metrics)
                ckpt = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"step-{self.step:08d}")


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    if not loop_config["verbose"]:  # Train logs each report's dict at INFO through the root logger
        logging.getLogger().setLevel(logging.WARNING)
    config = from_dict(loop_config["config"])
    trainer = Trainer(
        config,
        DatasetInfo.from_json(loop_config["info"]),
        WindowSpec.from_dict(loop_config["spec"]),
        NormStats.from_dict(loop_config["stats"]),
    )
    tc = config.train
    window = {"samples": 0, "wait": 0.0, "start": time.perf_counter(), "sums": {}, "count": 0}
    batches = trainer.batches()
    while trainer.step < tc.max_steps:
        fetch_start = time.perf_counter()
        batch = next(batches)
        window["wait"] += time.perf_counter() - fetch_start
        for key, value in trainer.train_step(batch).items():
            window["sums"][key] = window["sums"].get(key, 0.0) + value
        window["count"] += 1
        window["samples"] += trainer.batch_size * trainer.world_size
        step = trainer.step
        checkpoint_now = step % tc.checkpoint_every == 0 or step == tc.max_steps
        if not (checkpoint_now or step % tc.log_every == 0):
            continue
        elapsed = time.perf_counter() - window["start"]
        metrics = {k: (v / window["count"]).item() for k, v in window["sums"].items()}
        metrics.update(step=step, epoch=trainer.epoch, resumed_from_step=trainer.resumed_from_step, lr=trainer.scheduler.get_last_lr()[0],
                       samples_per_s=window["samples"] / elapsed, data_wait_frac=window["wait"] / elapsed)
        if checkpoint_now:
            metrics.update(trainer.validate())
            if trainer.initial_val_loss is not None:
                metrics["initial_val_loss"] = trainer.initial_val_loss
        if tc.eval_every and (step % tc.eval_every == 0 or step == tc.max_steps):
            metrics.update(trainer.evaluate_in_env())
        if trainer.rank == 0:  # one progress line per report on the driver's terminal (not print:
            # Ray Train routes print through its logger, which echoes each line twice)
            sys.stdout.write(progress_line(metrics, tc.max_steps) + "\n")
            sys.stdout.flush()
        trainer.report(metrics, with_checkpoint=checkpoint_now)
        window = {"samples": 0, "wait": 0.0, "start": time.perf_counter(), "sums": {}, "count": 0}


def progress_line(metrics: dict[str, float], max_steps: int) -> str:
    shown = ("loss", "val_loss", "eval_return", "samples_per_s")
    return f"step {metrics['step']}/{max_steps}: " + ", ".join(
        f"{key} {metrics[key]:.4g}" for key in shown if key in metrics)


def _storage_path(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


# --- resuming a run whose driver died -------------------------------------------------------

RUN_CONFIG = "dtray-run.yaml"  # the config a run started with, next to Ray Train's own state
RESUME_MAY_CHANGE = {"run.storage_path", "run.name", "run.max_failures", "run.num_to_keep"}


def _run_config_file(run_dir: str) -> tuple[pafs.FileSystem, str]:
    filesystem, path = pafs.FileSystem.from_uri(_storage_path(run_dir))
    return filesystem, f"{path.rstrip('/')}/{RUN_CONFIG}"


def save_run_config(config: Config, run_dir: str) -> None:
    """Keep a fresh run's config in its directory (atomically), for ``--resume``."""
    filesystem, path = _run_config_file(run_dir)
    if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        return  # a resumed run keeps the config it started with
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(f"{path}.tmp") as out:
        out.write(dumps(config).encode())
    filesystem.move(f"{path}.tmp", path)


def resume_config(run_dir: str, config_path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """The config to continue the run in ``run_dir`` with: the one it started with, with
    ``overrides``, or the one ``config_path`` gives. Any difference that would change the
    run (everything but where it is stored and how failures and checkpoints are kept) is
    refused: a resumed run must compute what the uninterrupted run would have."""
    filesystem, path = _run_config_file(run_dir)
    try:
        with filesystem.open_input_stream(path) as stream:
            text = stream.read().decode()
    except (FileNotFoundError, OSError):
        raise DtrayError(f"{run_dir}: not a dtray run directory (no {RUN_CONFIG})") from None
    saved = loads(text, source=path)
    wanted = load(config_path, overrides) if config_path else loads(text, overrides, path)
    changed = {key: values for key, values in differences(saved, wanted).items() if key not in RESUME_MAY_CHANGE}
    if changed:
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in sorted(changed.items()))
        raise DtrayError(f"{run_dir}: a resumed run must keep the config it started with; changed: {listed}")
    wanted.run.storage_path, wanted.run.name = os.path.split(_storage_path(run_dir).rstrip("/"))
    return wanted


def fit(config: Config, *, callbacks: Sequence[Any] = (), run_name: str | None = None,
        verbose: bool = False) -> ray.train.Result:
    """Train on the Ray cluster this process is connected to (``ray.init()`` first). Ray
    Train's INFO lines (a dump of every report, checkpoint notices) only when ``verbose``:
    the progress line of each report says what matters."""
    _check_resources(config)
    data = build_training_data(config.data, seed=config.train.seed)
    name = run_name or config.run.name or f"dtray-{data.info.env_id}-{datetime.now():%Y%m%d-%H%M%S}"
    rc = config.run
    save_run_config(config, f"{_storage_path(rc.storage_path).rstrip('/')}/{name}")
    resources = {"CPU": rc.cpus_per_worker, **({"GPU": 1} if rc.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": config.to_dict(), "info": data.info.to_json(),
                           "spec": data.spec.to_dict(), "stats": data.stats.to_dict(), "verbose": verbose},
        scaling_config=ray.train.ScalingConfig(num_workers=rc.num_workers, use_gpu=rc.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=_storage_path(rc.storage_path),
            callbacks=list(callbacks),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=rc.num_to_keep, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"),
            failure_config=ray.train.FailureConfig(max_failures=rc.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
        # validation is bounded by data.val_max_windows: materialise it once, not every check,
        # and give it whole to every worker (no split coordinator, no all-reduce)
        datasets={"train": data.train, "val": data.val.materialize()},
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"],
            execution_options=execution_options(config.data),
        ),
    )
    return trainer.fit()


def best_checkpoint(result: ray.train.Result) -> ray.train.Checkpoint:
    """The checkpoint to act with: lowest validation loss (held-out episodes), else the latest."""
    return result.get_best_checkpoint("val_loss", "min") or result.checkpoint


def _check_resources(config: Config) -> None:
    """Refuse plans that leave Ray Data no CPU: they hang instead of failing."""
    total = ray.cluster_resources().get("CPU", 0)
    workers = config.run.num_workers * config.run.cpus_per_worker
    if total and total - workers < 0.5:
        raise DtrayError(
            f"run.num_workers={config.run.num_workers} x run.cpus_per_worker={config.run.cpus_per_worker} "
            f"leaves {total - workers:g} of {total:g} CPUs for reading data: lower cpus_per_worker (e.g. 0.5)")
