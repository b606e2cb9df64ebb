"""Return-conditioned evaluation: a grid of target returns run on a pool of Ray actors.

The grid is policies x envs x targets x seeds, ``episodes`` per **cell**. Episode ``i`` of a
cell with seed ``s`` resets its env with :func:`episode_seed` ``(s, i)``, the same for every
policy and target, so that targets are compared on the same start states.

One episode loop, :class:`BatchRunner`, steps many episodes together with one batched
``policy.act`` per step; each episode has its own target and its own row in a
:class:`dtray.data.LiveContexts` (the window builder shared with training). It runs inside
the pool's actors, in :func:`evaluate_in_process` (in-training evaluation) and in the benchmark.

Path-integral cells (``eval.targets: path-integral``, policies with a return head) have no
target: R̂ is drawn from p(R | history, s_0) * exp(R / alpha) at t=0 and then updated by the
rewards as a set target is (or drawn afresh each step), one cell per temperature alpha.

Results (:func:`evaluate_grid`) go to ``out_dir``: ``episodes.parquet``/``episodes.csv`` (one
row per episode), ``summary.csv`` (one row per policy, env and target or alpha),
``calibration.png``, and for path-integral cells ``alpha_curve.csv`` and ``path_integral.png``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import sys
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import gymnasium as gym
import numpy as np
import pandas as pd
import ray
from ray.exceptions import RayActorError

from dtray.checkpoint import read_meta
from dtray.config import ActionSampling, EvalConfig
from dtray.data import LiveContexts
from dtray.errors import DtrayError
from dtray.policy import Policy

AUTO_QUANTILES = (0.1, 0.5, 0.9)
BEYOND_MAX = 0.1  # the last auto target lies this fraction of the dataset's return range above its max
AUTO_ALPHAS = (1.0, 0.3, 0.1, 0.03, 0.01)  # path-integral temperatures, as fractions of that range
CALIBRATION_SEED_OFFSET = 1000  # choose_acting's episodes: seed s of the grid is seed s + this there
MAX_DEATHS_PER_ACTOR = 3  # actor deaths tolerated per pool slot before the run gives up
EPISODE_COLUMNS = ("policy", "env", "target", "alpha", "seed", "episode", "env_seed", "return", "score", "length",
                   "predicted_return")


# --- the grid ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """``episodes`` episodes of one policy on one env with one target return (or, with
    ``alpha``, path-integral targets at that temperature; ``target`` is NaN then) and seed."""

    id: int
    policy: str
    env_id: str
    target: float
    seed: int
    episodes: int
    alpha: float | None = None
    resample: bool = False  # path-integral: draw R̂ at t=0 only (then R̂ - r), else every step
    env_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)


def episode_seed(seed: int, index: int) -> int:
    """Env seed of episode ``index`` of a cell with ``seed``: a SeedSequence hash of the pair,
    so that seeds 0 and 1 do not share episodes the way ``seed + index`` would."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def auto_targets(return_stats: Mapping[str, Any]) -> list[float]:
    """Targets from typical to beyond the dataset's best episode: the 0.1/0.5/0.9 quantiles of
    its episode returns, its max, and ``max + 0.1 * (max - min)``.

    "Beyond" is a step up in units of the return range rather than ``1.1 * max``, which would
    lie *below* the max when returns are negative (Pendulum)."""
    low, high = float(return_stats["min"]), float(return_stats["max"])
    span = (high - low) or abs(high) or 1.0
    targets = {high, high + BEYOND_MAX * span}
    quantiles = {float(q): float(v) for q, v in return_stats.get("quantiles", {}).items()}  # keys "0.1" or 0.1
    if quantiles:
        targets.update(quantiles[min(quantiles, key=lambda q: abs(q - wanted))] for wanted in AUTO_QUANTILES)
    return sorted(targets)


def auto_alphas(return_stats: Mapping[str, Any]) -> list[float]:
    """Temperatures from the data's whole return range (close to p itself) down to a hundredth
    of it (close to the best return the model believes reachable)."""
    span = (float(return_stats["max"]) - float(return_stats["min"])) or 1.0
    return [fraction * span for fraction in AUTO_ALPHAS]


