"""Trajectory Parquet -> Ray Data -> windowed return-to-go batches.

The context-window convention lives in exactly one function, :func:`build_windows`,
used by the training pipeline (many windows per episode) and by inference
(:class:`LiveContexts`, one window per live episode). Convention:

* a window *ending* at step t holds steps ``max(0, t-K+1) .. t`` of one episode;
* shorter windows are **left**-padded: padded steps have mask 0 and zeros everywhere;
* ``returns_to_go[t] = sum_{t'>=t} gamma^(t'-t) r_t'`` (includes r_t), divided by rtg_scale;
* ``timesteps`` are absolute step indices, clipped to ``max_ep_len - 1``;
* states are normalised with the dataset's per-dimension mean/std (vector observations).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from dtray.config import DataConfig
from dtray.errors import DtrayError
from dtray.format import REQUIRED_COLUMNS, DatasetInfo, resolve_files, rows_to_episodes
from dtray.validate import check_episodes, check_files, check_unique_ids

PATH_COLUMN = "path"  # Ray Data's name for the file a row was read from


@dataclass(frozen=True)
class WindowSpec:
    """Everything that turns raw episode arrays into model inputs; saved in checkpoints."""

    context_len: int
    max_ep_len: int
    rtg_scale: float
    gamma: float
    state_mean: tuple[float, ...] | None = None  # None: states are used as they are
    state_std: tuple[float, ...] | None = None

    @classmethod
    def from_config(cls, config: DataConfig, stats: NormStats | None) -> WindowSpec:
        use_stats = config.normalize_states and stats is not None and stats.state_mean is not None  # none for images
        return cls(
            context_len=config.context_len,
            max_ep_len=config.max_ep_len,
            rtg_scale=config.rtg_scale,
            gamma=config.gamma,
            state_mean=tuple(stats.state_mean) if use_stats else None,
            state_std=tuple(stats.state_std) if use_stats else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowSpec:
        data = dict(data)
        for key in ("state_mean", "state_std"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """``R_t = r_t + gamma * R_{t+1}``, computed backwards in float64 (exact for gamma=1)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if gamma == 1.0:
        return np.cumsum(rewards[::-1])[::-1].copy()
    out = np.empty_like(rewards)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def next_return_to_go(rtg: np.ndarray | float, reward: np.ndarray | float, gamma: float):
    """Inference update ``R_{t+1} = (R_t - r_t) / gamma`` (the inverse of the recursion above)."""
    return (rtg - reward) / gamma


def build_windows(
    spec: WindowSpec,
    states: np.ndarray,
    actions: np.ndarray,
    rtg: np.ndarray,
    ends: np.ndarray,
    starts: np.ndarray | int = 0,
    first_timestep: np.ndarray | int = 0,
) -> dict[str, np.ndarray]:
    """Cut windows of length K ending at each row in ``ends``.

    ``states`` (T, *obs_shape), ``actions`` (T, act_dim) or (T,), ``rtg`` (T,) unscaled: one
    episode, or several laid back to back, in which case ``starts`` gives the row where each
    window's episode begins (rows before it are padding, and timesteps count from it).
    ``first_timestep`` (per window, or one for all) is the absolute step of the row at
    ``starts``: histories kept at inference begin mid-episode.
    Returns arrays with a leading window axis: states (N, K, *obs), actions (N, K[, act_dim]),
    returns_to_go (N, K) float32, timesteps (N, K) int64, mask (N, K) float32.
    """
    K = spec.context_len
    ends = np.asarray(ends, dtype=np.int64)
    starts = np.broadcast_to(np.asarray(starts, dtype=np.int64), ends.shape)[:, None]
    rows = ends[:, None] - (K - 1) + np.arange(K)  # (N, K) rows of the source arrays
    mask = rows >= starts
    index = np.where(mask, rows, 0)

    def take(array: np.ndarray) -> np.ndarray:
        """Rows of ``array`` for every window, zero on padding; conversions happen after the
        gather, so that they cost in proportion to the windows, not to the source arrays."""
        out = np.asarray(array)[index]
        out[~mask] = 0
        return out

    states = take(states)
    if states.dtype != np.uint8:  # images stay uint8; the encoder scales them
        states = states.astype(np.float32)
    if spec.state_mean is not None:
        mean = np.asarray(spec.state_mean, dtype=np.float32).reshape(states.shape[2:])
        std = np.asarray(spec.state_std, dtype=np.float32).reshape(states.shape[2:])
        states = (states - mean) / std
        states[~mask] = 0
    actions = take(actions)
    first_timestep = np.broadcast_to(np.asarray(first_timestep, dtype=np.int64), ends.shape)[:, None]
    timesteps = np.minimum(index - starts + first_timestep, spec.max_ep_len - 1)
    return {
        "states": states,
        "actions": actions.astype(np.int64 if actions.dtype.kind in "iu" else np.float32),
        "returns_to_go": (take(np.asarray(rtg, dtype=np.float64)) / spec.rtg_scale).astype(np.float32),
        "timesteps": np.where(mask, timesteps, 0).astype(np.int64),
        "mask": mask.astype(np.float32),
    }


