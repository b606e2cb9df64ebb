"""Check every episode of a trajectory dataset before a cluster spends hours training on it.

Files are streamed in record batches and every check is a vectorised numpy/pyarrow
operation over a batch, so memory stays bounded and big datasets validate quickly. The
first problem found raises a one-line :class:`DtrayError` naming file, episode and field.

:func:`validate` checks a whole dataset (also what only spans files: metadata, column types
and episode ids agree). :func:`check_episodes` runs the per-episode checks on any table of
episode rows: the read paths of training (the statistics pass), ``inspect`` and every writer
use it, so that a bad episode stops a command before it trains on it or writes it.
"""

from __future__ import annotations

import json
from typing import Callable

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dtray.errors import DtrayError
from dtray.format import METADATA_KEY, REQUIRED_COLUMNS, DatasetInfo, read_file_info, resolve_files

BOUND_TOLERANCE = 1e-5  # actions may exceed Box bounds by float rounding, not more
EPISODES_PER_BATCH = 64
FLOATS = (pa.float32(), pa.float64())
OBSERVATION_TYPES = FLOATS + (pa.uint8(),)


def validate(paths: str | list[str], visit: Callable[[str, pa.RecordBatch], None] | None = None) -> DatasetInfo:
    """Check schema, metadata and every episode of a dataset; return its metadata.
    ``visit(path, batch)`` sees every checked batch: tools that summarise a dataset read it once."""
    filesystem, files, info = check_files(paths)
    episode_ids = []
    for path in files:
        for batch in pq.ParquetFile(path, filesystem=filesystem).iter_batches(batch_size=EPISODES_PER_BATCH):
            check_batch(path, batch, info)
            if visit is not None:
                visit(path, batch)
            episode_ids.append((path, batch.column("episode_id").to_numpy()))
    if not episode_ids:
        raise DtrayError(f"{paths}: the dataset holds no episodes")
    check_unique_ids(episode_ids)
    return info


def check_files(paths: str | list[str]) -> tuple[pafs.FileSystem, list[str], DatasetInfo]:
    """The checks that span files, from their footers alone (cheap): every file is readable
    Parquet with the first file's metadata, the required columns and one set of column types."""
    filesystem, files = resolve_files(paths)
    info = read_file_info(filesystem, files[0])
    check_spaces(files[0], info)
    first_schema = None
    for path in files:
        try:
            schema = pq.read_schema(path, filesystem=filesystem)
        except (pa.ArrowInvalid, OSError) as err:
            raise DtrayError(f"{path}: not a readable Parquet file ({err})") from None
        check_metadata(path, schema, files[0], info)
        check_schema(path, schema, info)
        if first_schema is not None:
            check_same_types(path, schema, files[0], first_schema)
        first_schema = first_schema or schema
    return filesystem, files, info


def check_episodes(source: str, table: pa.Table | pa.RecordBatch, info: DatasetInfo) -> None:
    """The per-episode checks (column types, nulls, lengths that agree, no empty episode,
    finite values, shapes and action bounds from the spaces) on rows from ``source``."""
    if isinstance(table, pa.Table):
        table = table.combine_chunks().to_batches()[0] if table.num_rows else None
    if table is not None:
        check_schema(source, table.schema, info)
        check_batch(source, table, info)


def episode_error(path: str, episode_id, field: str, problem: str) -> DtrayError:
    return DtrayError(f"{path}: episode {episode_id}: field '{field}': {problem}")


# --- file-level checks ---------------------------------------------------------------------