def _return_stats(name: str, policy: Policy, dataset_returns: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    stats = dataset_returns if dataset_returns is not None else getattr(policy, "return_stats", None)
    if stats is not None and not {"min", "max"} <= set(stats):
        raise DtrayError(f"policy {name!r}: return stats need 'min' and 'max' keys, got {sorted(stats)}")
    return stats


def make_cells(policies: Mapping[str, Policy], targets: Mapping[str, list[float]], envs: list[str],
               seeds: list[int], episodes: int, alphas: Mapping[str, list[float]] | None = None,
               resample: bool = False) -> list[Cell]:
    """Every (policy, env, target or alpha, seed) cell, after checking that each policy fits
    each env and that path-integral cells' policies have a return head.

    An empty ``envs`` means each policy's own dataset env; an env with the dataset's id gets
    the dataset's env kwargs."""
    if episodes < 1:
        raise DtrayError(f"eval.episodes={episodes}: need at least one episode per cell")
    if not seeds or min(seeds) < 0:
        raise DtrayError(f"eval.seeds={seeds}: need one or more non-negative seeds")
    cells = []
    for name, policy in policies.items():
        temperatures = (alphas or {}).get(name, [])
        if temperatures and not getattr(policy, "has_return_head", False):
            raise DtrayError(f"policy {name!r} has no return head: path-integral targets need a model trained "
                             "with model.return_head=true")
        if any(not alpha > 0 for alpha in temperatures):
            raise DtrayError(f"eval.alpha={temperatures}: temperatures must be positive")
        conditions = [(float(t), None) for t in targets[name]] + [(math.nan, float(a)) for a in temperatures]
        if not conditions:
            raise DtrayError(f"no target returns for policy {name!r}: give eval.targets as a list or 'auto'")
        for env_id in envs or [policy.info.env_id]:
            env_kwargs = policy.info.env_kwargs if env_id == policy.info.env_id else {}
            check_env(name, policy, env_id, env_kwargs)
            for target, alpha in conditions:
                for seed in seeds:
                    cells.append(Cell(len(cells), name, env_id, target, int(seed), episodes, alpha, resample,
                                      dict(env_kwargs)))
    return cells


def make_env(env_id: str, env_kwargs: Mapping[str, Any]) -> gym.Env:
    try:
        return gym.make(env_id, **env_kwargs)
    except (gym.error.Error, TypeError) as err:  # unknown id, or kwargs the env does not take
        raise DtrayError(f"cannot make env {env_id!r}: {err}") from None


def _describe_space(space: gym.Space) -> str:
    if isinstance(space, gym.spaces.Discrete):
        return f"Discrete({int(space.n)})"
    return f"{type(space).__name__}{tuple(getattr(space, 'shape', None) or ())}"


def check_env(name: str, policy: Policy, env_id: str, env_kwargs: Mapping[str, Any]) -> None:
    """The env must exist and have the observation and action spaces the policy was trained on."""
    env = make_env(env_id, env_kwargs)
    try:
        for kind in ("observation_space", "action_space"):
            want, got = _describe_space(getattr(policy.info, kind)), _describe_space(getattr(env, kind))
            if want != got:
                raise DtrayError(f"policy {name!r} was trained on {policy.info.env_id} with {kind} {want}, "
                                 f"but env {env_id!r} has {got}")
    finally:
        env.close()


# --- the one episode loop ---------------------------------------------------------------


@dataclass
class EpisodeResult:
    cell: Cell
    index: int  # episode index within the cell
    ret: float
    length: int
    predicted: float = math.nan  # E[R | s_0] of a return head; NaN without one


@dataclass
class _Live:
    """One running episode: its env, its slot in its policy's :class:`LiveContexts` and its
    running totals."""

    cell: Cell
    index: int
    env: gym.Env
    slot: int
    limit: int
    ret: float = 0.0
    length: int = 0
    ended: bool = False
    predicted: float = math.nan

    def step(self, action: np.ndarray) -> tuple[float, np.ndarray]:
        """One env step with the policy's action: its reward and the next observation."""
        space = self.env.action_space
        env_action = int(action) if isinstance(space, gym.spaces.Discrete) else action.astype(space.dtype).reshape(space.shape)
        obs, reward, terminated, truncated, _ = self.env.step(env_action)
        self.ret += float(reward)
        self.length += 1
        self.ended = terminated or truncated or self.length >= self.limit
        return float(reward), obs


class BatchRunner:
    """Steps up to ``num_envs`` episodes at once: per step, one ``act`` call per policy for
    all of its live episodes, whose windows come from one :class:`LiveContexts` per policy.
    A finished episode's slot takes the next queued one at once, so the batch stays full
    however long episodes are.

    Envs are plain gymnasium envs reset by hand (no vector-env autoreset), kept for reuse
    per env id; ``max_steps`` 0 means the env's own time limit, or the policy's
    ``max_ep_len`` for an env without one."""

    def __init__(self, policies: Mapping[str, Policy], num_envs: int, max_steps: int = 0):
        if num_envs < 1:
            raise DtrayError(f"envs_per_actor={num_envs}: need at least one env")
        self.policies, self.num_envs, self.max_steps = policies, num_envs, max_steps
        self.queue: deque[tuple[Cell, int]] = deque()
        self.live: list[_Live] = []
        self.idle_envs: dict[tuple, list[gym.Env]] = defaultdict(list)
        self.contexts: dict[str, LiveContexts] = {}
        self.free_slots: dict[str, list[int]] = {}

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.live)

    def submit(self, cell: Cell) -> None:
        self.queue.extend((cell, index) for index in range(cell.episodes))

    def run(self, cells: Iterable[Cell]) -> list[EpisodeResult]:
        """Every episode of ``cells``, in order of completion."""
        for cell in cells:
            self.submit(cell)
        finished = []
        while self.busy:
            finished += self.step()
        return finished

    def step(self) -> list[EpisodeResult]:
        """Start queued episodes in free slots, take one step in every live one, and
        return the episodes that ended."""
        while self.queue and len(self.live) < self.num_envs:
            self.live.append(self._start(*self.queue.popleft()))
        by_policy: dict[str, list[_Live]] = defaultdict(list)
        for episode in self.live:
            by_policy[episode.cell.policy].append(episode)
        finished = []
        for name, group in by_policy.items():
            contexts, slots = self.contexts[name], np.array([episode.slot for episode in group])
            windows = contexts.windows(slots)
            if self._choose_returns(self.policies[name], group, contexts, slots, windows):
                windows = contexts.windows(slots)
            actions = np.asarray(self.policies[name].act(windows))
            if len(actions) != len(group):
                raise DtrayError(f"policy {name!r} returned {len(actions)} actions for {len(group)} windows")
            rewards, observations = zip(*(episode.step(action) for episode, action in zip(group, actions)))
            contexts.record(slots, actions, np.array(rewards), np.stack(observations))
            for episode in group:
                if episode.ended:
                    finished.append(EpisodeResult(episode.cell, episode.index, episode.ret, episode.length,
                                                  episode.predicted))
                    self.idle_envs[_env_key(episode.cell)].append(episode.env)
                    self.free_slots[name].append(episode.slot)
        self.live = [episode for episode in self.live if not episode.ended]
        return finished

    @staticmethod
    def _choose_returns(policy: Policy, group: list[_Live], contexts: LiveContexts, slots: np.ndarray,
                        windows: dict[str, np.ndarray]) -> bool:
        """Path-integral episodes get this step's R̂ from the policy's return head (at t=0 only,
        or every step); every episode of a policy with a return head keeps the head's
        prediction E[R | s_0]. True when an R̂ changed, so the windows must be built again."""
        if not getattr(policy, "has_return_head", False):
            return False
        draw = np.array([e.cell.alpha is not None and (e.cell.resample or e.length == 0) for e in group])
        rows = np.flatnonzero(draw | np.array([e.length == 0 for e in group]))
        if not len(rows):
            return False
        alpha = np.array([group[row].cell.alpha or math.inf for row in rows])
        drawn, expected = policy.choose_returns({key: value[rows] for key, value in windows.items()}, alpha)
        for row, value in zip(rows, expected):
            if group[row].length == 0:
                group[row].predicted = float(value)
        contexts.set_returns(slots[rows[draw[rows]]], drawn[draw[rows]])
        return bool(draw.any())

    def _start(self, cell: Cell, index: int) -> _Live:
        key = _env_key(cell)
        env = self.idle_envs[key].pop() if self.idle_envs[key] else make_env(cell.env_id, cell.env_kwargs)
        obs, _ = env.reset(seed=episode_seed(cell.seed, index))
        policy = self.policies[cell.policy]
        if cell.policy not in self.contexts:
            info = policy.info
            action_shape, action_dtype = ((), np.int64) if info.discrete else (info.action_space.shape, np.float32)
            self.contexts[cell.policy] = LiveContexts(policy.spec, self.num_envs, info.obs_shape,
                                                      info.observation_space.dtype, action_shape, action_dtype)
            self.free_slots[cell.policy] = list(range(self.num_envs))
        slot = self.free_slots[cell.policy].pop()
        self.contexts[cell.policy].start(slot, 0.0 if cell.alpha is not None else cell.target, obs)
        limit = self.max_steps or (env.spec.max_episode_steps if env.spec else None) or policy.spec.max_ep_len
        return _Live(cell, index, env, slot, limit)

    def close(self) -> None:
        """Close every env and drop all queued and live episodes."""
        for envs in self.idle_envs.values():
            for env in envs:
                env.close()
        for episode in self.live:
            episode.env.close()
        self.idle_envs.clear()
        self.live.clear()
        self.queue.clear()
        self.contexts.clear()
        self.free_slots.clear()