class LiveContexts:
    """The recent history of many live episodes at inference time, and their windows.

    Each of ``slots`` episodes keeps its last K steps in a row of fixed-size arrays; the
    windows of any set of them come from one :func:`build_windows` call over those rows laid
    back to back, the training convention, so a batch of a thousand episodes costs a few
    vectorised numpy operations per step, not a thousand Python calls. The action of the
    current step is unknown when the model is asked for it, so it is a zero placeholder: the
    action head reads the state token, which comes before the action token, so the
    placeholder is never attended to.
    """

    def __init__(self, spec: WindowSpec, slots: int, obs_shape: tuple[int, ...], obs_dtype,
                 action_shape: tuple[int, ...], action_dtype):
        K = spec.context_len
        self.spec = spec
        self.states = np.zeros((slots, K, *obs_shape), obs_dtype)
        self.actions = np.zeros((slots, K, *action_shape), action_dtype)
        self.rtg = np.zeros((slots, K))  # unscaled, float64 as in training
        self.held = np.zeros(slots, np.int64)  # steps kept (1..K); the last row is the current step
        self.step = np.zeros(slots, np.int64)  # absolute index of the current step

    def start(self, slot: int, target_return: float, first_obs: np.ndarray) -> None:
        """A new episode in ``slot``: its first observation and the return it is asked for."""
        self.states[slot, -1], self.rtg[slot, -1], self.actions[slot, -1] = first_obs, target_return, 0
        self.held[slot], self.step[slot] = 1, 0

    def windows(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """The windows ending at the current step of each of ``slots`` (one row each)."""
        K, slots = self.spec.context_len, np.asarray(slots, dtype=np.int64)
        rows = np.arange(len(slots)) * K
        gather = (slots[:, None] * K + np.arange(K)).reshape(-1)  # the slots' rows, back to back
        return build_windows(
            self.spec,
            self.states.reshape(-1, *self.states.shape[2:])[gather],
            self.actions.reshape(-1, *self.actions.shape[2:])[gather],
            self.rtg.reshape(-1)[gather],
            ends=rows + K - 1,
            starts=rows + K - self.held[slots],
            first_timestep=self.step[slots] - self.held[slots] + 1,
        )

    def set_returns(self, slots: np.ndarray, returns: np.ndarray) -> None:
        """Replace the current step's R̂ of each slot (unscaled): path-integral targets are
        chosen at the step, after the observation."""
        self.rtg[np.asarray(slots, dtype=np.int64), -1] = returns

    def record(self, slots: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray) -> None:
        """Each slot's step: its action, then the next step with ``R_{t+1} = (R_t - r_t) / gamma``."""
        slots = np.asarray(slots, dtype=np.int64)
        self.actions[slots, -1] = actions
        next_rtg = next_return_to_go(self.rtg[slots, -1], np.asarray(rewards, dtype=np.float64), self.spec.gamma)
        for array, new in ((self.states, next_obs), (self.actions, 0), (self.rtg, next_rtg)):
            array[slots] = np.roll(array[slots], -1, axis=1)  # drop the oldest step
            array[slots, -1] = new
        self.held[slots] = np.minimum(self.held[slots] + 1, self.spec.context_len)
        self.step[slots] += 1


# --- sampling schemes -------------------------------------------------------------------


def log_partition(returns: np.ndarray, alpha: float) -> float:
    """``log Z(alpha) = log sum_tau exp(G(tau)/alpha)``, computed stably (log-sum-exp)."""
    scaled = np.asarray(returns, dtype=np.float64) / alpha
    top = scaled.max()
    return float(top + np.log(np.exp(scaled - top).sum()))


def boltzmann_weights(returns: np.ndarray, alpha: float) -> np.ndarray:
    """Path-integral weights ``exp(G/alpha) / Z``: the data's p(tau) at temperature alpha."""
    return np.exp(np.asarray(returns, dtype=np.float64) / alpha - log_partition(returns, alpha))


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's ESS ``(sum w)^2 / sum w^2``: how many episodes the weights really use."""
    weights = np.asarray(weights, dtype=np.float64)
    return float(weights.sum() ** 2 / np.square(weights).sum())



# --- dataset statistics -----------------------------------------------------------------


def is_validation(episode_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stable per-episode train/validation split: hash(seed, episode_id) < fraction.

    Stateless, so every Ray task decides the same way without shipping a list of ids.
    """
    with np.errstate(over="ignore"):  # splitmix64: wrap-around multiplication is the point
        z = np.asarray(episode_ids, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


@dataclass(frozen=True)
class NormStats:
    """Statistics of the training episodes from one distributed pass, kept with the run."""

    state_mean: tuple[float, ...] | None  # None for image observations
    state_std: tuple[float, ...] | None
    train_episodes: int
    train_steps: int
    val_episodes: int
    val_steps: int
    return_min: float
    return_max: float
    return_mean: float
    return_std: float
    return_quantiles: dict[str, float]  # "0.1" .. "0.9"
    log_z: float  # log Z(temperature) for boltzmann sampling
    top_threshold: float  # lowest return kept by top_percent sampling
    # image observations: the mean training frame, flat (C*H*W,) in pixel units, which the
    # image encoder subtracts (None for vectors, and in checkpoints written before it existed)
    frame_mean: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormStats:
        data = dict(data)
        for key in ("state_mean", "state_std", "frame_mean"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def _summarise_episodes(batch: pa.Table, info: DatasetInfo, config: DataConfig, seed: int) -> dict[str, np.ndarray]:
    """One row per episode: return, length, split, and state sums for mean/std.

    This pass reads every episode before training starts, so it also checks them. A bad
    episode is not raised here, where Ray would bury the message in pages of its own
    traceback, but returned as the batch's only row, in the ``error`` column, for
    :func:`compute_stats` to raise as one line naming the file, episode and field."""
    paths = batch.column(PATH_COLUMN).to_numpy(zero_copy_only=False)
    width = int(np.prod(info.obs_shape))
    squared = width if len(info.obs_shape) == 1 else 0  # images need only their mean frame, not a std
    try:
        for path in np.unique(paths):
            check_episodes(str(path), batch.filter(pa.array(paths == path)), info)
    except DtrayError as err:
        return {"episode_id": np.zeros(1, np.int64), "path": paths[:1], "length": np.zeros(1, np.int64),
                "ret": np.zeros(1), "val": np.ones(1, bool), "state_sum": np.zeros((1, width)),
                "state_sumsq": np.zeros((1, squared)), "error": np.array([str(err)])}
    episodes = list(rows_to_episodes(batch, info))
    ids = np.array([e.episode_id for e in episodes], dtype=np.int64)
    observations = [e.observations.reshape(e.length, width).astype(np.float64) for e in episodes]
    return {
        "episode_id": ids,
        "path": paths,
        "length": np.array([e.length for e in episodes], dtype=np.int64),
        "ret": np.array([returns_to_go(e.rewards, config.gamma)[0] for e in episodes]),
        "val": is_validation(ids, config.val_fraction, seed),
        "state_sum": np.array([obs.sum(0) for obs in observations]).reshape(len(episodes), width),
        "state_sumsq": np.array([np.square(obs[:, :squared]).sum(0) for obs in observations]).reshape(len(episodes), squared),
        "error": np.full(len(episodes), ""),
    }


# Ray Data's Parquet reader sizes itself for big clusters, and both knobs are read from the
# driver's environment when a read is planned. Its defaults made memory grow with the number
# of files on a small machine (bench_data, 2 CPUs): every listing (each epoch, the statistics
# pass) started 32 footer-reading actors, ~110 MB of Python each; and read units of up to
# 128 MiB gave a whole 10x dataset to 3 tasks. One actor reads many footers concurrently, and
# small read units keep every CPU busy on small datasets.
PARQUET_READ_ENV = {
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
    "RAY_DATA_PARQUET_BIN_PACKING_BYTES": str(8 * 2**20),
}


@contextmanager
def _parquet_read_env():
    """Set :data:`PARQUET_READ_ENV` while a read is planned (values the user set win)."""
    added = {key: value for key, value in PARQUET_READ_ENV.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def read_dataset(paths: list[str], columns: list[str], seed: int | None = None):
    """Episode rows as a lazy Ray Dataset, reading only ``columns`` (PATH_COLUMN: each row's
    file); file order shuffled afresh each epoch when a seed is given."""
    import ray.data

    filesystem, files = resolve_files(paths)
    shuffle = ray.data.FileShuffleConfig(seed=seed) if seed is not None else None
    with _parquet_read_env():
        return ray.data.read_parquet(files, filesystem=filesystem, shuffle=shuffle,
                                     include_paths=PATH_COLUMN in columns).select_columns(columns)


def compute_stats(config: DataConfig, info: DatasetInfo, seed: int) -> NormStats:
    """Distributed pass over every episode (checked on the way); only per-episode sums reach the driver."""
    summary_rows = read_dataset(config.paths, [*REQUIRED_COLUMNS, PATH_COLUMN]).map_batches(
        _summarise_episodes,
        fn_kwargs={"info": info, "config": config, "seed": seed},
        batch_format="pyarrow",
        batch_size=None,  # whole read batches: fused with the read (see _cut_windows)
    )
    parts = list(summary_rows.iter_batches(batch_format="numpy", batch_size=None))
    summary = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if errors := [error for error in summary["error"] if error]:
        raise DtrayError(errors[0])
    files, file_of = np.unique(summary["path"], return_inverse=True)
    ids_by_file = np.split(summary["episode_id"][np.argsort(file_of, kind="stable")], np.cumsum(np.bincount(file_of))[:-1])
    check_unique_ids(list(zip(files, ids_by_file)))
    train = ~summary["val"]
    if not train.any():
        raise DtrayError(f"{config.paths}: no training episodes left after val_fraction={config.val_fraction}")
    returns, lengths = summary["ret"][train], summary["length"][train]
    steps = lengths.sum()
    mean = summary["state_sum"][train].sum(0) / steps
    state_mean = state_std = frame_mean = None
    if len(info.obs_shape) == 1:
        var = summary["state_sumsq"][train].sum(0) / steps - np.square(mean)
        state_mean = tuple(mean.tolist())
        state_std = tuple((np.sqrt(np.maximum(var, 0.0)) + 1e-6).tolist())
    else:
        frame_mean = tuple(mean.tolist())
    return NormStats(
        state_mean=state_mean,
        state_std=state_std,
        frame_mean=frame_mean,
        train_episodes=int(train.sum()),
        train_steps=int(steps),
        val_episodes=int((~train).sum()),
        val_steps=int(summary["length"][~train].sum()),
        return_min=float(returns.min()),
        return_max=float(returns.max()),
        return_mean=float(returns.mean()),
        return_std=float(returns.std()),
        return_quantiles={f"{q:.1f}": float(np.quantile(returns, q)) for q in np.arange(1, 10) / 10},
        log_z=log_partition(returns, config.temperature),
        top_threshold=float(np.percentile(returns, 100.0 - config.top_percent)),
    )


# --- windows in Ray Data ----------------------------------------------------------------

# Windows are ~K times the size of the episodes they come from, and a Ray Data task holds its
# output until a block is full: with Ray's 128 MiB default a window task grew to ~1.5 GB of PSS.
# Small blocks stream sooner (bench_data: peak memory 1,873 -> 1,500 MB at 400k steps and
# 3,081 -> 2,114 MB at 4M, and windows/s up). _cut_windows yields blocks of this size itself.
WINDOW_BLOCK_BYTES = 8 * 2**20


def sampling_rate(config: DataConfig, stats: NormStats, ret: float, length: int) -> float:
    """Expected windows drawn from one episode per epoch, scaled so that every scheme's
    epoch is about ``train_steps`` windows (``length`` draws every step exactly once)."""
    if config.sampling == "length":
        return float(length)
    if config.sampling == "top_percent":
        return float(length) if ret >= stats.top_threshold else 0.0
    if config.sampling == "uniform_episode":
        return stats.train_steps / stats.train_episodes
    return stats.train_steps * float(np.exp(ret / config.temperature - stats.log_z))  # boltzmann


def window_ends(config: DataConfig, stats: NormStats, episode_id: int, ret: float, length: int,
                seed: int, epoch: int) -> np.ndarray:
    """Which steps end a training window this epoch.

    ``length`` and ``top_percent`` take every step of a kept episode once, in order (the
    local shuffle buffer mixes them); the random schemes draw a Poisson number of window
    ends uniformly in the episode, so that the expected count is :func:`sampling_rate`.
    """
    rate = sampling_rate(config, stats, ret, length)
    if config.sampling in ("length", "top_percent"):
        return np.arange(length) if rate > 0 else np.arange(0)
    rng = np.random.default_rng([seed, epoch, episode_id])
    return np.sort(rng.integers(0, length, size=rng.poisson(rate)))


def _execution_index() -> int:
    """How many times this dataset was executed before (= the epoch), so that random
    sampling schemes draw afresh every epoch yet reproducibly for a seed."""
    from ray.data import DataContext

    return int(getattr(DataContext.get_current(), "_execution_idx", 0))


def _cut_windows(batch: pa.Table, info: DatasetInfo, spec: WindowSpec, config: DataConfig, stats: NormStats,
                 seed: int, split: str, val_stride: int) -> Iterator[dict[str, np.ndarray]]:
    """Episode rows -> fixed-shape window arrays (tensor columns for iter_torch_batches).

    Runs fused with the Parquet read on whole read batches (``batch_size=None``), so episodes
    never wait in the object store. The batch's episodes are laid back to back and its
    training windows are cut in a random order: every block then mixes windows from all the
    episodes of the batch. Blocks of consecutive steps of a few episodes made SGD batches so
    correlated that learning slowed (Pendulum medium-expert, 2,000 steps: normalised score
    ~70 instead of ~97 with independent windows). The order depends on the seed and the
    batch's episodes, not on the epoch, so that a run restarted by a new driver (which
    counts epochs from 0 again) sees the same stream; each epoch still mixes differently in
    the trainer's local shuffle buffer, which is seeded by the trainer's epoch. The windows
    are yielded WINDOW_BLOCK_BYTES at a time, so that a task holds one block of them at
    once (windows are ~K times the size of their episodes). A generator also lets a batch
    without windows (no episode of this split, or none that ``top_percent`` keeps) yield no
    block at all: a zero-row block would reach Arrow as pickled objects and break the schema."""
    episodes = list(rows_to_episodes(batch, info))
    in_split = is_validation([e.episode_id for e in episodes], config.val_fraction, seed) == (split == "val")
    episodes = [episode for episode, keep in zip(episodes, in_split) if keep]
    epoch = _execution_index()
    rtgs, ends, starts, start = [], [], [], 0
    for episode in episodes:
        rtg = returns_to_go(episode.rewards, config.gamma)
        if split == "val":
            episode_ends = np.arange(episode.episode_id % val_stride, episode.length, val_stride)
        else:
            episode_ends = window_ends(config, stats, episode.episode_id, rtg[0], episode.length, seed, epoch)
        rtgs.append(rtg)
        ends.append(start + episode_ends)
        starts.append(np.full(len(episode_ends), start))
        start += episode.length
    if not episodes or not (count := sum(map(len, ends))):
        return
    ends, starts = np.concatenate(ends), np.concatenate(starts)
    if split == "train":
        order = np.random.default_rng([seed, episodes[0].episode_id, count]).permutation(count)
        ends, starts = ends[order], starts[order]
    arrays = [np.concatenate([getattr(e, name) for e in episodes]) for name in ("observations", "actions")]
    rtg = np.concatenate(rtgs)
    per_block = max(1, WINDOW_BLOCK_BYTES // window_nbytes(spec, info))
    for i in range(0, count, per_block):
        yield build_windows(spec, *arrays, rtg, ends[i:i + per_block], starts[i:i + per_block])


def execution_options(config: DataConfig):
    """Ray Data limits for the window pipelines (CPUs and object store it may fill ahead of
    training), and ``deterministic`` keeps block order for reproducible runs."""
    from ray.data import ExecutionOptions, ExecutionResources

    limits = ExecutionResources.for_limits(
        cpu=config.data_cpu_limit or None,
        object_store_memory=config.data_memory_mb * 2**20 if config.data_memory_mb else None,
    )
    return ExecutionOptions(preserve_order=config.deterministic, resource_limits=limits)


@dataclass
class TrainingData:
    """The lazy train/validation window datasets plus everything needed to act later."""

    train: Any  # ray.data.Dataset of windows
    val: Any
    info: DatasetInfo
    spec: WindowSpec
    stats: NormStats


def check_dataset(config: DataConfig) -> NormStats:
    """Every check training makes before it starts (files, then every episode in the
    distributed statistics pass), for commands that start many trainings (``dtray tune``)."""
    _, _, info = check_files(config.paths)
    return compute_stats(config, info, seed=0)


def build_training_data(config: DataConfig, seed: int) -> TrainingData:
    """Statistics pass, then the window pipelines (train, validation) over the files. The
    training windows are cut once and kept when they fit ``materialize_mb`` (see
    :func:`cut_once`), else they stream and are cut anew every epoch."""
    if not config.paths:
        raise DtrayError("data.paths is empty: point it at a dataset directory (dtray collect ...)")
    _, _, info = check_files(config.paths)
    stats = compute_stats(config, info, seed)
    spec = WindowSpec.from_config(config, stats)
    columns = ["episode_id", "observations", "actions", "rewards"]
    val_stride = max(1, -(-stats.val_steps // config.val_max_windows))

    def windows(split: str, file_seed: int | None):
        dataset = read_dataset(config.paths, columns, file_seed).map_batches(
            _cut_windows,
            fn_kwargs=dict(info=info, spec=spec, config=config, stats=stats, seed=seed,
                           split=split, val_stride=val_stride),
            batch_format="pyarrow",
            batch_size=None,
        )
        dataset.context.target_max_block_size = WINDOW_BLOCK_BYTES
        return dataset

    train = windows("train", seed if config.shuffle_files else None)
    train.context.execution_options = execution_options(config)
    if cut_once(config, spec, info, stats):
        train = train.materialize()
    return TrainingData(train=train, val=windows("val", None), info=info, spec=spec, stats=stats)


def cut_once(config: DataConfig, spec: WindowSpec, info: DatasetInfo, stats: NormStats) -> bool:
    """Whether the training windows fit ``materialize_mb``: small datasets are then cut once
    rather than every epoch (on a fast GPU an epoch of them can pass in seconds, faster than
    they are cut). Only where every epoch takes the same windows: the random samplings draw
    new ones each epoch. Each epoch still mixes them anew in the trainer's shuffle buffer."""
    if config.sampling not in ("length", "top_percent"):
        return False
    return window_nbytes(spec, info) * stats.train_steps <= config.materialize_mb * 2**20


def window_nbytes(spec: WindowSpec, info: DatasetInfo) -> int:
    """Bytes of one window of this dataset, as :func:`build_windows` lays it out."""
    actions = np.zeros(1, np.int64) if info.discrete else np.zeros((1, info.act_dim), np.float32)
    one = build_windows(spec, np.zeros((1, *info.obs_shape), info.observation_space.dtype), actions, np.zeros(1), [0])
    return sum(value.nbytes for value in one.values())
