"""Converters: Minari -> Parquet is lossless; step tables -> episodes round-trip; bad input is a user error."""

import gymnasium as gym
import minari
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from minari.data_collector import EpisodeBuffer

from dtray.convert import convert
from dtray.errors import DtrayError
from dtray.format import DatasetInfo, read_episodes, read_info
from dtray.validate import validate


@pytest.fixture
def minari_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path


def random_buffers(env_id: str, lengths: list[int]) -> list[EpisodeBuffer]:
    """Random-action episodes of the given lengths; the last is cut short (truncated) unless it ended."""
    env = gym.make(env_id)
    env.action_space.seed(0)
    buffers = []
    for i, length in enumerate(lengths):
        obs, _ = env.reset(seed=i)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        for t in range(length):
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated or (t == length - 1 and not terminated))
            if terminated or truncated:
                break
        buffers.append(EpisodeBuffer(observations=np.array(observations), actions=np.array(actions),
                                     rewards=np.array(rewards), terminations=np.array(terminations),
                                     truncations=np.array(truncations)))
    return buffers


def make_minari(dataset_id: str, env_id: str, data_format: str, **scores):
    return minari.create_dataset_from_buffers(
        dataset_id, random_buffers(env_id, [5, 12, 40]), env=env_id, data_format=data_format,
        eval_env=env_id, algorithm_name="random", author="dtray tests", author_email="tests@dtray", code_permalink="-",
        description="test data", **scores,
    )


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_minari_conversion_is_lossless(minari_home, data_format, env_id):
    dataset_id = f"test/{env_id.split('-')[0].lower()}/random-v0"
    dataset = make_minari(dataset_id, env_id, data_format, ref_min_score=-1.5, ref_max_score=7.0)
    out = minari_home / "converted"
    convert(f"minari:{dataset_id}", out)

    info = validate(str(out))
    assert info.env_id == env_id
    assert info.observation_space == dataset.observation_space and info.action_space == dataset.action_space
    assert (info.ref_min_score, info.ref_max_score) == (-1.5, 7.0)
    assert info.source["dataset_id"] == dataset_id
    converted = list(read_episodes(str(out)))
    assert len(converted) == dataset.total_episodes
    for original, episode in zip(dataset.iterate_episodes(), converted):
        assert episode.episode_id == original.id
        for ours, theirs in ((episode.observations, original.observations[:-1]),
                             (episode.final_observation, original.observations[-1]),
                             (episode.actions, original.actions),
                             (episode.rewards, original.rewards)):
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
            np.testing.assert_array_equal(ours, theirs)
        assert episode.terminated == original.terminations[-1]
        assert episode.truncated == original.truncations[-1]


def test_minari_without_reference_scores(minari_home):
    make_minari("test/pendulum/plain-v0", "Pendulum-v1", "arrow")
    convert("minari:test/pendulum/plain-v0", minari_home / "out")
    info = read_info(str(minari_home / "out"))
    assert info.ref_min_score is None and info.ref_max_score is None


# --- step tables ---------------------------------------------------------------------------


def episode_arrays(rng, lengths, obs_dim, discrete):
    return [
        {
            "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "actions": rng.integers(0, 2, n) if discrete else rng.uniform(-2, 2, (n, 1)).astype(np.float32),
            "rewards": rng.normal(size=n),
            "terminated": i % 2 == 0,
        }
        for i, n in enumerate(lengths)
    ]


def steps_table(episodes, obs_as_columns: bool, shuffle_seed: int = 0) -> pa.Table:
    """One row per step, rows shuffled: the converter must sort them back."""
    ids = np.concatenate([np.full(len(e["rewards"]), i + 100) for i, e in enumerate(episodes)])
    steps = np.concatenate([np.arange(len(e["rewards"])) for e in episodes])
    last = np.concatenate([np.arange(len(e["rewards"])) == len(e["rewards"]) - 1 for e in episodes])
    terminal = np.concatenate([np.full(len(e["rewards"]), e["terminated"]) for e in episodes])
    observations = np.concatenate([e["observations"] for e in episodes])
    actions = np.concatenate([e["actions"] for e in episodes])
    columns = {"episode_id": ids, "step": steps}
    if obs_as_columns:
        columns.update({f"obs_{i}": observations[:, i] for i in range(observations.shape[1])})
    else:
        columns["observation"] = list(observations)
    columns.update({
        "action": actions if actions.ndim == 1 else list(actions),
        "reward": np.concatenate([e["rewards"] for e in episodes]),
        "terminated": last & terminal,
        "truncated": last & ~terminal,
    })
    table = pa.table(columns)
    return table.take(np.random.default_rng(shuffle_seed).permutation(table.num_rows))


