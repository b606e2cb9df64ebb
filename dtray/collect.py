"""Built-in benchmark datasets, generated locally and deterministically from a seed.

A dataset is ``<env>-<tier>``. Every env has a scripted expert controller; the tiers mix it
with random actions so that data quality spans random < medium < expert:

* ``random``        uniformly random actions;
* ``medium``        the expert with epsilon-random actions and Gaussian action noise;
* ``expert``        the expert controller alone;
* ``medium-replay`` per episode, a quality drawn between random and medium (like the replay
                    buffer of an agent learning up to medium level);
* ``medium-expert`` even episodes medium, odd episodes expert.

Episode ``i`` of a dataset with seed ``s`` depends only on ``(s, i)``, so the output is the
same for any number of Ray workers.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from dtray import __version__
from dtray.errors import DtrayError
from dtray.format import DatasetInfo, Episode, write_dataset

TIERS = ("random", "medium", "expert", "medium-replay", "medium-expert")
REFERENCE_SEED = 2024  # ref scores use their own seed: the same for every tier and dataset seed
REFERENCE_EPISODES = 100  # 10 left the expert reference off by up to 20 return units (Pendulum)


# --- expert controllers: (env, observation) -> action --------------------------------------


def pendulum_expert(env: gym.Env, obs: np.ndarray) -> np.ndarray:
    """Energy-shaping swing-up, PD balance near the top.

    Pendulum-v1 integrates theta'' = 15 sin(theta) + 3u, so E = theta'^2/2 + 15 cos(theta)
    is 15 upright at rest; pumping with u ~ (15 - E) theta' drives E there.
    """
    cos, sin, velocity = float(obs[0]), float(obs[1]), float(obs[2])
    if cos > 0.85:
        torque = -(10.0 * math.atan2(sin, cos) + 2.0 * velocity)
    else:
        energy = 0.5 * velocity * velocity + 15.0 * cos
        torque = 2.0 * (15.0 - energy) * velocity
    return np.array([min(2.0, max(-2.0, torque))], dtype=np.float32)


def cartpole_expert(env: gym.Env, obs: np.ndarray) -> int:
    """PD on pole angle and angular velocity, with a small pull back to the centre."""
    x, velocity, angle, angular_velocity = (float(v) for v in obs)
    return int(angle + 0.5 * angular_velocity + 0.05 * x + 0.1 * velocity > 0)


def lunarlander_expert(env: gym.Env, obs: np.ndarray) -> np.ndarray:
    """Gymnasium's own hand-written landing heuristic."""
    from gymnasium.envs.box2d.lunar_lander import heuristic

    return heuristic(env, obs).astype(np.float32)


REACHER_LINKS = (0.1, 0.11)  # shoulder->elbow, elbow->fingertip (reacher.xml)


def reacher_expert(env: gym.Env, obs: np.ndarray, kp: float = 20.0, kd: float = 0.05) -> np.ndarray:
    """Jacobian-transpose control: torque = kp J^T (target - fingertip) - kd q'."""
    cos1, cos2, sin1, sin2 = (float(v) for v in obs[:4])
    error_x, error_y = -float(obs[8]), -float(obs[9])  # obs[8:10] = fingertip - target
    cos12, sin12 = cos1 * cos2 - sin1 * sin2, sin1 * cos2 + cos1 * sin2
    l1, l2 = REACHER_LINKS
    torque1 = kp * ((-l1 * sin1 - l2 * sin12) * error_x + (l1 * cos1 + l2 * cos12) * error_y) - kd * obs[6]
    torque2 = kp * (-l2 * sin12 * error_x + l2 * cos12 * error_y) - kd * obs[7]
    return np.clip(np.array([torque1, torque2], dtype=np.float32), -1.0, 1.0)


