"""Bring outside data into the trajectory format.

* ``minari:<dataset_id>``: a Minari dataset, read locally (downloaded only if missing).
  Lossless: Minari's T+1 observations become ``observations`` (the first T) and
  ``final_observation`` (the last); actions, rewards and flags keep their dtypes and values.
* ``steps:<path>``: a Parquet file or directory with one row per time step:
  ``episode_id``, ``step``, the observation as one list column ``observation`` *or* scalar
  columns ``obs_0 .. obs_<n-1>``, ``action`` (list, or scalar: an int for discrete actions),
  ``reward``, ``terminated``, ``truncated``. Env metadata comes from the ``env_id`` argument
  or, failing that, a ``dtray`` DatasetInfo JSON in the table's schema metadata.
  Tables above ``RAY_MIN_ROWS`` rows are grouped into episodes by Ray Data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dtray import __version__
from dtray.data import read_dataset
from dtray.errors import DtrayError
from dtray.format import (
    METADATA_KEY,
    DatasetInfo,
    Episode,
    episodes_to_table,
    resolve_files,
    rows_to_episodes,
    write_dataset,
)

RAY_MIN_ROWS = 1_000_000  # below this, one pyarrow pass on the driver is faster than a shuffle
STEP_COLUMNS = ("episode_id", "step", "action", "reward", "terminated", "truncated")
OBS_COLUMN = re.compile(r"obs_(\d+)$")


def convert(
    source: str,
    out_dir: str | Path,
    overwrite: bool = False,
    env_id: str | None = None,
    use_ray: bool | None = None,
) -> list[Path]:
    """Convert ``minari:<id>`` or ``steps:<path>`` into a dataset under ``out_dir``.

    ``env_id`` names the env of a steps table (or a Minari dataset without an env spec);
    ``use_ray`` forces (True) or avoids (False) Ray Data for steps tables; None decides by size.
    """
    kind, _, target = source.partition(":")
    if kind == "minari" and target:
        episodes, info = minari_episodes(target, env_id)
    elif kind == "steps" and target:
        episodes, info = steps_episodes(target, env_id, use_ray)
    else:
        raise DtrayError(f"{source}: unknown source; expected minari:<dataset_id> or steps:<path>")
    return write_dataset(episodes, info, out_dir, overwrite=overwrite, source=source)


def env_info(env_id: str, **fields) -> DatasetInfo:
    """Metadata of a registered Gymnasium env: its spaces come from the env itself."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise DtrayError(f"env_id {env_id!r}: cannot make the env ({err})") from None
    info = DatasetInfo(env_id, env.observation_space, env.action_space, **fields)
    env.close()
    return info