def _env_key(cell: Cell) -> tuple[str, str]:
    return cell.env_id, repr(sorted(cell.env_kwargs.items()))


def _score(info, env_id: str, ret):
    """Normalised score: the dataset's reference returns only mean something on its own env."""
    return info.normalized_score(ret) if env_id == info.env_id else np.nan * np.asarray(ret, dtype=float)


# --- in-process evaluation (training workers) ------------------------------------------


def evaluate_in_process(policy: Policy, targets: list[float], episodes: int, seed: int,
                        env_id: str | None = None, max_steps: int = 0, num_envs: int = 16,
                        alphas: list[float] = (), resample: bool = False) -> dict[str, float]:
    """Mean return and normalised score over (``targets`` and path-integral ``alphas``) x
    ``episodes`` (one seed), stepped in this process: periodic evaluation on a training
    worker, without actors."""
    cells = make_cells({"policy": policy}, {"policy": list(targets)}, [env_id] if env_id else [], [seed], episodes,
                       {"policy": list(alphas)}, resample)
    runner = BatchRunner({"policy": policy}, num_envs, max_steps)
    try:
        results = runner.run(cells)
    finally:
        runner.close()
    returns = np.array([result.ret for result in results])
    return {"return": float(returns.mean()), "score": float(np.mean(_score(policy.info, cells[0].env_id, returns))),
            "episodes": len(returns)}


