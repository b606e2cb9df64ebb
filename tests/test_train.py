"""Ray Train training: metrics, checkpoints, exact resume, 2 workers, worker failure."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from dtray import checkpoint
from dtray.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig
from dtray.errors import DtrayError
from dtray.policy import load_policy
from dtray.train import fit, lr_factor
from tests.test_data import make_dataset


def tiny_config(dataset, storage, name, **train):
    return Config(
        data=DataConfig(paths=[str(dataset)], context_len=4, max_ep_len=64, rtg_scale=10.0,
                        shuffle_buffer=64, val_fraction=0.2),
        model=ModelConfig(embed_dim=32, n_layer=1, n_head=2, dropout=0.1),
        train=TrainConfig(**{"batch_size": 16, "lr": 1e-3, "warmup_steps": 5, "max_steps": 20,
                             "log_every": 5, "checkpoint_every": 10, **train}),
        run=RunConfig(storage_path=str(storage), name=name, num_to_keep=10),
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "ds"
    make_dataset(path, n_episodes=40)
    return path


def test_lr_schedule_warms_up_then_decays():
    config = TrainConfig(warmup_steps=10, max_steps=110, lr_schedule="cosine")
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(110, config) == pytest.approx(0.1)
    assert lr_factor(60, config) == pytest.approx(0.55)


def test_fit_reports_metrics_and_checkpoint_acts_like_the_trained_model(ray_local, dataset, tmp_path):
    result = fit(tiny_config(dataset, tmp_path, "basic"))
    metrics = result.metrics
    assert metrics["step"] == 20
    for key in ("loss", "action_error", "val_loss", "lr", "grad_norm", "samples_per_s", "data_wait_frac"):
        assert np.isfinite(metrics[key]), key
    with result.checkpoint.as_directory() as directory:
        assert sorted(os.listdir(directory)) == ["dtray.json", "model.safetensors", "train_state.pt"]
        policy = load_policy(directory)
        config, spec, info, stats = checkpoint.read_meta(directory)
        assert json.loads((open(os.path.join(directory, "dtray.json")).read()))["step"] == 20
    again = load_policy(result.checkpoint.path)
    windows = {"states": np.random.default_rng(0).normal(size=(3, 4, 3)).astype(np.float32),
               "actions": np.zeros((3, 4, 1), np.float32), "returns_to_go": np.ones((3, 4), np.float32),
               "timesteps": np.tile(np.arange(4), (3, 1)), "mask": np.ones((3, 4), np.float32)}
    np.testing.assert_array_equal(policy.act(windows), again.act(windows))
    assert policy.act(windows).shape == (3, 1)


def _losses(result):
    """Loss of every logged step, from the run's checkpoints' metrics."""
    steps = {}
    for ckpt, metrics in result.best_checkpoints:
        steps[metrics["step"]] = metrics["loss"]
    return steps


def test_resume_continues_exactly_like_an_uninterrupted_run(ray_local, dataset, tmp_path):
    def config(name, max_steps):
        cfg = tiny_config(dataset, tmp_path, name, max_steps=max_steps, checkpoint_every=5, log_every=5)
        cfg.data.shuffle_files, cfg.data.deterministic = False, True
        return cfg

    full = fit(config("full", 20))
    fit(config("resumed", 10))
    resumed = fit(config("resumed", 20))  # same storage_path/name: resumes from step 10
    full_losses, resumed_losses = _losses(full), _losses(resumed)
    assert set(full_losses) == {5, 10, 15, 20}
    for step in (15, 20):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-5), step


def test_two_workers_on_two_cpus_complete_and_report(ray_local, dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path, "ddp")
    cfg.run.num_workers, cfg.run.cpus_per_worker = 2, 0.5
    result = fit(cfg)
    assert result.metrics["step"] == 20
    assert np.isfinite(result.metrics["val_loss"])


def test_plan_that_starves_ray_data_is_refused(ray_local, dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path, "starved")
    cfg.run.num_workers, cfg.run.cpus_per_worker = 2, 1.0
    with pytest.raises(DtrayError, match="cpus_per_worker"):
        fit(cfg)


def _train_worker_pids():
    pids = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"RayTrainWorker" in f.read():
                    pids.append(int(pid))
        except (OSError, ValueError):
            continue
    return pids


def test_killed_worker_restarts_from_latest_checkpoint(ray_local, dataset, tmp_path):
    """A training worker process is really killed mid-run; the run restarts the worker
    group from the latest checkpoint and completes."""
    cfg = tiny_config(dataset, tmp_path, "killed", max_steps=100, checkpoint_every=20, log_every=20)
    cfg.run.max_failures = 1
    run_dir = tmp_path / "killed"
    killed = []

    def kill_after_first_checkpoint():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            if run_dir.exists() and any(p.name.startswith("step-") for p in run_dir.iterdir()):
                for pid in _train_worker_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    result = fit(cfg)
    killer.join(timeout=1)
    assert killed, "no training worker was found to kill"
    assert result.metrics["step"] == 100
    assert result.metrics["resumed_from_step"] >= 20  # restarted from a checkpoint, not from scratch
    assert result.error is None


def test_in_training_evaluation_reports_return_and_score(ray_local, dataset, tmp_path):
    """train.eval_every runs a small rollout grid in the real env and reports it."""
    cfg = tiny_config(dataset, tmp_path, "with-eval", max_steps=10, checkpoint_every=10, eval_every=10)
    cfg.eval.episodes = 2
    cfg.eval.max_steps = 20
    metrics = fit(cfg).metrics
    assert np.isfinite(metrics["eval_return"])
    assert metrics["eval_return"] < 0  # Pendulum rewards are never positive
    assert "eval_score" in metrics
