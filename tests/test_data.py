"""The window convention, sampling schemes and statistics of the Ray Data pipeline."""

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from dtray.config import DataConfig
from dtray.data import (
    LiveContexts,
    NormStats,
    WindowSpec,
    boltzmann_weights,
    build_training_data,
    build_windows,
    effective_sample_size,
    is_validation,
    log_partition,
    next_return_to_go,
    returns_to_go,
    sampling_rate,
    window_ends,
)
from dtray.format import DatasetInfo, Episode, write_dataset


def spec(K=3, max_ep_len=100, rtg_scale=1.0, gamma=1.0, mean=None, std=None):
    return WindowSpec(K, max_ep_len, rtg_scale, gamma, mean, std)


def test_returns_to_go_undiscounted_includes_current_reward():
    assert returns_to_go(np.array([1.0, 2.0, 3.0]), 1.0).tolist() == [6.0, 5.0, 3.0]


def test_returns_to_go_discounted_by_hand():
    r = np.array([1.0, 2.0, 3.0])
    expected = [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3]
    np.testing.assert_allclose(returns_to_go(r, 0.5), expected)


def test_inference_rtg_update_inverts_the_recursion():
    r = np.array([1.0, -2.0, 0.5, 4.0])
    for gamma in (1.0, 0.9):
        rtg = returns_to_go(r, gamma)
        for t in range(len(r) - 1):
            assert next_return_to_go(rtg[t], r[t], gamma) == pytest.approx(rtg[t + 1])


def test_window_left_pads_with_zero_mask_and_scales_rtg():
    states = np.arange(4.0)[:, None] + 1
    actions = -np.arange(4.0)[:, None] - 1
    rtg = returns_to_go(np.ones(4), 1.0)  # [4, 3, 2, 1]
    w = build_windows(spec(K=3, rtg_scale=2.0), states, actions, rtg, ends=[0, 3])
    np.testing.assert_array_equal(w["mask"], [[0, 0, 1], [1, 1, 1]])
    np.testing.assert_array_equal(w["states"][..., 0], [[0, 0, 1], [2, 3, 4]])
    np.testing.assert_array_equal(w["actions"][..., 0], [[0, 0, -1], [-2, -3, -4]])
    np.testing.assert_allclose(w["returns_to_go"], [[0, 0, 2.0], [1.5, 1.0, 0.5]])
    np.testing.assert_array_equal(w["timesteps"], [[0, 0, 0], [1, 2, 3]])


def test_timesteps_are_clipped_and_states_normalised():
    states = np.full((6, 2), 3.0)
    w = build_windows(spec(K=2, max_ep_len=4, mean=(1.0, 2.0), std=(2.0, 0.5)), states,
                      np.zeros((6, 1)), np.zeros(6), ends=[5])
    np.testing.assert_array_equal(w["timesteps"], [[3, 3]])
    np.testing.assert_allclose(w["states"][0, 0], [1.0, 2.0])


def test_windows_of_episodes_laid_back_to_back_equal_each_episodes_own():
    """``starts`` marks where each window's episode begins in concatenated arrays: padding and
    timesteps restart there, exactly as if each episode were cut on its own."""
    rng = np.random.default_rng(1)
    lengths = [5, 2, 7]
    episodes = [(rng.normal(size=(n, 2)), rng.normal(size=(n, 1)), rng.normal(size=n)) for n in lengths]
    s = spec(K=4, max_ep_len=6, rtg_scale=3.0, mean=(0.5, -0.5), std=(2.0, 3.0))
    flat = [np.concatenate(parts) for parts in zip(*episodes)]
    first = np.cumsum([0] + lengths[:-1])
    ends = np.concatenate([start + np.arange(n) for start, n in zip(first, lengths)])
    starts = np.repeat(first, lengths)
    order = rng.permutation(len(ends))
    together = build_windows(s, *flat, ends[order], starts[order])
    alone = [build_windows(s, *episode, np.arange(n)) for episode, n in zip(episodes, lengths)]
    for key, value in together.items():
        np.testing.assert_array_equal(value, np.concatenate([w[key] for w in alone])[order], err_msg=key)


def test_discrete_actions_stay_integers():
    w = build_windows(spec(K=2), np.zeros((3, 1)), np.array([2, 1, 0]), np.zeros(3), ends=[2])
    assert w["actions"].dtype == np.int64
    np.testing.assert_array_equal(w["actions"], [[1, 0]])