def check_spaces(source: str, info: DatasetInfo) -> None:
    if not isinstance(info.observation_space, gym.spaces.Box):
        raise DtrayError(f"{source}: observation space must be a Box, got {info.observation_space}")
    if not isinstance(info.action_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise DtrayError(f"{source}: action space must be a Box or Discrete, got {info.action_space}")


# --- Minari --------------------------------------------------------------------------------


def load_minari(dataset_id: str):
    """A local Minari dataset; download it only when it is not on this machine."""
    import minari

    try:
        return minari.load_dataset(dataset_id)
    except FileNotFoundError:
        pass
    try:
        return minari.load_dataset(dataset_id, download=True)
    except Exception as err:  # noqa: BLE001 - any download failure is the user's missing dataset
        raise DtrayError(f"minari:{dataset_id}: not found locally and download failed ({err})") from None


def minari_episodes(dataset_id: str, env_id: str | None) -> tuple[Iterator[Episode], DatasetInfo]:
    dataset = load_minari(dataset_id)
    spec = dataset.env_spec
    if spec is None and env_id is None:
        raise DtrayError(f"minari:{dataset_id}: dataset has no env spec; pass env_id (--env-id)")
    metadata = dataset.storage.metadata
    info = DatasetInfo(
        env_id=env_id or spec.id,
        observation_space=dataset.observation_space,
        action_space=dataset.action_space,
        env_kwargs=dict(spec.kwargs) if spec is not None and env_id is None else {},
        ref_min_score=metadata.get("ref_min_score"),
        ref_max_score=metadata.get("ref_max_score"),
        source={"converter": "minari", "dataset_id": dataset_id,
                "minari_version": metadata.get("minari_version"), "dtray_version": __version__},
    )
    check_spaces(f"minari:{dataset_id}", info)

    def episodes() -> Iterator[Episode]:
        for episode in dataset.iterate_episodes():
            observations = np.asarray(episode.observations)
            yield Episode(
                observations=observations[:-1],
                actions=np.asarray(episode.actions),
                rewards=np.asarray(episode.rewards),
                terminated=bool(episode.terminations[-1]),
                truncated=bool(episode.truncations[-1]),
                final_observation=observations[-1],
                episode_id=int(episode.id),
            )

    return episodes(), info


# --- step tables ---------------------------------------------------------------------------


def steps_info(path: str, schema: pa.Schema, env_id: str | None) -> DatasetInfo:
    source = {"converter": "steps", "path": path, "dtray_version": __version__}
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if env_id is not None:
        info = env_info(env_id, source=source)
    elif raw is not None:
        info = DatasetInfo.from_json(raw)
        info.source = {**info.source, **source}
    else:
        raise DtrayError(f"steps:{path}: no env given: pass env_id (--env-id) or store DatasetInfo "
                         "JSON under the 'dtray' schema metadata key")
    check_spaces(f"steps:{path}", info)
    return info


def observation_columns(path: str, names: list[str]) -> list[str]:
    """``["observation"]``, or ``obs_0 .. obs_<n-1>`` in numeric order."""
    if "observation" in names:
        return ["observation"]
    numbered = sorted((int(m.group(1)), name) for name in names if (m := OBS_COLUMN.match(name)))
    if not numbered:
        raise DtrayError(f"steps:{path}: missing column(s): observation (or obs_0 .. obs_<n-1>)")
    if [i for i, _ in numbered] != list(range(len(numbered))):
        raise DtrayError(f"steps:{path}: observation columns must be obs_0 .. obs_{len(numbered) - 1}, "
                         f"got {', '.join(name for _, name in numbered)}")
    return [name for _, name in numbered]


def check_step_columns(path: str, names: list[str]) -> list[str]:
    """The columns to read; a clear error for missing ones."""
    missing = [name for name in STEP_COLUMNS if name not in names]
    if missing:
        raise DtrayError(f"steps:{path}: missing column(s): {', '.join(missing)}")
    return list(STEP_COLUMNS) + observation_columns(path, names)


def column_matrix(path: str, table: pa.Table, names: list[str], width: int, field: str) -> np.ndarray:
    """One list column or several scalar columns -> (steps, width) numpy."""
    if len(names) > 1 or not pa.types.is_list(table.schema.field(names[0]).type):
        matrix = np.column_stack([table.column(name).to_numpy() for name in names])
    else:
        column = table.column(names[0]).combine_chunks()
        sizes = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(sizes) and (sizes != width).any():
            row = int(np.flatnonzero(sizes != width)[0])
            episode = table.column("episode_id")[row].as_py()
            raise DtrayError(f"steps:{path}: episode {episode}: field '{field}': {sizes[row]} values per "
                             f"step, expected {width}")
        matrix = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    if matrix.shape[1] != width:
        raise DtrayError(f"steps:{path}: field '{field}': {matrix.shape[1]} values per step, expected {width}")
    return matrix


def steps_to_episodes(table: pa.Table, info: DatasetInfo, path: str) -> list[Episode]:
    """Rows of whole episodes (any order) -> episodes: sort, check steps, slice arrays."""
    table = table.sort_by([("episode_id", "ascending"), ("step", "ascending")])
    ids = table.column("episode_id").to_numpy()
    steps = table.column("step").to_numpy()
    same_episode = ids[1:] == ids[:-1]
    gaps = np.flatnonzero(same_episode & (np.diff(steps) != 1))
    if len(gaps):
        i = gaps[0]
        raise DtrayError(f"steps:{path}: episode {ids[i]}: field 'step': steps are not contiguous "
                         f"({steps[i]} is followed by {steps[i + 1]})")
    obs_names = observation_columns(path, table.column_names)
    observations = column_matrix(path, table, obs_names, int(np.prod(info.obs_shape)), "observation")
    observations = observations.reshape(-1, *info.obs_shape)
    if info.discrete:
        actions = table.column("action").to_numpy().astype(np.int64)
    else:
        actions = column_matrix(path, table, ["action"], info.act_dim, "action")
    rewards = table.column("reward").to_numpy()
    terminated = table.column("terminated").to_numpy()
    truncated = table.column("truncated").to_numpy()
    starts = np.flatnonzero(np.concatenate([[True], ~same_episode]))
    ends = np.append(starts[1:], len(ids))
    return [
        Episode(observations[a:b], actions[a:b], rewards[a:b], bool(terminated[b - 1]),
                bool(truncated[b - 1]), episode_id=int(ids[a]))
        for a, b in zip(starts, ends)
    ]


def _episode_rows(group: pa.Table, info: DatasetInfo, path: str) -> pa.Table:
    """Ray Data ``map_groups`` body: one episode's steps -> one episode row."""
    return episodes_to_table(steps_to_episodes(group, info, path), info)


def steps_episodes(path: str, env_id: str | None, use_ray: bool | None) -> tuple[Iterator[Episode], DatasetInfo]:
    filesystem, files = resolve_files(path)
    schema = pq.read_schema(files[0], filesystem=filesystem)
    columns = check_step_columns(path, schema.names)
    info = steps_info(path, schema, env_id)
    if use_ray is None:
        rows = sum(pq.ParquetFile(f, filesystem=filesystem).metadata.num_rows for f in files)
        use_ray = rows > RAY_MIN_ROWS
    if not use_ray:
        table = pa.concat_tables(pq.read_table(f, filesystem=filesystem, columns=columns) for f in files)
        return iter(steps_to_episodes(table, info, path)), info

    episode_rows = (
        read_dataset([path], columns)
        .groupby("episode_id")
        .map_groups(_episode_rows, fn_kwargs={"info": info, "path": path}, batch_format="pyarrow")
        .sort("episode_id")
    )
    batches = episode_rows.iter_batches(batch_format="pyarrow", batch_size=64)
    return (episode for batch in batches for episode in rows_to_episodes(batch, info)), info
