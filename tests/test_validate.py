"""validate(): every kind of broken file is caught with a message naming file, episode, field."""

import re

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dtray.errors import DtrayError
from dtray.format import DatasetInfo, Episode, episodes_to_table, write_dataset
from dtray.validate import validate

BOX_INFO = DatasetInfo(
    env_id="Pendulum-v1",
    observation_space=gym.spaces.Box(-8.0, 8.0, (3,), np.float32),
    action_space=gym.spaces.Box(-2.0, 2.0, (1,), np.float32),
)
DISCRETE_INFO = DatasetInfo(
    env_id="CartPole-v1",
    observation_space=gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
    action_space=gym.spaces.Discrete(2),
)


def make_episodes(info: DatasetInfo, count: int = 4, length: int = 5, first_id: int = 0) -> list[Episode]:
    rng = np.random.default_rng(first_id)
    episodes = []
    for i in range(count):
        if info.discrete:
            actions = rng.integers(0, info.action_space.n, length)
        else:
            actions = rng.uniform(-2, 2, (length, info.act_dim)).astype(np.float32)
        episodes.append(Episode(
            observations=rng.normal(size=(length, *info.obs_shape)).astype(np.float32),
            actions=actions,
            rewards=rng.normal(size=length),
            truncated=True,
            final_observation=rng.normal(size=info.obs_shape).astype(np.float32),
            episode_id=first_id + i,
        ))
    return episodes


def write_table(directory, table: pa.Table, name: str = "part-00000.parquet") -> str:
    directory.mkdir(exist_ok=True)
    path = directory / name
    pq.write_table(table, path)
    return str(path)


def expect_error(path, message: str) -> None:
    with pytest.raises(DtrayError, match=re.escape(message)):
        validate(str(path))


def test_valid_datasets_pass(tmp_path):
    for info in (BOX_INFO, DISCRETE_INFO):
        out = tmp_path / info.env_id
        write_dataset(make_episodes(info, count=30), info, out, steps_per_file=40)
        assert len(list(out.glob("*.parquet"))) > 1
        assert validate(str(out)).env_id == info.env_id


def test_nan_rewards_name_file_episode_and_field(tmp_path):
    episodes = make_episodes(BOX_INFO, count=20)
    episodes[17].rewards[[0, 2, 4]] = [np.nan, np.inf, -np.inf]
    path = write_table(tmp_path / "x", episodes_to_table(episodes, BOX_INFO))
    expect_error(tmp_path / "x", f"{path}: episode 17: field 'rewards': 3 NaN/inf values")


@pytest.mark.parametrize("field", ["observations", "actions", "final_observation"])
def test_nonfinite_values_in_any_float_field(tmp_path, field):
    episodes = make_episodes(BOX_INFO)
    getattr(episodes[2], field).reshape(-1)[1] = np.nan
    write_table(tmp_path, episodes_to_table(episodes, BOX_INFO))
    expect_error(tmp_path, f"episode 2: field '{field}': 1 NaN/inf values")


def test_missing_column(tmp_path):
    table = episodes_to_table(make_episodes(BOX_INFO), BOX_INFO).drop_columns(["rewards"])
    path = write_table(tmp_path, table)
    expect_error(tmp_path, f"{path}: missing column(s): rewards")


def test_wrong_dtype(tmp_path):
    table = episodes_to_table(make_episodes(BOX_INFO), BOX_INFO)
    as_text = table.column("rewards").cast(pa.list_(pa.string()))
    table = table.set_column(table.schema.get_field_index("rewards"), "rewards", as_text)
    path = write_table(tmp_path, table)
    expect_error(tmp_path, f"{path}: field 'rewards': type list<string>, expected list<float32|float64>")


def test_ragged_episode(tmp_path):
    episodes = make_episodes(BOX_INFO)
    episodes[1].actions = episodes[1].actions[:-1]
    write_table(tmp_path, episodes_to_table(episodes, BOX_INFO))
    expect_error(tmp_path, "episode 1: field 'actions': 4 steps but 'rewards' has 5")