@pytest.mark.parametrize("returns_set_each_step", [False, True])
def test_inference_context_equals_training_window_at_every_step(returns_set_each_step):
    """Guard rail: feeding recorded episodes step by step through LiveContexts builds exactly
    their training windows at every step (the unknown current action is the only difference,
    and it is a zero placeholder), for episodes that share the batch at different phases and
    a slot that is reused by a new episode; also when each step's R̂ is set after its
    observation, as path-integral targets are (episodes then start with a placeholder)."""
    rng = np.random.default_rng(0)
    K, gamma, lengths = 4, 0.9, [12, 7, 3]
    s = spec(K=K, max_ep_len=8, rtg_scale=10.0, gamma=gamma, mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0))
    episodes = []
    for T in lengths:
        obs, actions, rewards = rng.normal(size=(T + 1, 3)), rng.normal(size=(T, 2)), rng.normal(size=T)
        rtg = returns_to_go(rewards, gamma)
        episodes.append((obs, actions, rewards, rtg, build_windows(s, obs[:T], actions, rtg, ends=np.arange(T))))
    contexts = LiveContexts(s, slots=2, obs_shape=(3,), obs_dtype=np.float64, action_shape=(2,), action_dtype=np.float32)
    # slot 0 runs episode 0; slot 1 runs episode 1, then episode 2 (starting mid-way through episode 0)
    schedule = {0: [(0, t) for t in range(12)], 1: [(1, t) for t in range(7)] + [(2, t) for t in range(3)]}
    for step in range(12):
        live = [(slot, *schedule[slot][step]) for slot in (0, 1) if step < len(schedule[slot])]
        for slot, episode, t in live:
            if t == 0:
                contexts.start(slot, 0.0 if returns_set_each_step else episodes[episode][3][0], episodes[episode][0][0])
            if returns_set_each_step:
                contexts.set_returns(np.array([slot]), np.array([episodes[episode][3][t]]))
        windows = contexts.windows(np.array([slot for slot, _, _ in live]))
        for row, (slot, episode, t) in enumerate(live):
            training = episodes[episode][4]
            for key in ("states", "returns_to_go", "timesteps", "mask"):
                np.testing.assert_allclose(windows[key][row], training[key][t], rtol=1e-5, atol=1e-6,
                                           err_msg=f"{key}, episode {episode}, t={t}")
            np.testing.assert_allclose(windows["actions"][row, :-1], training["actions"][t, :-1], rtol=1e-6)
            np.testing.assert_array_equal(windows["actions"][row, -1], 0.0)
        contexts.record(np.array([slot for slot, _, _ in live]),
                        np.stack([episodes[e][1][t] for _, e, t in live]),
                        np.array([episodes[e][2][t] for _, e, t in live]),
                        np.stack([episodes[e][0][t + 1] for _, e, t in live]))


def test_log_partition_is_stable_and_weights_normalise():
    returns = np.array([1000.0, 999.0, 0.0])
    assert np.isfinite(log_partition(returns, 0.01))
    w = boltzmann_weights(returns, 1.0)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(np.e)
    assert effective_sample_size(boltzmann_weights(returns, 1e9)) == pytest.approx(3.0)
    assert effective_sample_size(boltzmann_weights(returns, 1e-3)) == pytest.approx(1.0)


def test_validation_split_is_stable_and_close_to_fraction():
    ids = np.arange(20_000)
    val = is_validation(ids, 0.1, seed=3)
    assert abs(val.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(val, is_validation(ids, 0.1, seed=3))
    assert (val != is_validation(ids, 0.1, seed=4)).any()


def _stats(returns, lengths, config):
    return NormStats(None, None, len(returns), int(np.sum(lengths)), 0, 0, float(np.min(returns)),
                     float(np.max(returns)), 0.0, 1.0, {}, log_partition(returns, config.temperature),
                     float(np.percentile(returns, 100 - config.top_percent)))


@pytest.mark.parametrize("sampling", ["length", "uniform_episode", "top_percent", "boltzmann"])
def test_sampling_frequencies_match_their_formula(sampling):
    """Over many epochs, the share of windows from each episode matches the scheme's p(tau)."""
    returns = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    lengths = np.array([10, 40, 20, 30, 50])
    config = DataConfig(sampling=sampling, temperature=1.5, top_percent=40.0)
    stats = _stats(returns, lengths, config)
    counts = np.zeros(len(returns))
    epochs = 400
    for epoch in range(epochs):
        for i in range(len(returns)):
            ends = window_ends(config, stats, i, returns[i], lengths[i], seed=0, epoch=epoch)
            assert ((0 <= ends) & (ends < lengths[i])).all()
            counts[i] += len(ends)
    expected = {
        "length": lengths / lengths.sum(),
        "uniform_episode": np.full(5, 0.2),
        "top_percent": np.where(returns >= 2.4, lengths, 0) / lengths[returns >= 2.4].sum(),
        "boltzmann": boltzmann_weights(returns, 1.5),
    }[sampling]
    np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.01)
    # every scheme's epoch is about train_steps windows
    assert counts.sum() / epochs == pytest.approx(
        lengths[returns >= 2.4].sum() if sampling == "top_percent" else lengths.sum(), rel=0.02)


