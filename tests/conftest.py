"""Shared fixtures: one local Ray instance per test session, with its own temp dir.

Never ``address="auto"`` and never ``ray stop``: other Ray instances may share this host.
"""

import os
import tempfile

import pytest

os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
# Train's controller takes one report per poll (a worker's next report waits for it): the
# default 2 s poll would dominate these short runs. Ray's workers inherit this environment.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    temp_dir = tempfile.mkdtemp(prefix="dtray-ray-")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp_dir,
        configure_logging=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()
