"""Ray Tune searches from YAML: the node mapping and its errors (no Ray), and one real
search on a private 2-CPU Ray with the dashboard on (ASHA stopping a trial needs it)."""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from ray import tune

from dtray import config as cfg
from dtray.errors import DtrayError
from dtray.tune import load_search, make_scheduler, trial_config

REPO = Path(__file__).resolve().parents[1]


def write_search(tmp_path, search_space, **top):
    path = tmp_path / "search.yaml"
    doc = {"base": {"overrides": {"train.max_steps": 40}}, "search_space": search_space, **top}
    path.write_text(yaml.safe_dump(doc))
    return path


def signature(domain):
    """What defines a Tune domain: its class, bounds, sampler (and quantum) or categories."""
    sampler = domain.get_sampler()
    return (type(domain), getattr(domain, "lower", None), getattr(domain, "upper", None),
            type(getattr(sampler, "sampler", sampler)), getattr(sampler, "q", None),
            getattr(domain, "categories", None))


def test_every_node_maps_to_its_tune_domain(tmp_path):
    path = write_search(tmp_path, {
        "train.lr": {"loguniform": ["1e-5", 1.0e-3]},  # YAML reads 1e-5 as a string
        "model.dropout": {"uniform": [0.0, 0.3]},
        "train.weight_decay": {"quniform": [0.0, 0.01, 0.001]},
        "model.n_layer": {"randint": [1, 4]},
        "train.batch_size": {"qrandint": [16, 64, 16]},
        "data.sampling": {"choice": ["length", "boltzmann"]},
        "data.context_len": {"grid": [10, 20]},
    })
    space = load_search(path).space
    expected = {"train.lr": tune.loguniform(1e-5, 1e-3), "model.dropout": tune.uniform(0.0, 0.3),
                "train.weight_decay": tune.quniform(0.0, 0.01, 0.001), "model.n_layer": tune.randint(1, 4),
                "train.batch_size": tune.qrandint(16, 64, 16), "data.sampling": tune.choice(["length", "boltzmann"])}
    for key, domain in expected.items():
        assert signature(space[key]) == signature(domain), key
    assert space["data.context_len"] == tune.grid_search([10, 20])
    assert set(space) == {*expected, "data.context_len"}


def test_defaults_overrides_and_trial_config(tmp_path):
    path = write_search(tmp_path, {"train.lr": {"choice": [1.0e-4]}})
    search = load_search(path, ["num_samples=3", "scheduler.grace_period=5", "model.embed_dim=32"])
    assert (search.name, search.metric, search.mode, search.num_samples) == ("search", "val_loss", "min", 3)
    assert search.experiment_path == os.path.abspath("runs") + "/search"
    assert search.scheduler == {"grace_period": 5, "name": "asha", "max_t": 40}
    assert make_scheduler(search)._time_attr == "step"
    config = trial_config(search.base, {"train.lr": 1e-4, "model.n_layer": 2})
    assert (config.train.lr, config.model.n_layer, config.model.embed_dim, config.train.max_steps) == (1e-4, 2, 32, 40)


