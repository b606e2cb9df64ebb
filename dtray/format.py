"""The trajectory Parquet format: one row per episode (see docs/data-format.md).

Columns
    episode_id         int64
    observations       list<list<float32|float64|uint8>>  T x prod(obs_shape), row-major
    actions            list<list<float32|float64>> (T x act_dim) or list<int64> (T) if discrete
    rewards            list<float32|float64>              T
    terminated         bool     the episode ended in a terminal state
    truncated          bool     the episode was cut (time limit, end of logging)
    final_observation  list<...> prod(obs_shape), optional: the observation after the last step

Dataset metadata (env id, spaces, reference returns, provenance) is JSON under the
``dtray`` key of the Parquet schema metadata, identical in every file of a dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from minari.serialization import deserialize_space, serialize_space

from dtray.errors import DtrayError

METADATA_KEY = b"dtray"
FORMAT_VERSION = 1
REQUIRED_COLUMNS = ("episode_id", "observations", "actions", "rewards", "terminated", "truncated")
FILE_OBSERVATION_BYTES = 64 * 2**20  # per written file


@dataclass
class DatasetInfo:
    """What a dataset is about: everything needed to rebuild its env and score returns."""

    env_id: str
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box | gym.spaces.Discrete
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    ref_min_score: float | None = None  # mean return of a random policy
    ref_max_score: float | None = None  # mean return of an expert policy
    source: dict[str, Any] = field(default_factory=dict)  # how the data was made

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_space, gym.spaces.Discrete)

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.observation_space.shape)

    @property
    def act_dim(self) -> int:
        """Action vector size; for discrete actions, the number of choices."""
        if self.discrete:
            return int(self.action_space.n)
        return int(np.prod(self.action_space.shape))

    def normalized_score(self, ret: float | np.ndarray) -> float | np.ndarray:
        """D4RL-style score: 0 = random, 100 = expert (NaN without references)."""
        if self.ref_min_score is None or self.ref_max_score is None:
            return np.nan * np.asarray(ret, dtype=float)
        return 100.0 * (ret - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)

    def to_json(self) -> str:
        data = asdict(self)
        data["observation_space"] = json.loads(serialize_space(self.observation_space))
        data["action_space"] = json.loads(serialize_space(self.action_space))
        data["format_version"] = FORMAT_VERSION
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> DatasetInfo:
        data = json.loads(text)
        data.pop("format_version", None)
        data["observation_space"] = deserialize_space(json.dumps(data["observation_space"]))
        data["action_space"] = deserialize_space(json.dumps(data["action_space"]))
        return cls(**data)


@dataclass
class Episode:
    observations: np.ndarray  # (T, *obs_shape)
    actions: np.ndarray  # (T, act_dim) float or (T,) int
    rewards: np.ndarray  # (T,)
    terminated: bool = False
    truncated: bool = False
    final_observation: np.ndarray | None = None
    episode_id: int = 0

    @property
    def length(self) -> int:
        return len(self.rewards if self.rewards is not None else self.observations)


def _list_of_rows(arrays: list[np.ndarray | None], width: int) -> pa.Array:
    """Per-episode arrays (T_i, width) -> list<list<x>>, or (T_i,) -> list<x> when width == 0,
    built from flat buffers without Python loops over steps. ``None`` becomes a null row."""
    present = [a for a in arrays if a is not None]
    lengths = np.array([0 if a is None else len(a) for a in arrays], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    if present:
        flat = np.concatenate([a.reshape(len(a), max(width, 1)) for a in present])
    else:
        flat = np.zeros((0, max(width, 1)), dtype=np.float32)
    mask = pa.array([a is None for a in arrays])
    if width == 0:
        return pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1)), mask=mask)
    inner_offsets = np.arange(0, flat.shape[0] * width + 1, width, dtype=np.int32)
    inner = pa.ListArray.from_arrays(inner_offsets, pa.array(flat.reshape(-1)))
    return pa.ListArray.from_arrays(offsets, inner, mask=mask)


def episodes_to_table(episodes: list[Episode], info: DatasetInfo) -> pa.Table:
    obs_width = int(np.prod(info.obs_shape))
    if info.discrete:
        actions = _list_of_rows([e.actions.astype(np.int64).reshape(-1) for e in episodes], 0)
    else:
        actions = _list_of_rows([e.actions for e in episodes], info.act_dim)
    columns = {
        "episode_id": pa.array([e.episode_id for e in episodes], pa.int64()),
        "observations": _list_of_rows([e.observations for e in episodes], obs_width),
        "actions": actions,
        "rewards": _list_of_rows([e.rewards.reshape(-1) for e in episodes], 0),
        "terminated": pa.array([bool(e.terminated) for e in episodes], pa.bool_()),
        "truncated": pa.array([bool(e.truncated) for e in episodes], pa.bool_()),
    }
    if any(e.final_observation is not None for e in episodes):
        finals = [None if e.final_observation is None else e.final_observation.reshape(-1) for e in episodes]
        columns["final_observation"] = _list_of_rows(finals, 0)
    table = pa.table(columns)
    return table.replace_schema_metadata({METADATA_KEY: info.to_json().encode()})


def write_dataset(
    episodes: Iterable[Episode],
    info: DatasetInfo,
    out_dir: str | Path,
    steps_per_file: int = 100_000,
    overwrite: bool = False,
    source: str | None = None,
) -> list[Path]:
    """Write episodes as Parquet files under ``out_dir`` atomically.

    Every file's episodes pass :func:`dtray.validate.check_episodes` first (errors name
    ``source``, default the file being written). Files go to a hidden sibling directory, which
    is renamed into place only once every file is complete and valid, so a crash or a bad
    episode never leaves a half-written dataset behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DtrayError(f"{out_dir}: already exists (pass --overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        names: list[str] = []
        chunk: list[Episode] = []
        chunk_steps = 0
        # Arrow list offsets are int32: keep each file under 2**31 observation values; and keep
        # a file's observations within FILE_OBSERVATION_BYTES, since a file is read whole (images)
        obs_values = int(np.prod(info.obs_shape))
        obs_bytes = obs_values * info.observation_space.dtype.itemsize
        steps_per_file = min(steps_per_file, max(1, 2**30 // obs_values), max(1, FILE_OBSERVATION_BYTES // obs_bytes))
        for episode in episodes:
            chunk.append(episode)
            chunk_steps += episode.length
            if chunk_steps >= steps_per_file:
                names.append(_write_chunk(chunk, info, tmp_dir, len(names), source))
                chunk, chunk_steps = [], 0
        if chunk or not names:
            names.append(_write_chunk(chunk, info, tmp_dir, len(names), source))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return [out_dir / name for name in names]


def _write_chunk(chunk: list[Episode], info: DatasetInfo, directory: Path, index: int, source: str | None) -> str:
    from dtray.validate import check_episodes  # validate imports this module

    name = f"part-{index:05d}.parquet"
    table = episodes_to_table(chunk, info)
    check_episodes(source or name, table, info)
    pq.write_table(table, directory / name, compression="zstd")  # frames: 28% smaller than snappy
    return name


def resolve_files(paths: str | list[str]) -> tuple[pafs.FileSystem, list[str]]:
    """Expand dataset paths (dirs, files, any pyarrow URI) into a sorted list of Parquet files."""
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise DtrayError("no dataset paths given")
    filesystem: pafs.FileSystem | None = None
    files: list[str] = []
    for path in paths:
        try:
            fs, fs_path = pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, ValueError):
            fs, fs_path = pafs.LocalFileSystem(), os.path.abspath(path)
        filesystem = filesystem or fs
        kind = fs.get_file_info(fs_path).type
        if kind == pafs.FileType.NotFound:
            raise DtrayError(f"{path}: no such file or directory")
        if kind == pafs.FileType.Directory:
            selector = pafs.FileSelector(fs_path, recursive=True)
            found = sorted(
                info.path
                for info in fs.get_file_info(selector)
                if info.path.endswith(".parquet") and "/." not in info.path[len(fs_path):]
            )
            if not found:
                raise DtrayError(f"{path}: directory holds no .parquet files")
            files.extend(found)
        else:
            files.append(fs_path)
    return filesystem, files


def read_info(paths: str | list[str]) -> DatasetInfo:
    """Dataset metadata, from the first file (the validator checks that all files agree)."""
    filesystem, files = resolve_files(paths)
    return read_file_info(filesystem, files[0])


def read_file_info(filesystem: pafs.FileSystem, path: str) -> DatasetInfo:
    try:
        schema = pq.read_schema(path, filesystem=filesystem)
    except (pa.ArrowInvalid, OSError) as err:
        raise DtrayError(f"{path}: not a readable Parquet file ({err})") from None
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DtrayError(f"{path}: schema metadata has no 'dtray' entry (not a dtray dataset)")
    try:
        return DatasetInfo.from_json(raw)
    except (ValueError, KeyError, TypeError) as err:
        raise DtrayError(f"{path}: invalid 'dtray' schema metadata: {err}") from None


def rows_to_episodes(table: pa.Table | dict[str, Any], info: DatasetInfo) -> Iterator[Episode]:
    """Decode episode rows (a pyarrow table or a Ray Data pyarrow batch) into numpy episodes.

    Columns that were not read (projection) come back as None.
    """
    if isinstance(table, dict):
        table = pa.table(table)
    columns = {name: table.column(name).combine_chunks() for name in table.column_names}

    def matrix(name: str, i: int, shape: tuple[int, ...]) -> np.ndarray | None:
        column = columns.get(name)
        if column is None or not column[i].is_valid:
            return None
        return _row_matrix(column, i).reshape(shape)

    def flag(name: str, i: int) -> bool:
        return name in columns and bool(columns[name][i].as_py())

    action_shape = (-1,) if info.discrete else (-1, info.act_dim)
    for i in range(table.num_rows):
        yield Episode(
            observations=matrix("observations", i, (-1, *info.obs_shape)),
            actions=matrix("actions", i, action_shape),
            rewards=matrix("rewards", i, (-1,)),
            terminated=flag("terminated", i),
            truncated=flag("truncated", i),
            final_observation=matrix("final_observation", i, info.obs_shape),
            episode_id=int(columns["episode_id"][i].as_py()),
        )


def _row_matrix(column: pa.ListArray, i: int) -> np.ndarray:
    """Row i of a list<x> or list<list<x>> column as a (T,) or (T, d) numpy array (zero-copy)."""
    row = column[i].values
    if pa.types.is_list(row.type) or pa.types.is_large_list(row.type):
        length = len(row)
        flat = row.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(length, -1) if length else flat.reshape(0, 0)
    return row.to_numpy(zero_copy_only=False)


def read_episodes(paths: str | list[str]) -> Iterator[Episode]:
    """Stream every episode of a dataset, file by file (for tools and tests, not training)."""
    filesystem, files = resolve_files(paths)
    for path in files:
        info = read_file_info(filesystem, path)
        for batch in pq.ParquetFile(path, filesystem=filesystem).iter_batches(batch_size=256):
            yield from rows_to_episodes(pa.Table.from_batches([batch]), info)