def test_boltzmann_limits():
    returns, lengths = np.array([0.0, 5.0, 10.0]), np.array([10, 10, 10])
    hot = DataConfig(sampling="boltzmann", temperature=1e9)
    cold = DataConfig(sampling="boltzmann", temperature=1e-3)
    rates_hot = [sampling_rate(hot, _stats(returns, lengths, hot), r, n) for r, n in zip(returns, lengths)]
    rates_cold = [sampling_rate(cold, _stats(returns, lengths, cold), r, n) for r, n in zip(returns, lengths)]
    np.testing.assert_allclose(rates_hot, [10, 10, 10])
    np.testing.assert_allclose(rates_cold, [0, 0, 30], atol=1e-6)


# --- on a real local Ray ------------------------------------------------------------------


def make_dataset(path, n_episodes=40, seed=0, obs_dim=3, steps_per_file=300):
    """Episodes whose observation is (episode_id, t, noise): windows name their origin."""
    rng = np.random.default_rng(seed)
    info = DatasetInfo("Pendulum-v1", gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
                       gym.spaces.Box(-2.0, 2.0, (1,), np.float32))
    episodes = []
    for i, length in enumerate(rng.integers(5, 40, size=n_episodes)):
        obs = np.stack([np.full(length, i), np.arange(length), rng.normal(size=length)], 1).astype(np.float32)
        episodes.append(Episode(obs, rng.uniform(-2, 2, (length, 1)).astype(np.float32),
                                rng.normal(size=length), False, True, None, i))
    write_dataset(episodes, info, path, steps_per_file=steps_per_file)
    return episodes


def test_normalisation_stats_match_numpy(ray_local, tmp_path):
    episodes = make_dataset(tmp_path / "ds")
    config = DataConfig(paths=[str(tmp_path / "ds")], val_fraction=0.2, gamma=0.99)
    data = build_training_data(config, seed=0)
    train = [e for e in episodes if not is_validation([e.episode_id], 0.2, 0)[0]]
    states = np.concatenate([e.observations for e in train]).astype(np.float64)
    np.testing.assert_allclose(data.stats.state_mean, states.mean(0), rtol=1e-6)
    np.testing.assert_allclose(data.stats.state_std, states.std(0), rtol=1e-4)
    returns = [returns_to_go(e.rewards, 0.99)[0] for e in train]
    assert data.stats.train_episodes == len(train)
    assert data.stats.train_steps == sum(e.length for e in train)
    assert data.stats.return_max == pytest.approx(max(returns))
    assert data.stats.return_mean == pytest.approx(np.mean(returns))


@pytest.mark.parametrize("materialize_mb", [0, 512])
def test_pipeline_windows_equal_build_windows_on_each_episode(ray_local, tmp_path, materialize_mb):
    """Streamed (cut every epoch) or cut once and kept, the windows are build_windows'."""
    from ray.data.dataset import MaterializedDataset

    episodes = make_dataset(tmp_path / "ds", n_episodes=12)
    config = DataConfig(paths=[str(tmp_path / "ds")], context_len=4, val_fraction=0.0, normalize_states=False,
                        materialize_mb=materialize_mb)
    data = build_training_data(config, seed=0)
    assert isinstance(data.train, MaterializedDataset) == (materialize_mb > 0)
    rows = data.train.take_batch(10_000, batch_format="numpy")
    last = rows["states"][:, -1, :2].astype(int)  # (episode, t) of each window's end
    assert len(last) == sum(e.length for e in episodes)
    for episode in episodes:
        ends = np.arange(episode.length)
        expected = build_windows(data.spec, episode.observations, episode.actions,
                                 returns_to_go(episode.rewards, 1.0), ends)
        picked = np.flatnonzero(last[:, 0] == episode.episode_id)
        picked = picked[np.argsort(last[picked, 1])]
        for key in expected:
            np.testing.assert_allclose(rows[key][picked], expected[key], rtol=1e-6)