def doorkey_expert(env: gym.Env, obs: np.ndarray) -> int:
    """A planner on the full grid: fetch the key, open the door, walk to the goal, each by a
    shortest path (breadth-first over free cells), turning to face the next cell. A key that
    lies in the way (dropped there by a random action) is picked up first."""
    grid = env.unwrapped
    actions = grid.actions
    cells = {(i, j): grid.grid.get(i, j) for i in range(grid.width) for j in range(grid.height)}
    find = {kind: pos for pos, cell in cells.items() if cell is not None for kind in [cell.type]}
    door = cells[find["door"]]
    if door.is_locked and grid.carrying is None:
        target, final = find["key"], actions.pickup
    elif not door.is_open:
        target, final = find["door"], actions.toggle
    else:
        target, final = find["goal"], actions.forward
    here, facing = tuple(int(v) for v in grid.agent_pos), int(grid.agent_dir)
    path = _shortest_path(cells, here, target, enter=final == actions.forward)
    if path is None:  # a dropped key blocks the way
        target, final = find["key"], actions.pickup
        path = _shortest_path(cells, here, target, enter=False)
    step = path[1] if len(path) > 1 else target  # the next cell, or the object once beside it
    wanted = DIRECTIONS.index((step[0] - here[0], step[1] - here[1]))
    if wanted != facing:
        return int(actions.right if (wanted - facing) % 4 == 1 else actions.left)
    return int(actions.forward if len(path) > 1 else final)


DIRECTIONS = [(1, 0), (0, 1), (-1, 0), (0, -1)]  # MiniGrid's agent_dir 0..3


def _shortest_path(cells: dict, start: tuple[int, int], target: tuple[int, int], enter: bool) -> list | None:
    """Cells from ``start`` to ``target`` (``enter``) or to a free cell beside it, through free
    cells (empty, goal, open doors); None when there is no such path."""
    def free(pos):
        cell = cells.get(pos, "wall")
        return cell is None or (cell != "wall" and (cell.type == "goal" or (cell.type == "door" and cell.is_open)))

    parents, frontier = {start: None}, deque([start])
    while frontier:
        pos = frontier.popleft()
        if (pos == target) if enter else any((pos[0] + dx, pos[1] + dy) == target for dx, dy in DIRECTIONS):
            path = []
            while pos is not None:
                path.append(pos)
                pos = parents[pos]
            return path[::-1]
        for dx, dy in DIRECTIONS:
            nxt = (pos[0] + dx, pos[1] + dy)
            if nxt not in parents and free(nxt):
                parents[nxt] = pos
                frontier.append(nxt)
    return None


def state_of(env: gym.Env) -> np.ndarray:
    """The vector observation of a pixel env's underlying classic-control env, for its expert."""
    from gymnasium.envs.classic_control import PendulumEnv

    inner = env.unwrapped
    if isinstance(inner, PendulumEnv):
        theta, velocity = inner.state
        return np.array([np.cos(theta), np.sin(theta), velocity], dtype=np.float32)
    return np.asarray(inner.state, dtype=np.float32)


def on_state(expert: Callable[[gym.Env, np.ndarray], Any]) -> Callable[[gym.Env, np.ndarray], Any]:
    """An expert of a vector env acting in its pixel twin: it reads the state, not the frames."""
    return lambda env, obs: expert(env, state_of(env))


@dataclass(frozen=True)
class BuiltinEnv:
    """An env with its expert and the medium behaviour that sits between random and expert."""

    env_id: str
    expert: Callable[[gym.Env, np.ndarray], Any]
    expert_name: str
    medium_epsilon: float  # probability of a uniformly random action
    medium_noise: float  # Gaussian action noise, as a fraction of the action half-range
    default_episodes: int  # sized so that a default dataset collects in ~10-30 s on 2 cores
    # a built-in env with the same dynamics, expert and seeds but no frames to render: its
    # rollouts give the same returns, so the reference scores are measured there
    same_returns_as: str = ""