def check_spaces(path: str, info: DatasetInfo) -> None:
    if not isinstance(info.observation_space, gym.spaces.Box):
        raise DtrayError(f"{path}: metadata: observation_space must be a Box, got {info.observation_space}")
    if not isinstance(info.action_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise DtrayError(f"{path}: metadata: action_space must be a Box or Discrete, got {info.action_space}")


def check_metadata(path: str, schema: pa.Schema, first_path: str, info: DatasetInfo) -> None:
    """Every file must carry the first file's metadata: one dataset, one env."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DtrayError(f"{path}: schema metadata has no 'dtray' entry (not a dtray dataset)")
    mine, first = json.loads(raw), json.loads(info.to_json())
    differing = sorted(key for key in mine.keys() | first.keys() if mine.get(key) != first.get(key))
    if differing:
        raise DtrayError(f"{path}: metadata differs from {first_path} in: {', '.join(differing)}")


def expected_types(info: DatasetInfo) -> dict[str, tuple[str, Callable[[pa.DataType], bool]]]:
    """Column -> (description, predicate on its Arrow type)."""
    def list_of(inner):
        return lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t)) and inner(t.value_type)

    def one_of(types):
        return lambda t: t in types

    observations = one_of(OBSERVATION_TYPES)
    if info.discrete:
        actions = ("list<int>", list_of(pa.types.is_integer))
    else:
        actions = ("list<list<float32|float64>>", list_of(list_of(one_of(FLOATS))))
    return {
        "episode_id": ("int", pa.types.is_integer),
        "observations": ("list<list<float32|float64|uint8>>", list_of(list_of(observations))),
        "actions": actions,
        "rewards": ("list<float32|float64>", list_of(one_of(FLOATS))),
        "terminated": ("bool", pa.types.is_boolean),
        "truncated": ("bool", pa.types.is_boolean),
        "final_observation": ("list<float32|float64|uint8>", list_of(observations)),
    }


def type_name(arrow_type: pa.DataType) -> str:
    """``list<list<float>>`` rather than Arrow's ``list<element: list<element: float>>``."""
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"list<{type_name(arrow_type.value_type)}>"
    return str(arrow_type)


def check_schema(path: str, schema: pa.Schema, info: DatasetInfo) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise DtrayError(f"{path}: missing column(s): {', '.join(missing)}")
    for name, (description, accepts) in expected_types(info).items():
        if name in schema.names and not accepts(schema.field(name).type):
            raise DtrayError(f"{path}: field '{name}': type {type_name(schema.field(name).type)}, "
                             f"expected {description}")


def check_same_types(path: str, schema: pa.Schema, first_path: str, first_schema: pa.Schema) -> None:
    """Readers (Ray Data) need one schema for the whole dataset."""
    for name in first_schema.names:
        if name not in schema.names:
            raise DtrayError(f"{path}: field '{name}': present in {first_path} but missing here")
        if schema.field(name).type != first_schema.field(name).type:
            raise DtrayError(f"{path}: field '{name}': type {type_name(schema.field(name).type)} differs "
                             f"from {type_name(first_schema.field(name).type)} in {first_path}")


def check_unique_ids(episode_ids: list[tuple[str, np.ndarray]]) -> None:
    ids = np.concatenate([batch_ids for _, batch_ids in episode_ids])
    sources = np.concatenate([np.full(len(batch_ids), i) for i, (_, batch_ids) in enumerate(episode_ids)])
    order = np.argsort(ids, kind="stable")
    repeats = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(repeats):
        first, second = order[repeats[0]], order[repeats[0] + 1]
        raise episode_error(episode_ids[sources[second]][0], ids[second], "episode_id",
                            f"duplicate id (also in {episode_ids[sources[first]][0]})")


# --- per-episode checks, vectorised over a record batch ------------------------------------


def list_rows(column: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A list column's values and, for each value, the index of the row it belongs to."""
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    return column.flatten(), np.repeat(np.arange(len(column)), lengths)


def first_row_with(path: str, ids: np.ndarray, field: str, bad_rows: np.ndarray, problem) -> None:
    """Raise for the first episode among ``bad_rows`` (one entry per bad value or step);
    ``problem(count)`` words the message from that episode's count."""
    counts = np.bincount(bad_rows, minlength=len(ids))
    if counts.any():
        row = int(np.flatnonzero(counts)[0])
        raise episode_error(path, ids[row], field, problem(int(counts[row])))


def check_nulls(path: str, ids: np.ndarray, field: str, values: pa.Array, rows: np.ndarray) -> None:
    if values.null_count:
        nulls = pc.is_null(values).to_numpy(zero_copy_only=False)
        first_row_with(path, ids, field, rows[nulls], lambda n: f"{n} null values")


def step_values(path: str, ids: np.ndarray, field: str, column: pa.Array, width: int | None):
    """Values of a list<list<x>> (or list<x> when width is None) column as (n, width)
    (or (n,)) numpy, with the row of each step; checks nulls and every step's width."""
    values, rows = list_rows(column)
    check_nulls(path, ids, field, values, rows)
    if width is None:
        return values.to_numpy(zero_copy_only=False), rows
    widths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(widths != width)
    if len(wrong):
        step, row = wrong[0], rows[wrong[0]]
        first_step_of_row = np.searchsorted(rows, row)
        raise episode_error(path, ids[row], field, f"step {step - first_step_of_row} has {widths[step]} "
                            f"values, expected {width}")
    flat, _ = list_rows(values)
    check_nulls(path, ids, field, flat, np.repeat(rows, width))
    return flat.to_numpy(zero_copy_only=False).reshape(-1, width), rows


def check_finite(path: str, ids: np.ndarray, field: str, values: np.ndarray, rows: np.ndarray) -> None:
    if values.dtype.kind == "f":
        rows_of_values = np.broadcast_to(rows.reshape(-1, *[1] * (values.ndim - 1)), values.shape)
        first_row_with(path, ids, field, rows_of_values[~np.isfinite(values)], lambda n: f"{n} NaN/inf values")


def check_action_range(path: str, ids: np.ndarray, actions: np.ndarray, rows: np.ndarray,
                       space: gym.Space) -> None:
    if isinstance(space, gym.spaces.Discrete):
        bad = (actions < space.start) | (actions >= space.start + space.n)
        valid = f"Discrete range [{space.start}, {space.start + space.n - 1}]"
    else:
        low, high = space.low.reshape(-1), space.high.reshape(-1)
        slack = BOUND_TOLERANCE * np.maximum(1.0, np.abs(np.stack([low, high])))
        bad = ((actions < low - slack[0]) | (actions > high + slack[1])).any(axis=1)
        valid = f"Box bounds [{low.min():g}, {high.max():g}]"
    first_row_with(path, ids, "actions", rows[bad], lambda n: f"{n} steps outside the {valid}")


def check_batch(path: str, batch: pa.RecordBatch, info: DatasetInfo) -> None:
    ids = batch.column("episode_id").to_numpy(zero_copy_only=False)
    for name in REQUIRED_COLUMNS:
        nulls = np.flatnonzero(pc.is_null(batch.column(name)).to_numpy(zero_copy_only=False))
        if len(nulls):
            raise episode_error(path, ids[nulls[0]], name, "null instead of a value")
    lengths = {name: pc.list_value_length(batch.column(name)).to_numpy(zero_copy_only=False)
               for name in ("observations", "actions", "rewards")}
    first_row_with(path, ids, "rewards", np.flatnonzero(lengths["rewards"] == 0),
                   lambda n: "empty episode (0 steps)")
    for name in ("observations", "actions"):
        ragged = np.flatnonzero(lengths[name] != lengths["rewards"])
        if len(ragged):
            row = ragged[0]
            raise episode_error(path, ids[row], name, f"{lengths[name][row]} steps but 'rewards' has "
                                f"{lengths['rewards'][row]}")

    obs_width = int(np.prod(info.obs_shape))
    observations, rows = step_values(path, ids, "observations", batch.column("observations"), obs_width)
    check_finite(path, ids, "observations", observations, rows)
    actions, rows = step_values(path, ids, "actions", batch.column("actions"),
                                None if info.discrete else info.act_dim)
    check_finite(path, ids, "actions", actions, rows)
    check_action_range(path, ids, actions, rows, info.action_space)
    rewards, rows = step_values(path, ids, "rewards", batch.column("rewards"), None)
    check_finite(path, ids, "rewards", rewards, rows)
    if "final_observation" in batch.schema.names:
        finals = batch.column("final_observation")
        present = np.flatnonzero(pc.is_valid(finals).to_numpy(zero_copy_only=False))
        final, rows = step_values(path, ids[present], "final_observation", finals.take(present), None)
        sizes = np.bincount(rows, minlength=len(present))
        wrong = np.flatnonzero(sizes != obs_width)
        if len(wrong):
            raise episode_error(path, ids[present][wrong[0]], "final_observation",
                                f"{sizes[wrong[0]]} values, expected {obs_width}")
        check_finite(path, ids[present], "final_observation", final, rows)