# --- the actor pool ---------------------------------------------------------------------


class PolicyCache(dict):
    """Policies built from their factories on first use, once per process."""

    def __init__(self, factories: Mapping[str, Callable[[], Policy]]):
        super().__init__()
        self.factories = factories

    def __missing__(self, name: str) -> Policy:
        policy = self[name] = self.factories[name]()
        return policy


@ray.remote
class EvalActor:
    """One :class:`BatchRunner` per actor. Its method is async so that the driver can hand it
    the next cells while it steps: they join the running batch as soon as envs free up."""

    def __init__(self, factories: Mapping[str, Callable[[], Policy]], num_envs: int, max_steps: int):
        self.runner = BatchRunner(PolicyCache(factories), num_envs, max_steps)
        self.waiting: dict[int, tuple[asyncio.Future, list]] = {}
        self.stepping: asyncio.Task | None = None

    async def run_cell(self, cell: Cell) -> list[tuple[int, float, int, float]]:
        """(episode index, return, length, predicted return) of every episode of ``cell``, by index."""
        future = asyncio.get_running_loop().create_future()
        self.waiting[cell.id] = (future, [])
        self.runner.submit(cell)
        if self.stepping is None or self.stepping.done():
            self.stepping = asyncio.create_task(self._step_until_idle())
        return await future

    async def _step_until_idle(self) -> None:
        try:
            while self.runner.busy:
                for result in self.runner.step():
                    future, episodes = self.waiting[result.cell.id]
                    episodes.append((result.index, result.ret, result.length, result.predicted))
                    if len(episodes) == result.cell.episodes:
                        del self.waiting[result.cell.id]
                        future.set_result(sorted(episodes))
                await asyncio.sleep(0)  # let cells handed over meanwhile join between steps
        except Exception as err:  # the batch is lost: fail every cell in it
            self.runner.close()
            for future, _ in self.waiting.values():
                future.set_exception(err)
            self.waiting.clear()


def run_on_pool(cells: list[Cell], factories: Mapping[str, Callable[[], Policy]], config: EvalConfig,
                progress: Progress) -> dict[int, list[tuple[int, float, int, float]]]:
    """The episodes of every cell, each cell exactly once, on ``config.num_actors`` actors.

    Each actor holds enough cells to keep all its envs busy (the next one included); a cell
    is handed out again only if the actor holding it died, in which case a fresh actor takes
    the dead one's place. Too many deaths (a policy that crashes its process) end the run."""
    if config.num_actors < 1:
        raise DtrayError(f"eval.num_actors={config.num_actors}: need at least one actor")
    new_actor = functools.partial(
        EvalActor.options(num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor).remote,
        dict(factories), config.envs_per_actor, config.max_steps)
    actors = [new_actor() for _ in range(min(config.num_actors, len(cells)))]
    cells_per_actor = math.ceil(config.envs_per_actor / config.episodes) + 1
    todo, results, in_flight, deaths, episodes = deque(cells), {}, {}, 0, 0

    def held(actor) -> int:
        return sum(holder is actor for holder, _ in in_flight.values())

    try:
        while len(results) < len(cells):
            while todo and (room := [a for a in actors if held(a) < cells_per_actor]):
                for actor in room[:len(todo)]:  # one cell each in turn: small grids end balanced
                    cell = todo.popleft()
                    in_flight[actor.run_cell.remote(cell)] = (actor, cell)
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            actor, cell = in_flight.pop(ref)
            try:
                results[cell.id] = ray.get(ref)
            except RayActorError as err:
                if err.actor_init_failed:  # a new one would fail alike, e.g. on factories it cannot unpickle
                    raise DtrayError(f"an evaluation actor could not start ({str(err).splitlines()[-1]}); "
                                     "policy factories must be importable on Ray's workers") from None
                todo.appendleft(cell)
                slot = next((i for i, a in enumerate(actors) if a is actor), None)
                if slot is not None:  # its first lost cell: replace it
                    deaths += 1
                    if deaths > MAX_DEATHS_PER_ACTOR * len(actors):
                        raise DtrayError(f"evaluation actors died {deaths} times; last: {err}") from None
                    actors[slot] = new_actor()
                continue
            episodes += cell.episodes
            progress.update(len(results), episodes)
    finally:
        for actor in actors:
            ray.kill(actor)
        progress.close()
    return results