ENVS = {
    "pendulum": BuiltinEnv("Pendulum-v1", pendulum_expert, "energy swing-up + PD balance",
                           medium_epsilon=0.5, medium_noise=0.5, default_episodes=1000),
    "cartpole": BuiltinEnv("CartPole-v1", cartpole_expert, "PD on pole angle",
                           medium_epsilon=0.45, medium_noise=0.0, default_episodes=1000),
    "lunarlander": BuiltinEnv("LunarLanderContinuous-v3", lunarlander_expert, "gymnasium heuristic",
                              medium_epsilon=0.4, medium_noise=0.3, default_episodes=600),
    "reacher": BuiltinEnv("Reacher-v5", reacher_expert, "Jacobian-transpose PD",
                          medium_epsilon=0.3, medium_noise=0.3, default_episodes=2000),
    # image observations (dtray/envs.py); fewer episodes: a frame stack is ~5 KB per step
    # MiniGrid pays 1 - 0.9 * steps / 360 for reaching the goal: even a half-random walk reaches
    # it (epsilon 0.5 scored 96% of the expert), so its medium acts at random 80% of the time
    "minigrid": BuiltinEnv("dtray/MiniGrid-DoorKey-6x6-v0", doorkey_expert, "shortest-path planner on the grid",
                           medium_epsilon=0.8, medium_noise=0.0, default_episodes=1000),
    "pixelpendulum": BuiltinEnv("dtray/PixelPendulum-v1", on_state(pendulum_expert), "energy swing-up + PD balance",
                                medium_epsilon=0.5, medium_noise=0.5, default_episodes=300, same_returns_as="pendulum"),
    "pixelcartpole": BuiltinEnv("dtray/PixelCartPole-v1", on_state(cartpole_expert), "PD on pole angle",
                                medium_epsilon=0.45, medium_noise=0.0, default_episodes=200, same_returns_as="cartpole"),
}
DATASETS = [f"{env}-{tier}" for env in ENVS for tier in TIERS]


def list_datasets() -> list[str]:
    return list(DATASETS)


def parse_name(name: str) -> tuple[str, str]:
    """``pendulum-medium-expert`` -> ("pendulum", "medium-expert")."""
    env, _, tier = name.partition("-")
    if env not in ENVS or tier not in TIERS:
        raise DtrayError(f"unknown dataset {name!r}; built-in datasets: {', '.join(DATASETS)}")
    return env, tier


# --- behaviour policies --------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    epsilon: float  # probability of a uniformly random action
    noise: float  # Gaussian action noise (continuous actions), fraction of the half-range


def episode_behaviour(builtin: BuiltinEnv, tier: str, index: int, rng: np.random.Generator) -> Behaviour:
    """How episode ``index`` of a tier acts (``rng`` is that episode's own generator)."""
    medium = Behaviour(builtin.medium_epsilon, builtin.medium_noise)
    if tier == "random":
        return Behaviour(1.0, 0.0)
    if tier == "expert" or (tier == "medium-expert" and index % 2 == 1):
        return Behaviour(0.0, 0.0)
    if tier == "medium-replay":
        quality = rng.uniform()  # 0 = random, 1 = medium
        return Behaviour(1.0 + quality * (medium.epsilon - 1.0), quality * medium.noise)
    return medium


def random_action(space: gym.Space, rng: np.random.Generator):
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start + rng.integers(space.n))
    return rng.uniform(space.low, space.high).astype(space.dtype)


def choose_action(env: gym.Env, builtin: BuiltinEnv, behaviour: Behaviour, obs: np.ndarray,
                  rng: np.random.Generator):
    space = env.action_space
    if rng.uniform() < behaviour.epsilon:
        return random_action(space, rng)
    action = builtin.expert(env, obs)
    if behaviour.noise > 0 and isinstance(space, gym.spaces.Box):
        half_range = (space.high - space.low) / 2
        noisy = action + behaviour.noise * half_range * rng.standard_normal(space.shape)
        action = np.clip(noisy, space.low, space.high).astype(space.dtype)
    return action


# --- rollouts ------------------------------------------------------------------------------


