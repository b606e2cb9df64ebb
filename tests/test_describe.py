"""describe(): numbers match numpy on a small dataset; ESS behaves at the temperature limits."""

import gymnasium as gym
import numpy as np
import pytest

from dtray.describe import ALPHA_MULTIPLES, describe, summarize
from dtray.format import DatasetInfo, Episode, write_dataset

INFO = DatasetInfo(
    env_id="Pendulum-v1",
    observation_space=gym.spaces.Box(-8.0, 8.0, (3,), np.float32),
    action_space=gym.spaces.Box(-2.0, 2.0, (1,), np.float32),
    ref_min_score=-10.0,
    ref_max_score=10.0,
)
LENGTHS = [3, 8, 5, 1, 12, 7, 4, 9]


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [
        Episode(observations=np.zeros((n, 3), np.float32), actions=np.zeros((n, 1), np.float32),
                rewards=rng.normal(size=n).astype(np.float32), episode_id=i)
        for i, n in enumerate(LENGTHS)
    ]
    write_dataset(episodes, INFO, tmp_path / "d", steps_per_file=15)  # several files
    return str(tmp_path / "d"), np.array([e.rewards.astype(np.float64).sum() for e in episodes])


def test_returns_lengths_and_partition_match_numpy(dataset):
    path, returns = dataset
    summary = summarize(path)
    assert summary.files > 1
    np.testing.assert_allclose(summary.returns, returns, rtol=1e-12)
    np.testing.assert_array_equal(summary.lengths, LENGTHS)
    np.testing.assert_allclose(summary.alphas, np.array(ALPHA_MULTIPLES) * returns.std())
    for alpha, log_z, ess in zip(summary.alphas, summary.log_z, summary.ess):
        weights = np.exp(returns / alpha) / np.exp(returns / alpha).sum()
        np.testing.assert_allclose(log_z, np.log(np.exp(returns / alpha).sum()), rtol=1e-10)
        np.testing.assert_allclose(ess, 1.0 / np.square(weights).sum(), rtol=1e-10)


def test_ess_tends_to_all_episodes_when_hot_and_one_when_cold(dataset):
    path, _ = dataset
    hot, cold = summarize(path, alphas=[1e9, 1e-6]).ess
    assert hot == pytest.approx(len(LENGTHS), rel=1e-6)
    assert cold == pytest.approx(1.0, rel=1e-6)
    assert np.all(np.diff(summarize(path).ess) > 0)  # ESS grows with temperature


def test_report_names_the_key_numbers(dataset):
    path, returns = dataset
    report = describe(path, alphas=[1e9])
    assert "env: Pendulum-v1" in report
    assert f"episodes: {len(LENGTHS)}  steps: {sum(LENGTHS)}" in report
    assert f"min {returns.min():.2f}" in report and f"median {np.median(returns):.2f}" in report
    assert "reference scores: random -10.00  expert 10.00" in report
    assert f"{len(LENGTHS):10.1f}   100.0%" in report