class Progress:
    """A status line on stderr: cells done / total and episodes per second."""

    def __init__(self, total_cells: int, enabled: bool = True):
        self.total, self.enabled = total_cells, enabled
        self.start = self.last = time.perf_counter()
        self.live = enabled and sys.stderr.isatty()  # rewrite one line; logs get a line every few seconds

    def update(self, cells: int, episodes: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (not self.live and now - self.last < 5.0 and cells < self.total):
            return
        self.last = now
        line = f"eval: {cells}/{self.total} cells, {episodes} episodes, {episodes / (now - self.start):.1f} episodes/s"
        if self.live:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live:
            print(file=sys.stderr, flush=True)


# --- results ----------------------------------------------------------------------------


@dataclass
class EvalResult:
    out_dir: Path
    episodes: pd.DataFrame  # one row per episode, EPISODE_COLUMNS
    summary: pd.DataFrame  # one row per (policy, env, target or alpha)
    seconds: float


def episode_table(cells: list[Cell], results: Mapping[int, list[tuple[int, float, int, float]]],
                  infos: Mapping[str, Any]) -> pd.DataFrame:
    rows = [
        (cell.policy, cell.env_id, cell.target, math.nan if cell.alpha is None else cell.alpha, cell.seed, index,
         episode_seed(cell.seed, index), ret, float(_score(infos[cell.policy], cell.env_id, ret)), length, predicted)
        for cell in cells for index, ret, length, predicted in results[cell.id]
    ]
    return pd.DataFrame(rows, columns=list(EPISODE_COLUMNS))


def summarise(episodes: pd.DataFrame) -> pd.DataFrame:
    """Per (policy, env, target or alpha): achieved return mean and (sample) std over all seeds
    and episodes, mean normalised score, the calibration error |mean achieved - target| and
    the return head's mean prediction at t=0."""
    summary = episodes.groupby(["policy", "env", "target", "alpha"], sort=True, dropna=False).agg(
        episodes=("return", "size"), return_mean=("return", "mean"), return_std=("return", "std"),
        score_mean=("score", "mean"), length_mean=("length", "mean"),
        predicted_mean=("predicted_return", "mean")).reset_index()
    summary["calibration_error"] = (summary["return_mean"] - summary["target"]).abs()
    return summary


def plot_calibration(summary: pd.DataFrame, return_ranges: Mapping[str, tuple[str, float, float]], path) -> None:
    """Achieved vs target return per env, one line per policy, with y = x and the dataset
    return range(s) of the policies trained on that env shaded along the target axis."""
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no global backend state

    summary = summary[summary["alpha"].isna()]
    envs = sorted(summary["env"].unique())
    fig = Figure(figsize=(5.5 * len(envs), 4.5), layout="constrained")
    for ax, env in zip(fig.subplots(1, len(envs), squeeze=False)[0], envs):
        rows = summary[summary["env"] == env]
        shaded: dict[tuple[float, float], list[str]] = defaultdict(list)  # one band per distinct range
        for name, group in rows.groupby("policy"):
            ax.errorbar(group["target"], group["return_mean"], yerr=group["return_std"].fillna(0.0),
                        marker="o", capsize=3, label=name)
            if name in return_ranges and return_ranges[name][0] == env:
                shaded[return_ranges[name][1:]].append(name)
        for (low, high), names in shaded.items():
            label = "dataset returns" + ("" if len(shaded) == 1 else f" ({', '.join(names)})")
            ax.axvspan(low, high, color="0.5", alpha=0.15, label=label)
        values = pd.concat([rows["target"], rows["return_mean"]])
        ax.plot([values.min(), values.max()], [values.min(), values.max()], "k--", lw=1, label="achieved = target")
        ax.set(title=env, xlabel="target return", ylabel="achieved return (mean ± std)")
        ax.legend(fontsize="small")
    fig.savefig(path, format="png", dpi=100)


def alpha_curve(summary: pd.DataFrame) -> pd.DataFrame:
    """The path-integral rows: per (policy, env, alpha), achieved and predicted returns, score."""
    rows = summary[summary["alpha"].notna()]
    return rows[["policy", "env", "alpha", "episodes", "return_mean", "return_std", "score_mean",
                 "predicted_mean"]].sort_values(["policy", "env", "alpha"]).reset_index(drop=True)


def plot_path_integral(curve: pd.DataFrame, path) -> None:
    """Per env: normalised score against alpha (log axis: falling alpha to the left), and the
    return head's mean prediction at t=0 against the mean return achieved, per alpha."""
    from matplotlib.figure import Figure

    envs = sorted(curve["env"].unique())
    fig = Figure(figsize=(10, 4.2 * len(envs)), layout="constrained")
    for (score_ax, predicted_ax), env in zip(fig.subplots(len(envs), 2, squeeze=False), envs):
        for name, group in curve[curve["env"] == env].groupby("policy"):
            score_ax.plot(group["alpha"], group["score_mean"], marker="o", label=name)
            predicted_ax.scatter(group["predicted_mean"], group["return_mean"], label=name)
        score_ax.set(title=f"{env}: path-integral targets", xscale="log", xlabel="alpha (return units)",
                     ylabel="normalised score")
        rows = curve[curve["env"] == env]
        values = pd.concat([rows["predicted_mean"], rows["return_mean"]]).dropna()
        if len(values):
            predicted_ax.plot([values.min(), values.max()], [values.min(), values.max()], "k--", lw=1,
                              label="achieved = predicted")
        predicted_ax.set(title=f"{env}: return head at t=0", xlabel="mean predicted return (untilted)",
                         ylabel="mean achieved return")
        for ax in (score_ax, predicted_ax):
            ax.legend(fontsize="small")
    fig.savefig(path, format="png", dpi=100)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a hidden temp file next to ``path``, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_results(out_dir: Path, episodes: pd.DataFrame, summary: pd.DataFrame,
                  return_ranges: Mapping[str, tuple[str, float, float]]) -> list[str]:
    """Write the result files; returns their names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    curve = alpha_curve(summary)
    files = {"episodes.parquet": lambda p: episodes.to_parquet(p, index=False),
             "episodes.csv": lambda p: episodes.to_csv(p, index=False),
             "summary.csv": lambda p: summary.to_csv(p, index=False)}
    if summary["alpha"].isna().any():
        files["calibration.png"] = lambda p: plot_calibration(summary, return_ranges, p)
    if len(curve):
        files["alpha_curve.csv"] = lambda p: curve.to_csv(p, index=False)
        files["path_integral.png"] = lambda p: plot_path_integral(curve, p)
    for name, write in files.items():
        _write_atomic(out_dir / name, write)
    return list(files)


def format_calibration(summary: pd.DataFrame, return_ranges: Mapping[str, tuple[str, float, float]]) -> list[str]:
    """One line per (policy, env) with two or more set targets inside its dataset's returns:
    does asking for more give more (Spearman), and how much more (the target slope)?"""
    lines = []
    for (name, env), rows in summary.groupby(["policy", "env"]):
        if name not in return_ranges:
            continue
        max_return = return_ranges[name][2]
        slope = target_slope(rows, max_return)  # NaN with fewer than two targets inside the data
        if math.isnan(slope):
            continue
        rho, slope = calibration(rows, max_return), round(slope, 2) + 0.0  # no "-0.00"
        rank = "– (the same return at every target)" if math.isnan(rho) else f"{rho:.2f}"
        lines.append(f"calibration of {name} on {env} (targets within the dataset's returns): Spearman {rank}, "
                     f"slope {slope:.2f} (1: the return follows the target one for one, 0: the target is ignored)")
    return lines


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as printed: columns that hold nothing for this grid (alpha, predicted_mean
    without path-integral cells or a return head) are left out."""
    return summary.dropna(axis=1, how="all").to_string(index=False, float_format=lambda v: f"{v:.2f}")


def best_targets(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (policy, env): the target (or alpha) whose episodes scored highest on average, and that score."""
    scored = summary.dropna(subset=["score_mean"])
    rows = scored.loc[scored.groupby(["policy", "env"])["score_mean"].idxmax()]
    return rows[["policy", "env", "target", "alpha", "return_mean", "score_mean"]].reset_index(drop=True)


def rank_correlation(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    x, y = pd.Series(np.asarray(x, dtype=float)), pd.Series(np.asarray(y, dtype=float))
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(x.rank().corr(y.rank()))


def targets_in_data(summary: pd.DataFrame, max_return: float) -> pd.DataFrame:
    """The summary rows whose target is at or below the dataset's best return. ``max_return``
    is the checkpoint's (the auto targets' own): the same episodes' returns summed elsewhere
    can differ in the last bit and leave the max target out."""
    return summary[summary["target"] <= max_return]


def calibration(summary: pd.DataFrame, max_return: float) -> float:
    """Spearman between the targets at or below the dataset's best return and the mean
    returns achieved at them (one policy and env): does asking for more give more? NaN when
    the achieved returns are all equal (e.g. every episode reached the env's cap)."""
    inside = targets_in_data(summary, max_return)
    return rank_correlation(inside["target"], inside["return_mean"])


def target_slope(summary: pd.DataFrame, max_return: float) -> float:
    """The least-squares slope of the mean return achieved on the target, over the same
    targets as :func:`calibration`: how much more a unit more asked gives (1: one for one,
    0: the target is ignored). Spearman only ranks, so a policy that reaches the same return
    at every target gets the rank of noise; the slope tells that case apart. NaN with fewer
    than two distinct targets."""
    inside = targets_in_data(summary, max_return)
    targets, returns = inside["target"].to_numpy(float), inside["return_mean"].to_numpy(float)
    if len(targets) < 2 or np.ptp(targets) == 0:
        return math.nan
    return float(np.polyfit(targets, returns, 1)[0])


# --- entry points -----------------------------------------------------------------------


def _targets(targets, name: str, stats: Mapping[str, Any] | None) -> list[float]:
    if targets == "path-integral":
        return []
    if isinstance(targets, str):
        if targets != "auto":
            raise DtrayError(f"eval.targets={targets!r}: expected a list of returns, 'auto' or 'path-integral'")
        return auto_targets(_need_range(stats, name, "eval.targets='auto'", "give the target returns as a list"))
    return [float(target) for target in targets]


def eval_alphas(config: EvalConfig, name: str, stats: Mapping[str, Any] | None) -> list[float]:
    """The path-integral temperatures of ``config`` (none unless eval.targets is path-integral)."""
    if config.targets != "path-integral":
        return []
    if config.alpha == "auto":
        return auto_alphas(_need_range(stats, name, "eval.alpha='auto'", "give eval.alpha as a list"))
    return [float(alpha) for alpha in config.alpha]


def _need_range(stats: Mapping[str, Any] | None, name: str, setting: str, fix: str) -> Mapping[str, Any]:
    if stats is None:
        raise DtrayError(f"{setting} needs the dataset's return range, but policy {name!r} has no return_stats: {fix}")
    return stats


def evaluate_grid(policy_factories: Mapping[str, Callable[[], Policy]], config: EvalConfig, out_dir,
                  dataset_returns: Mapping[str, Any] | None = None, progress: bool = True) -> EvalResult:
    """Run the grid of ``config`` for every policy on a pool of Ray actors, write the results
    to ``out_dir`` and print the summary.

    ``policy_factories`` maps a name to a picklable zero-argument callable returning a
    Policy (e.g. ``functools.partial(load_policy, path)``); each actor builds each policy
    once. The driver builds them too, to check spaces and read ``return_stats`` (the
    dataset's return ``min``, ``max`` and ``quantiles``, for ``targets='auto'`` and the
    plot); ``dataset_returns`` overrides those stats for every policy."""
    if not policy_factories:
        raise DtrayError("no policies to evaluate")
    policies = {name: factory() for name, factory in policy_factories.items()}
    stats = {name: _return_stats(name, policy, dataset_returns) for name, policy in policies.items()}
    targets = {name: _targets(config.targets, name, stats[name]) for name in policies}
    alphas = {name: eval_alphas(config, name, stats[name]) for name in policies}
    cells = make_cells(policies, targets, list(config.envs), list(config.seeds), config.episodes, alphas,
                       config.resample_return)
    infos = {name: policy.info for name, policy in policies.items()}
    del policies  # actors build their own

    start = time.perf_counter()
    results = run_on_pool(cells, policy_factories, config, Progress(len(cells), progress))
    seconds = time.perf_counter() - start
    episodes = episode_table(cells, results, infos)
    summary = summarise(episodes)
    ranges = {name: (infos[name].env_id, float(s["min"]), float(s["max"])) for name, s in stats.items() if s}
    out_dir = Path(out_dir)
    written = write_results(out_dir, episodes, summary, ranges)
    print(format_summary(summary))
    print(f"{len(episodes)} episodes in {seconds:.1f} s ({len(episodes) / seconds:.1f} episodes/s); "
          f"results in {out_dir} ({', '.join(written)})")
    for row in best_targets(summary).itertuples():
        condition = f"target {row.target:.2f}" if math.isnan(row.alpha) else f"path-integral alpha {row.alpha:.3g}"
        print(f"best normalised score: {row.score_mean:.1f} ({row.policy} on {row.env}, {condition}, "
              f"return {row.return_mean:.2f})")
    for line in format_calibration(summary, ranges):
        print(line)
    return EvalResult(out_dir, episodes, summary, seconds)


def load_checkpoint_policy(path: str, amp: str = "auto", sampling: ActionSampling = ActionSampling()) -> Policy:
    """A checkpoint's policy on the best device this process has: GPU actors get CUDA, the
    driver (which only checks spaces) whatever it has."""
    import torch

    from dtray.policy import load_policy

    return load_policy(path, device="cuda" if torch.cuda.is_available() else "cpu", amp=amp, sampling=sampling)


def checkpoint_names(paths: list[str]) -> list[str]:
    """The shortest trailing path parts that tell the checkpoints apart."""
    parts = [Path(os.path.abspath(path)).parts for path in paths]
    for depth in range(1, max(map(len, parts)) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise DtrayError(f"a checkpoint is given twice: {paths}")


def evaluate_checkpoints(checkpoints: list[str], config: EvalConfig, progress: bool = True) -> EvalResult:
    """The CLI's entry: one policy per checkpoint directory; results in ``config.out``
    (default ``<first checkpoint>/eval``)."""
    if not checkpoints:
        raise DtrayError("no checkpoints to evaluate")
    factories = {name: functools.partial(load_checkpoint_policy, str(path), config.amp, config.sampling)
                 for name, path in zip(checkpoint_names(checkpoints), checkpoints)}
    return evaluate_grid(factories, config, config.out or os.path.join(checkpoints[0], "eval"), progress=progress)


def best_following(candidates: pd.DataFrame, min_spearman: float) -> Any:
    """The index of the candidate (a row with ``return`` and ``spearman``) with the best return
    among those that follow the target (Spearman >= ``min_spearman``), else the best return:
    a way that ignores the target is taken only when no way follows it."""
    follows = candidates["spearman"] >= min_spearman  # NaN (constant returns) does not follow
    return candidates[follows]["return"].idxmax() if follows.any() else candidates["return"].idxmax()


@dataclass
class ActingChoice:
    sampling: ActionSampling  # the way of acting chosen
    candidates: pd.DataFrame  # one row per way: acting, its best target, return and score there, spearman, chosen


def choose_acting(checkpoint: str, ways: list[ActionSampling], config: EvalConfig, min_spearman: float = 0.9,
                  progress: bool = True) -> ActingChoice:
    """The way of acting (greedy, or sampled at a temperature and top-p) to evaluate
    ``checkpoint`` with on ``config``'s grid: its best return among the ways that follow the
    target (calibration Spearman >= ``min_spearman``), else its best return. Each way is one
    policy of a single grid with ``config``'s targets and episodes on **held-out seeds**
    (each seed + CALIBRATION_SEED_OFFSET): chosen on the reported episodes themselves, the
    choice would be fitted to their noise. Results in ``<config.out>/acting``.

    Why choose: the calibrated way depends on the data, not only the env (on LunarLander,
    sampling at T 1 follows the target on medium-expert and halves the score on medium-replay)."""
    if config.targets == "path-integral" or len(config.envs) > 1:
        raise DtrayError("choosing a way of acting needs set targets (eval.targets 'auto' or a list), "
                         "not path-integral, on one env")
    names = [way.name for way in ways]
    if not ways or len(set(names)) < len(names):
        raise DtrayError(f"ways of acting to choose from: need one or more, each once; got {names}")
    out = os.path.join(config.out or os.path.join(checkpoint, "eval"), "acting")
    held_out = replace(config, seeds=[seed + CALIBRATION_SEED_OFFSET for seed in config.seeds], out=out)
    factories = {way.name: functools.partial(load_checkpoint_policy, checkpoint, config.amp, way) for way in ways}
    summary = evaluate_grid(factories, held_out, out, progress=progress).summary
    max_return = read_meta(checkpoint)[3].return_max
    best = summary.loc[summary.groupby("policy")["return_mean"].idxmax()].set_index("policy")
    rows = pd.DataFrame({"acting": names})  # the best return, as a score where the dataset has references
    rows[["target", "return", "score"]] = best.loc[names, ["target", "return_mean", "score_mean"]].to_numpy()
    rows["spearman"] = [calibration(summary[summary["policy"] == name], max_return) for name in names]
    pick = best_following(rows, min_spearman)
    rows["chosen"] = rows.index == pick
    _write_atomic(Path(out) / "acting.csv", lambda path: rows.to_csv(path, index=False))
    print(rows.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"chosen way of acting: {rows.at[pick, 'acting']}")
    return ActingChoice(ways[pick], rows)