def episode_start(builtin: BuiltinEnv, tier: str, seed: int, index: int) -> tuple[Behaviour, int, np.random.Generator]:
    """How episode ``index`` of a dataset with ``seed`` acts, the seed its env is reset with,
    and the generator of its random actions: all fixed by (seed, index)."""
    rng = np.random.default_rng([seed, index])
    behaviour = episode_behaviour(builtin, tier, index, rng)
    return behaviour, int(rng.integers(2**31)), rng


def run_episode(env: gym.Env, builtin: BuiltinEnv, tier: str, seed: int, index: int) -> Episode:
    """One episode, fully determined by (seed, index): env reset seed, behaviour and noise."""
    behaviour, env_seed, rng = episode_start(builtin, tier, seed, index)
    obs, _ = env.reset(seed=env_seed)
    observations, actions, rewards = [obs], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action = choose_action(env, builtin, behaviour, obs, rng)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    return Episode(
        observations=np.stack(observations[:-1]),
        actions=np.asarray(actions, dtype=np.int64 if discrete else env.action_space.dtype),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminated=bool(terminated),
        truncated=bool(truncated),
        final_observation=observations[-1],
        episode_id=index,
    )


def rollout(env_name: str, tier: str, seed: int, indices: list[int]) -> list[Episode]:
    """Episodes ``indices`` of a tier, in order (the body of one Ray task)."""
    builtin = ENVS[env_name]
    env = gym.make(builtin.env_id)
    try:
        return [run_episode(env, builtin, tier, seed, i) for i in indices]
    finally:
        env.close()


def chunks(count: int, parts: int) -> list[list[int]]:
    """Split episode indices 0..count-1 into ``parts`` contiguous, near-equal, non-empty chunks."""
    bounds = np.linspace(0, count, max(1, min(parts, count)) + 1).astype(int)
    return [list(range(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def collect(
    name: str,
    out_dir: str | Path,
    seed: int = 0,
    episodes: int | None = None,
    num_workers: int = 2,
    overwrite: bool = False,
) -> list[Path]:
    """Generate built-in dataset ``name`` with Ray tasks and write it atomically to ``out_dir``.

    Reference scores (random and expert mean returns, for normalised scores) are measured
    alongside, on their own fixed seed.
    """
    import ray

    env_name, tier = parse_name(name)
    builtin = ENVS[env_name]
    count = builtin.default_episodes if episodes is None else episodes
    if count < 1 or num_workers < 1:
        raise DtrayError(f"episodes and workers must be >= 1, got {count} and {num_workers}")
    if Path(out_dir).exists() and not overwrite:
        raise DtrayError(f"{out_dir}: already exists (pass --overwrite to replace it)")
    if not ray.is_initialized():
        ray.init()

    task = ray.remote(rollout)
    data_refs = [task.remote(env_name, tier, seed, indices) for indices in chunks(count, num_workers)]
    reference = list(range(REFERENCE_EPISODES))
    random_ref = task.remote(builtin.same_returns_as or env_name, "random", REFERENCE_SEED, reference)
    expert_ref = task.remote(builtin.same_returns_as or env_name, "expert", REFERENCE_SEED, reference)

    env = gym.make(builtin.env_id)
    info = DatasetInfo(
        env_id=builtin.env_id,
        observation_space=env.observation_space,
        action_space=env.action_space,
        ref_min_score=mean_return(ray.get(random_ref)),
        ref_max_score=mean_return(ray.get(expert_ref)),
        source={
            "generator": "dtray.collect",
            "name": name,
            "env": env_name,
            "tier": tier,
            "seed": seed,
            "episodes": count,
            "expert": builtin.expert_name,
            "medium": asdict(Behaviour(builtin.medium_epsilon, builtin.medium_noise)),
            "reference_seed": REFERENCE_SEED,
            "reference_episodes": REFERENCE_EPISODES,
            "dtray_version": __version__,
        },
    )
    env.close()
    episodes_in_order = (episode for ref in data_refs for episode in ray.get(ref))
    return write_dataset(episodes_in_order, info, out_dir, overwrite=overwrite)


def mean_return(episodes: list[Episode]) -> float:
    return float(np.mean([episode.rewards.sum() for episode in episodes]))