def assert_same_episodes(out, episodes):
    converted = list(read_episodes(str(out)))
    assert [e.episode_id for e in converted] == [i + 100 for i in range(len(episodes))]
    for original, episode in zip(episodes, converted):
        np.testing.assert_array_equal(episode.observations, original["observations"])
        np.testing.assert_array_equal(episode.actions, original["actions"])
        np.testing.assert_array_equal(episode.rewards, original["rewards"])
        assert (episode.terminated, episode.truncated) == (original["terminated"], not original["terminated"])


@pytest.mark.parametrize("use_ray", [False, True])
def test_steps_round_trip_list_observations_env_id(ray_local, tmp_path, use_ray):
    episodes = episode_arrays(np.random.default_rng(0), [4, 9, 1, 6], obs_dim=3, discrete=False)
    pq.write_table(steps_table(episodes, obs_as_columns=False), tmp_path / "steps.parquet")
    out = tmp_path / "out"
    convert(f"steps:{tmp_path / 'steps.parquet'}", out, env_id="Pendulum-v1", use_ray=use_ray)
    assert validate(str(out)).env_id == "Pendulum-v1"
    assert_same_episodes(out, episodes)


def test_steps_round_trip_scalar_columns_schema_metadata(tmp_path):
    episodes = episode_arrays(np.random.default_rng(1), [7, 3, 5], obs_dim=4, discrete=True)
    env = gym.make("CartPole-v1")
    info = DatasetInfo("CartPole-v1", env.observation_space, env.action_space, ref_max_score=500.0)
    table = steps_table(episodes, obs_as_columns=True)
    table = table.replace_schema_metadata({b"dtray": info.to_json().encode()})
    (tmp_path / "steps").mkdir()
    pq.write_table(table.slice(0, 6), tmp_path / "steps" / "a.parquet")
    pq.write_table(table.slice(6), tmp_path / "steps" / "b.parquet")
    convert(f"steps:{tmp_path / 'steps'}", tmp_path / "out")
    assert read_info(str(tmp_path / "out")).ref_max_score == 500.0
    assert_same_episodes(tmp_path / "out", episodes)


@pytest.mark.parametrize("use_ray", [False, True])
def test_gap_in_steps_is_a_user_error(ray_local, tmp_path, use_ray):
    episodes = episode_arrays(np.random.default_rng(0), [4, 6], obs_dim=3, discrete=False)
    table = steps_table(episodes, obs_as_columns=False)
    table = table.filter(pa.compute.invert(pa.compute.and_(
        pa.compute.equal(table["episode_id"], 101), pa.compute.equal(table["step"], 3))))
    pq.write_table(table, tmp_path / "steps.parquet")
    with pytest.raises(DtrayError, match=r"episode 101: field 'step': steps are not contiguous "
                                         r"\(2 is followed by 4\)"):
        convert(f"steps:{tmp_path / 'steps.parquet'}", tmp_path / "out", env_id="Pendulum-v1",
                use_ray=use_ray)
    assert not (tmp_path / "out").exists()


def test_missing_column_and_missing_env_are_user_errors(tmp_path):
    episodes = episode_arrays(np.random.default_rng(0), [3], obs_dim=3, discrete=False)
    table = steps_table(episodes, obs_as_columns=False)
    pq.write_table(table.drop_columns(["reward"]), tmp_path / "no_reward.parquet")
    with pytest.raises(DtrayError, match=r"no_reward.parquet: missing column\(s\): reward"):
        convert(f"steps:{tmp_path / 'no_reward.parquet'}", tmp_path / "out", env_id="Pendulum-v1")
    pq.write_table(table, tmp_path / "no_env.parquet")
    with pytest.raises(DtrayError, match="no env given"):
        convert(f"steps:{tmp_path / 'no_env.parquet'}", tmp_path / "out")
    with pytest.raises(DtrayError, match="unknown source"):
        convert(f"csv:{tmp_path}", tmp_path / "out")


def test_wrong_observation_width_is_a_user_error(tmp_path):
    episodes = episode_arrays(np.random.default_rng(0), [3, 2], obs_dim=4, discrete=False)
    pq.write_table(steps_table(episodes, obs_as_columns=False), tmp_path / "steps.parquet")
    with pytest.raises(DtrayError, match="field 'observation': 4 values per step, expected 3"):
        convert(f"steps:{tmp_path / 'steps.parquet'}", tmp_path / "out", env_id="Pendulum-v1")
