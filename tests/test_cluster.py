"""The cluster workflow: cluster files pass Ray's own schema, and the pipeline scripts run
on a real, separate Ray head the two ways a cluster runs them (`ray submit`, `ray job submit`)."""

import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.test_tune import free_port

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))  # the CLI of the Ray this test imports
CLUSTER_FILES = ["cluster.yaml", "cluster-local.yaml"]
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_file_passes_rays_schema(name):
    config = yaml.safe_load((REPO / name).read_text())
    jsonschema.validate(config, SCHEMA)
    validate_config(prepare_config(config))  # what `ray up` does before launching anything
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    typo = copy.deepcopy(config)
    typo["setup_command"] = typo.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_command"):
        jsonschema.validate(typo, SCHEMA)


def test_cluster_file_node_types_fit_the_gpu_search():
    """tune_configs/gpu_cluster.yaml runs 4 trials x 2 GPU workers at once."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    search = yaml.safe_load((REPO / "tune_configs" / "gpu_cluster.yaml").read_text())
    gpu_nodes = config["available_node_types"]["gpu_worker"]["max_workers"]  # g5.2xlarge: 1 GPU each
    assert gpu_nodes >= search["max_concurrent_trials"] * search["base"]["overrides"]["run.num_workers"]


# ---------------------------------------------------------------- a real head


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` in its own process group, temp dir, ports and auth token;
    stopped by signalling that group (never `ray stop`, which would stop every Ray here)."""
    temp_dir = tempfile.mkdtemp(prefix="dtray-head-")  # short: Ray's socket paths are limited
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           # `python` on the head is the one with dtray installed, as on a cluster node
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           # Train's clean-up finds the dashboard by auto-detecting "the" local Ray: name ours
           "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}"}
    env.pop("RAY_ADDRESS", None)
    log = open(Path(temp_dir) / "ray-start.log", "w")
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=2",
         f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--temp-dir={temp_dir}", "--block"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_dashboard(head, dashboard, log)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        os.killpg(head.pid, signal.SIGINT)  # Ctrl-C, as in docs/cluster.md
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_dashboard(head, port, log, timeout=120):
    """Until the dashboard answers (401 without the token counts: it is up)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited: {Path(log.name).read_text()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the head's dashboard did not come up: {Path(log.name).read_text()}")


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    """A working dir laid out like the repository: the pipeline scripts, a tiny run config
    and a tiny dataset."""
    from tests.test_data import make_dataset

    path = tmp_path_factory.mktemp("job")
    shutil.copytree(REPO / "pipelines", path / "pipelines")
    make_dataset(path / "data" / "tiny", n_episodes=40)
    (path / "tiny.yaml").write_text(yaml.safe_dump({
        "data": {"paths": ["data/tiny"], "context_len": 4, "max_ep_len": 64, "rtg_scale": 10.0,
                 "val_fraction": 0.2, "shuffle_buffer": 64},
        "model": {"embed_dim": 16, "n_layer": 1, "n_head": 1},
        "train": {"batch_size": 16, "warmup_steps": 5, "max_steps": 20, "log_every": 10, "checkpoint_every": 10},
        "run": {"num_workers": 1, "cpus_per_worker": 0.5, "storage_path": "runs"},
    }))
    return path


def check_run(runs, name):
    """The run stored checkpoints that hold a policy and the metrics they were scored by."""
    checkpoints = sorted(path.parent for path in (runs / name).glob("*/dtray.json"))
    assert checkpoints, f"no checkpoint under {runs / name}"
    assert (checkpoints[-1] / "model.safetensors").is_file()
    meta = json.loads((checkpoints[-1] / "dtray.json").read_text())
    assert meta["step"] == 20 and meta["metrics"]["val_loss"] > 0, meta


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_script_runs_on_the_head_like_ray_submit(ray_head, job_dir):
    """`ray submit` runs `python ~/train.py ARGS` on the head, where RAY_ADDRESS-less
    `ray.init()` joins the local cluster; here RAY_ADDRESS names our head explicitly."""
    runs = job_dir / "submit-runs"
    proc = subprocess.run(
        [sys.executable, "pipelines/train.py", "--config", "tiny.yaml",
         f"run.storage_path={runs}", "run.name=submitted"],
        cwd=job_dir, env={**ray_head["env"], "RAY_ADDRESS": ray_head["address"]},
        capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "val_loss" in proc.stdout
    check_run(runs, "submitted")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_job_submit_runs_the_pipeline_and_succeeds(ray_head, job_dir):
    """The job's working dir (the config and data) is uploaded; results go to an absolute
    storage path, as they would to shared storage or s3:// on a real cluster."""
    runs = job_dir / "job-runs"
    job_id = f"dtray-test-{secrets.token_hex(4)}"
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head["dashboard"],
         "--submission-id", job_id, "--working-dir", str(job_dir), "--",
         "python", "pipelines/train.py", "--config", "tiny.yaml",
         f"run.storage_path={runs}", "run.name=job"],
        env=ray_head["env"], capture_output=True, text=True, timeout=220)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and f"Job '{job_id}' succeeded" in output, output[-4000:]
    check_run(runs, "job")


def run_losses(run_dir):
    """step -> mean loss of the report ending there, from every kept checkpoint."""
    return {meta["step"]: meta["metrics"]["loss"]
            for meta in (json.loads(path.read_text()) for path in run_dir.glob("*/dtray.json"))}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_run_whose_driver_died_resumes_exactly_from_the_command_line(ray_head, job_dir):
    """The driver (a laptop that closed, a lost head) is SIGKILLed once a checkpoint is
    registered; `pipelines/train.py --resume RUN_DIR` then finishes the run from there with
    the losses of an uninterrupted run. A resume that would change the run is refused."""
    runs = job_dir / "resume-runs"
    exact = ["--config", "tiny.yaml", f"run.storage_path={runs}", "data.shuffle_files=false",
             "data.deterministic=true", "train.max_steps=40", "run.num_to_keep=10"]
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["address"]}

    def train(*args, **popen):
        return subprocess.Popen([sys.executable, "pipelines/train.py", *args], cwd=job_dir, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)

    full = train(*exact, "run.name=full")
    output = full.communicate(timeout=200)[0]
    assert full.returncode == 0, output[-4000:]
    assert "step 40/40" in output and "TrainingReport(" not in output  # dtray's progress lines, not Ray's

    killed = train(*exact, "run.name=killed", start_new_session=True)
    snapshot = runs / "killed" / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 200
    while time.time() < deadline and killed.poll() is None:
        if snapshot.exists() and json.loads(snapshot.read_text() or "{}").get("checkpoint_results"):
            break
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert not (runs / "killed" / "step-00000040").exists(), "the driver finished before it could be killed"

    refused = subprocess.run([sys.executable, "pipelines/train.py", "--resume", str(runs / "killed"),
                              "train.lr=0.5"], cwd=job_dir, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"dtray: error: {runs / 'killed'}: a resumed run must keep the config it started with; "
        "changed: train.lr 0.0001 -> 0.5")

    resumed = train("--resume", str(runs / "killed"))
    output = resumed.communicate(timeout=200)[0]
    assert resumed.returncode == 0, output[-4000:]
    full_losses, resumed_losses = run_losses(runs / "full"), run_losses(runs / "killed")
    assert set(full_losses) == set(resumed_losses) == {10, 20, 30, 40}
    first_resumed = min(json.loads((runs / "killed" / "step-00000040" / "dtray.json").read_text())
                        ["metrics"]["resumed_from_step"] + 10, 40)
    for step in range(first_resumed, 41, 10):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-5), step