def test_training_windows_come_shuffled_across_episodes(ray_local, tmp_path):
    """Blocks of consecutive steps of a few episodes make SGD batches too correlated to learn
    well: within a read, windows come in a random order (no local shuffle buffer here), which
    depends on the seed only: a new driver that resumes a run must see the same stream."""
    make_dataset(tmp_path / "ds", n_episodes=40, steps_per_file=10_000)  # one file, one read
    config = DataConfig(paths=[str(tmp_path / "ds")], context_len=3, val_fraction=0.0, normalize_states=False,
                        shuffle_files=False)

    def epoch_order(dataset):
        return [tuple(row) for row in dataset.take_batch(10_000, batch_format="numpy")["states"][:, -1, :2]]

    data = build_training_data(config, seed=0)
    first = epoch_order(data.train)
    assert len({episode for episode, _ in first[:32]}) >= 16  # one batch spans many episodes
    assert epoch_order(data.train) == first == epoch_order(build_training_data(config, seed=0).train)
    other_seed = epoch_order(build_training_data(config, seed=1).train)
    assert sorted(other_seed) == sorted(first) and other_seed != first


def test_two_workers_stream_disjoint_equal_shards_on_two_cpus(ray_local, tmp_path):
    """2 training workers x 0.5 CPU + streaming Ray Data on a 2-CPU Ray: no deadlock, each
    worker gets a disjoint, equally sized share of every training window."""
    import json

    import ray.train
    from ray.train.torch import TorchTrainer

    def record_window_ends(loop_config):  # nested, so that Ray ships it by value to workers
        rank = ray.train.get_context().get_world_rank()
        seen = []
        for batch in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=32):
            seen += batch["states"][:, -1, :2].int().tolist()
        (Path(loop_config["out"]) / f"rank{rank}.json").write_text(json.dumps(seen))

    episodes = make_dataset(tmp_path / "ds", n_episodes=30, steps_per_file=100)
    config = DataConfig(paths=[str(tmp_path / "ds")], context_len=3, normalize_states=False, val_fraction=0.1)
    data = build_training_data(config, seed=0)
    TorchTrainer(
        record_window_ends,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "runs"), name="shards",
                                       failure_config=ray.train.FailureConfig(controller_failure_limit=0)),
        datasets={"train": data.train},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    ).fit()
    shards = [set(map(tuple, json.loads((tmp_path / f"rank{r}.json").read_text()))) for r in (0, 1)]
    expected = {(e.episode_id, t) for e in episodes if not is_validation([e.episode_id], 0.1, 0)[0]
                for t in range(e.length)}
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] <= expected
    assert len(shards[0]) == len(shards[1]) >= len(expected) // 2 - 1  # equal split drops at most a remainder


def test_parquet_read_settings_apply_only_while_planning_and_user_values_win(monkeypatch):
    from dtray.data import PARQUET_READ_ENV, _parquet_read_env

    monkeypatch.delenv("RAY_DATA_PARQUET_BIN_PACKING_BYTES", raising=False)
    monkeypatch.setenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "3")
    with _parquet_read_env():
        assert os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "3"
        assert os.environ["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] == PARQUET_READ_ENV["RAY_DATA_PARQUET_BIN_PACKING_BYTES"]
    assert os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "3"
    assert "RAY_DATA_PARQUET_BIN_PACKING_BYTES" not in os.environ


def test_many_files_stream_with_one_footer_reader_and_episodes_never_queued(ray_local, tmp_path):
    """What keeps memory flat as the dataset grows: each listing of the files starts one
    footer-reading actor (Ray's default is 32 processes), the read is fused with window
    cutting so raw episodes never wait in the object store, and the look-ahead is capped."""
    import ray._private.state

    def footer_readers():
        return sum(a["ActorClassName"] == "FooterReader" for a in ray._private.state.actors().values())

    make_dataset(tmp_path / "ds", n_episodes=80, steps_per_file=40)  # ~40 files
    before = footer_readers()
    data = build_training_data(DataConfig(paths=[str(tmp_path / "ds")], val_fraction=0.0, materialize_mb=0), seed=0)
    windows = sum(len(batch["mask"]) for batch in data.train.iter_batches(batch_size=256))
    assert windows == data.stats.train_steps
    assert footer_readers() - before == 2  # the statistics pass and one epoch
    assert "ReadFilesParquetV2->MapBatches(_cut_windows)" in data.train.stats()
    assert data.train.context.execution_options.resource_limits.object_store_memory == 1024 * 2**20
