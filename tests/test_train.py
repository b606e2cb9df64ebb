"""Ray Train training: metrics, checkpoints, exact resume, 2 workers, worker failure."""

import json
import os
import signal
import threading
import time

import numpy as np
import pandas as pd
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


def test_compiled_step_computes_the_eager_losses_on_cpu():
    """train.compile=on runs torch.compile's default mode on CPU (auto: CUDA graphs on GPUs
    only): three optimiser steps give the eager steps' losses."""
    import copy

    from dtray.train import LossModule
    from tests.test_model import make_batch, make_model

    torch.manual_seed(0)
    model = make_model("stochastic")
    twin = copy.deepcopy(model)
    batch = make_batch("stochastic", n=16)
    losses = []
    for module in (LossModule(model, 0.0), torch.compile(LossModule(twin, 0.0))):
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
        steps = []
        for _ in range(3):
            torch.manual_seed(1)  # the entropy estimate samples: the same noise on both sides
            loss, _ = module(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps.append(loss.item())
        losses.append(steps)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4, atol=1e-5)


def test_lr_schedule_warms_up_then_decays():
    config = TrainConfig(warmup_steps=10, max_steps=110, lr_schedule="cosine")
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(110, config) == pytest.approx(0.1)
    assert lr_factor(60, config) == pytest.approx(0.55)


def exact_config(dataset, storage, name):
    """A run whose data order is reproducible, so that a resumed run can be compared step by
    step; it evaluates in the env at steps 10 and 20 as well."""
    cfg = tiny_config(dataset, storage, name, max_steps=20, checkpoint_every=5, log_every=5, eval_every=10)
    cfg.data.shuffle_files, cfg.data.deterministic = False, True
    cfg.eval.episodes, cfg.eval.max_steps = 2, 20
    return cfg


@pytest.fixture(scope="module")
def full_run(ray_local, dataset, tmp_path_factory):
    """One uninterrupted run, shared by the tests that read its results."""
    return fit(exact_config(dataset, tmp_path_factory.mktemp("runs"), "full"))


def test_fit_reports_metrics_and_checkpoint_acts_like_the_trained_model(full_run):
    metrics = full_run.metrics
    assert metrics["step"] == 20
    for key in ("loss", "action_error", "val_loss", "initial_val_loss", "lr", "grad_norm", "samples_per_s",
                "data_wait_frac"):
        assert np.isfinite(metrics[key]), key
    with full_run.checkpoint.as_directory() as directory:
        assert sorted(os.listdir(directory)) == ["dtray.json", "model.safetensors", "train_state.pt"]
        policy = load_policy(directory)
        assert json.loads((open(os.path.join(directory, "dtray.json")).read()))["step"] == 20
    again = load_policy(full_run.checkpoint.path)
    windows = {"states": np.random.default_rng(0).normal(size=(3, 4, 3)).astype(np.float32),
               "actions": np.zeros((3, 4, 1), np.float32), "returns_to_go": np.ones((3, 4), np.float32),
               "timesteps": np.tile(np.arange(4), (3, 1)), "mask": np.ones((3, 4), np.float32)}
    np.testing.assert_array_equal(policy.act(windows), again.act(windows))
    assert policy.act(windows).shape == (3, 1)


def test_in_training_evaluation_reports_return_and_score(full_run):
    """train.eval_every runs a small rollout grid in the real env and reports it."""
    metrics = full_run.metrics
    assert np.isfinite(metrics["eval_return"])
    assert metrics["eval_return"] < 0  # Pendulum rewards are never positive
    assert "eval_score" in metrics


def test_evaluate_chooses_a_way_of_acting_on_held_out_seeds_then_evaluates_with_it(full_run, tmp_path, capsys,
                                                                                 monkeypatch):
    """``dtray evaluate --choose-acting``: every way runs on the grid's seeds + 1000, the
    choice is written and printed, and the reported grid (its own seeds) acts the chosen way."""
    from dtray import evaluate
    from dtray.cli import main

    used = []
    evaluate_checkpoints = evaluate.evaluate_checkpoints
    monkeypatch.setattr(evaluate, "evaluate_checkpoints",
                        lambda paths, config: used.append(config.sampling) or evaluate_checkpoints(paths, config))
    assert main(["evaluate", "--checkpoint", full_run.checkpoint.path, "--choose-acting", "greedy", "T1p0.9",
                 "--targets=-900,-300", "--seeds", "3", "--episodes", "2", "--out", str(tmp_path),
                 "eval.max_steps=20"]) == 0
    ways = pd.read_csv(tmp_path / "acting" / "acting.csv")
    assert list(ways["acting"]) == ["greedy", "T1p0.9"] and ways["chosen"].sum() == 1
    tried = pd.read_csv(tmp_path / "acting" / "episodes.csv")
    assert set(tried["seed"]) == {1003} and set(tried["policy"]) == {"greedy", "T1p0.9"}
    reported = pd.read_csv(tmp_path / "episodes.csv")
    assert set(reported["seed"]) == {3} and len(reported) == 4
    chosen = ways.loc[ways["chosen"], "acting"].item()
    assert f"chosen way of acting: {chosen}" in capsys.readouterr().out
    assert [sampling.name for sampling in used] == [chosen]


def _losses(result):
    """Loss of every logged step, from the run's checkpoints' metrics."""
    return {metrics["step"]: metrics["loss"] for _, metrics in result.best_checkpoints}


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


def _registered_checkpoints(run_dir):
    """Checkpoints the controller has registered (a restart resumes from the latest of these)."""
    try:
        return json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []


def test_killed_worker_resumes_exactly_from_latest_checkpoint(ray_local, dataset, tmp_path, full_run):
    """A training worker process is really killed mid-run, once a checkpoint is registered;
    the run restarts the worker group from that checkpoint, completes, and from there on
    logs the very losses of the uninterrupted run."""
    cfg = exact_config(dataset, tmp_path, "killed")
    cfg.run.max_failures = 1
    killed = []

    def kill_after_first_checkpoint():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            if _registered_checkpoints(tmp_path / "killed"):
                for pid in _train_worker_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    result = fit(cfg)
    killer.join(timeout=1)
    assert killed, "no training worker was found to kill"
    assert result.error is None and result.metrics["step"] == 20
    resumed_from = result.metrics["resumed_from_step"]
    assert 5 <= resumed_from < 20, "restarted from a checkpoint, not from scratch"
    full, resumed = _losses(full_run), _losses(result)
    assert set(full) == {5, 10, 15, 20}
    for step in range(resumed_from + 5, 21, 5):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5), step