def test_empty_episode(tmp_path):
    table = episodes_to_table(make_episodes(BOX_INFO, count=2), BOX_INFO)
    empty_list = pa.array([[]], table.schema.field("rewards").type)
    empty_obs = pa.array([[]], table.schema.field("observations").type)
    empty_act = pa.array([[]], table.schema.field("actions").type)
    row = pa.table({
        "episode_id": pa.array([9], pa.int64()), "observations": empty_obs, "actions": empty_act,
        "rewards": empty_list, "terminated": [False], "truncated": [True],
        "final_observation": pa.array([[0.0, 0.0, 0.0]], pa.list_(pa.float32())),
    })
    table = pa.concat_tables([table, row.cast(table.schema)])
    write_table(tmp_path, table)
    expect_error(tmp_path, "episode 9: field 'rewards': empty episode (0 steps)")


def test_observation_shape_differs_from_metadata(tmp_path):
    write_dataset(make_episodes(BOX_INFO), BOX_INFO, tmp_path / "d")
    wide = DatasetInfo("Pendulum-v1", gym.spaces.Box(-8.0, 8.0, (4,), np.float32), BOX_INFO.action_space)
    episodes = make_episodes(wide, first_id=10)
    table = episodes_to_table(episodes, wide).replace_schema_metadata({b"dtray": BOX_INFO.to_json().encode()})
    path = write_table(tmp_path / "d", table, "part-00001.parquet")
    expect_error(tmp_path / "d", f"{path}: episode 10: field 'observations': step 0 has 4 values, expected 3")


def test_metadata_differs_across_files(tmp_path):
    write_dataset(make_episodes(BOX_INFO), BOX_INFO, tmp_path / "d")
    other = DatasetInfo(BOX_INFO.env_id, BOX_INFO.observation_space, BOX_INFO.action_space, ref_max_score=-150.0)
    path = write_table(tmp_path / "d", episodes_to_table(make_episodes(other, first_id=10), other),
                       "part-00001.parquet")
    expect_error(tmp_path / "d", f"{path}: metadata differs from {tmp_path / 'd' / 'part-00000.parquet'} "
                                 "in: ref_max_score")


def test_column_types_differ_across_files(tmp_path):
    write_dataset(make_episodes(BOX_INFO), BOX_INFO, tmp_path / "d")
    episodes = make_episodes(BOX_INFO, first_id=10)
    for episode in episodes:
        episode.observations = episode.observations.astype(np.float64)
    write_table(tmp_path / "d", episodes_to_table(episodes, BOX_INFO), "part-00001.parquet")
    expect_error(tmp_path / "d", "field 'observations': type list<list<double>> differs from list<list<float>>")


def test_box_actions_outside_bounds(tmp_path):
    episodes = make_episodes(BOX_INFO)
    episodes[0].actions[0] = 2.0 + 1e-7  # float rounding is tolerated
    episodes[3].actions[[1, 2]] = [[2.5], [-3.0]]
    write_table(tmp_path, episodes_to_table(episodes, BOX_INFO))
    expect_error(tmp_path, "episode 3: field 'actions': 2 steps outside the Box bounds [-2, 2]")


def test_discrete_actions_outside_range(tmp_path):
    episodes = make_episodes(DISCRETE_INFO)
    episodes[2].actions[4] = 2
    write_table(tmp_path, episodes_to_table(episodes, DISCRETE_INFO))
    expect_error(tmp_path, "episode 2: field 'actions': 1 steps outside the Discrete range [0, 1]")


def test_duplicate_episode_ids_across_files(tmp_path):
    write_dataset(make_episodes(BOX_INFO), BOX_INFO, tmp_path / "d")
    path = write_table(tmp_path / "d", episodes_to_table(make_episodes(BOX_INFO, first_id=3), BOX_INFO),
                       "part-00001.parquet")
    expect_error(tmp_path / "d", f"{path}: episode 3: field 'episode_id': duplicate id")