@pytest.mark.parametrize("space, top, message", [
    ({"train.lr": {"normal": [0, 1]}}, {}, r"search_space\.train\.lr: unknown node 'normal'"),
    ({"train.learning_rate": {"choice": [1]}}, {}, r"search_space\.train\.learning_rate: train has no key"),
    ({"optim.lr": {"choice": [1]}}, {}, r"search_space\.optim\.lr: expected section\.key"),
    ({"model.embed_dim": {"uniform": [16, 64]}}, {}, r"search_space\.model\.embed_dim=16\.0.*int"),
    ({"data.sampling": {"choice": ["length", "bogus"]}}, {}, r"search_space\.data\.sampling='bogus'"),
    ({"train.lr": {"loguniform": [0, 1]}}, {}, r"search_space\.train\.lr: loguniform needs 0 < a"),
    ({"model.n_layer": {"randint": [1, 2.5]}}, {}, r"search_space\.model\.n_layer: randint takes .* whole"),
    ({"train.lr": {"choice": []}}, {}, r"search_space\.train\.lr: choice takes a non-empty list"),
    ({"train.lr": {"choice": [1e-3]}}, {"num_sample": 2}, r"unknown key\(s\) \['num_sample'\]"),
    ({"train.lr": {"choice": [1e-3]}}, {"metric": "reward"}, r"metric 'reward' is not reported"),
    ({"train.lr": {"choice": [1e-3]}}, {"metric": "eval_return"}, r"needs train\.eval_every > 0"),
    ({"train.lr": {"choice": [1e-3]}}, {"num_samples": "many"}, r"num_samples must be a whole number"),
    ({"train.lr": {"choice": [1e-3]}}, {"scheduler": {"name": "asha", "grace": 1}}, r"scheduler: .*\['grace'\]"),
    ({"train.lr": {"choice": [1e-3]}}, {"scheduler": {"name": "asha", "grace_period": 99}}, r"grace_period must be"),
])
def test_bad_search_files_name_the_file_and_key(tmp_path, space, top, message):
    path = write_search(tmp_path, space, **top)
    with pytest.raises(DtrayError, match=message) as error:
        load_search(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("path", sorted((REPO / "tune_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_search_files_load(path, monkeypatch):
    monkeypatch.chdir(REPO)  # their base configs are relative to the repository
    search = load_search(path)
    assert search.space and search.max_concurrent_trials


# ---------------------------------------------------------------- a real search

DRIVER = """
import json, os, sys, ray
from dtray.cli import main
temp_dir, port, search = sys.argv[1:]
# Train removes a stopped run's placement group through the State API, which finds the
# dashboard by auto-detecting "the" local Ray: name ours, as other Ray instances may run here.
os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
ray.init(num_cpus=2, include_dashboard=True, dashboard_port=int(port), _temp_dir=temp_dir,
         configure_logging=False)
codes = [main(["tune", "--config", search]),
         main(["tune", "--config", search]),  # refused: the experiment exists
         main(["tune", "--config", search, "--resume"])]  # errored trials stay errored: re-exports
print("EXIT CODES", json.dumps(codes))
"""


@pytest.fixture
def ray_temp_dir():
    """A short private temp dir: Ray's socket paths must stay under 108 bytes."""
    path = tempfile.mkdtemp(prefix="dtray-tune-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def learnable_dataset(path, n_episodes=40, seed=0):
    """Episodes whose action is a fixed function of the state, with a mean away from 0:
    a few optimizer steps already beat the untrained model."""
    import gymnasium as gym
    import numpy as np

    from dtray.format import DatasetInfo, Episode, write_dataset

    rng = np.random.default_rng(seed)
    info = DatasetInfo("Pendulum-v1", gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
                       gym.spaces.Box(-2.0, 2.0, (1,), np.float32))
    episodes = []
    for i, length in enumerate(rng.integers(10, 40, size=n_episodes)):
        obs = rng.normal(size=(length, 3)).astype(np.float32)
        actions = (1.0 + 0.5 * np.tanh(obs[:, :1])).astype(np.float32)
        episodes.append(Episode(obs, actions, -np.abs(obs[:, 0]), False, True, None, i))
    write_dataset(episodes, info, path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trial_spans(experiment):
    """(start, end) in seconds of each trial that reported, from the results Tune wrote."""
    spans = []
    for results in experiment.glob("*/result.json"):
        if lines := [json.loads(line) for line in results.read_text().splitlines()]:
            spans.append((lines[0]["timestamp"] - lines[0]["time_total_s"], lines[-1]["timestamp"]))
    return sorted(spans)


@pytest.mark.timeout(400)
def test_search_runs_trials_one_at_a_time_and_exports_the_best(tmp_path, ray_temp_dir):
    """3 trials on 2 CPUs, one at a time, with fractional CPUs. The lr=0 trial cannot beat
    the first one, so ASHA stops it at its first rung, and the next trial still starts; the
    lr<0 trial fails (the optimizer refuses it) without losing the others' results."""
    learnable_dataset(tmp_path / "ds")
    overrides = {"data.paths": [str(tmp_path / "ds")], "data.context_len": 4, "data.max_ep_len": 64,
                 "data.rtg_scale": 10.0, "data.val_fraction": 0.2, "data.shuffle_buffer": 64,
                 "model.embed_dim": 16, "model.n_layer": 1, "train.batch_size": 16, "train.warmup_steps": 5,
                 "train.max_steps": 30, "train.log_every": 5, "train.checkpoint_every": 10,
                 "run.num_workers": 1, "run.cpus_per_worker": 0.5}
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump({
        "base": {"overrides": overrides},
        "search_space": {"train.lr": {"grid": [3.0e-3, 0.0, -1.0]}},
        "scheduler": {"name": "asha", "grace_period": 10, "reduction_factor": 2},
        "max_concurrent_trials": 1, "resources_per_trial": {"CPU": 0.5},
        "storage_path": str(tmp_path / "tune"), "name": "search"}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # with conftest's Train settings
    proc = subprocess.run([sys.executable, "-c", DRIVER, ray_temp_dir, str(free_port()), str(search)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=380)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "EXIT CODES [0, 2, 0]" in output, output[-5000:]

    experiment = tmp_path / "tune" / "search"
    with open(experiment / "trials.csv") as f:
        trials = {float(row["train.lr"]): row for row in csv.DictReader(f)}
    assert set(trials) == {3e-3, 0.0, -1.0}
    assert [lr for lr, row in trials.items() if row["error"]] == [-1.0], trials
    assert int(trials[0.0]["step"]) == 10, "ASHA should stop the lr=0 trial at its first rung"
    assert int(trials[3e-3]["step"]) == 30
    best = cfg.load(experiment / "best_config.yaml")
    assert best.train.lr == min(trials, key=lambda lr: float(trials[lr]["best_val_loss"])) != 0.0
    assert best.run.name == "" and best.model.embed_dim == 16
    assert {"dtray.json", "model.safetensors"} <= set(os.listdir(experiment / "best_checkpoint"))
    spans = trial_spans(experiment)
    assert len(spans) == 2  # the failed trial reported nothing
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 1, f"trials overlapped: {spans}"
