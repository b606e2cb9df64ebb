"""Evaluation episodes/s: dtray's actor pool vs the original DT's sequential loop, in one run.

Grid: 10 target returns x 10 episodes on Pendulum-v1 (200-step episodes), env seeds from
:func:`dtray.evaluate.episode_seed` on every side. Every side acts with the same randomly
initialised dtray DecisionTransformer (ModelConfig defaults: d=128, 3 layers, 1 head, K=20,
fp32, wrapped in dtray's DTPolicy); throughput does not depend on the weights.

* sequential: ``evaluate_episode_rtg`` written as in the original DT code (one env, one
  forward per step, a history of tensors grown with torch.cat, the last K steps left-padded
  by hand in ``get_action``), in this process: once with torch's default threads, as that
  code runs, and once on 1 thread, which is faster for batch-1 forwards on a small machine
  (the fair baseline).
* batched, in process: :func:`dtray.evaluate.evaluate_in_process`, all episodes stepped
  together in this process on 1 thread (the batching gain alone);
* pool: :func:`dtray.evaluate.evaluate_grid` on 2 actors x 1 CPU, timed end to end (actor
  start, policy build, file writing included); on a CPU with native bf16 once more with the
  policy under bf16 autocast, which changes the numerics slightly.

The per-episode cost is mostly the model itself (~70 MFLOP per episode-step at K=20, the
same at batch 1 or 50), so batching gains little per core: the pool's speed-up comes from
the cores, the overhead it removes, and bf16 on large batches. Takes a few minutes.

    python benchmarks/bench_eval.py [--episodes 10] [--envs-per-actor 50]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import tempfile
import time
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import ray
import torch

from dtray import checkpoint
from dtray.config import Config, EvalConfig
from dtray.data import WindowSpec
from dtray.evaluate import episode_seed, evaluate_grid, evaluate_in_process
from dtray.format import DatasetInfo
from dtray.model import bf16_pays
from dtray.policy import DTPolicy

ENV_ID = "Pendulum-v1"
TARGETS = [float(t) for t in np.linspace(-1500.0, -150.0, 10)]


def make_policy(amp: str = "off") -> DTPolicy:
    """The same randomly initialised Decision Transformer in every process (seeded)."""
    torch.manual_seed(0)
    env = gym.make(ENV_ID)
    info = DatasetInfo(ENV_ID, env.observation_space, env.action_space)
    config = Config()  # ModelConfig and DataConfig defaults: d=128, 3 layers, K=20, rtg_scale 1000
    stats = SimpleNamespace(return_min=-1500.0, return_max=-150.0, return_quantiles={})
    return DTPolicy(checkpoint.build_model(config, info).eval(), info, WindowSpec.from_config(config.data, None),
                    stats, amp=amp)


def get_action(model, states, actions, returns_to_go, timesteps) -> torch.Tensor:
    """The original DT's ``get_action``: keep the last K steps, left-pad them, one forward."""
    K = model.context_len
    states, actions = states[-K:], actions[-K:]
    returns_to_go, timesteps = returns_to_go[:, -K:], timesteps[:, -K:]
    pad = K - states.shape[0]
    batch = {
        "states": torch.cat([torch.zeros((pad, states.shape[1])), states]).unsqueeze(0),
        "actions": torch.cat([torch.zeros((pad, actions.shape[1])), actions]).unsqueeze(0),
        "returns_to_go": torch.cat([torch.zeros((1, pad)), returns_to_go], dim=1),
        "timesteps": torch.cat([torch.zeros((1, pad), dtype=torch.long), timesteps], dim=1),
        "mask": torch.cat([torch.zeros(pad), torch.ones(states.shape[0])]).reshape(1, -1),
    }
    return model.predict(batch)[0]


@torch.no_grad()
def evaluate_episode_rtg(env, model, target_return: float, scale: float, seed: int, max_ep_len: int = 1000):
    """The original DT's ``evaluate_episode_rtg`` (gymnasium API, no state normalisation)."""
    state, _ = env.reset(seed=seed)
    state_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    states = torch.from_numpy(state).reshape(1, state_dim).float()
    actions = torch.zeros((0, act_dim))
    rewards = torch.zeros(0)
    target = torch.tensor(target_return / scale, dtype=torch.float32).reshape(1, 1)
    timesteps = torch.tensor(0).reshape(1, 1)
    episode_return, episode_length = 0.0, 0
    for t in range(max_ep_len):
        actions = torch.cat([actions, torch.zeros((1, act_dim))], dim=0)
        rewards = torch.cat([rewards, torch.zeros(1)])
        action = get_action(model, states, actions, target, timesteps)
        actions[-1] = action
        state, reward, terminated, truncated, _ = env.step(action.numpy())
        states = torch.cat([states, torch.from_numpy(state).reshape(1, state_dim)], dim=0)
        rewards[-1] = reward
        target = torch.cat([target, (target[0, -1] - reward / scale).reshape(1, 1)], dim=1)
        timesteps = torch.cat([timesteps, torch.ones((1, 1), dtype=torch.long) * (t + 1)], dim=1)
        episode_return += float(reward)
        episode_length += 1
        if terminated or truncated:
            break
    return episode_return, episode_length


class Timer:
    """Wall and CPU seconds of this process (CPU time shows the cost per core, whatever the load)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_sequential(episodes: int) -> tuple[Timer, list[float]]:
    policy, env = make_policy(), gym.make(ENV_ID)
    with Timer() as timer:
        returns = [evaluate_episode_rtg(env, policy.model, target, policy.spec.rtg_scale, episode_seed(0, i))[0]
                   for target in TARGETS for i in range(episodes)]
    return timer, returns


def run_in_process(factory, episodes: int) -> Timer:
    policy = factory()
    with Timer() as timer:
        evaluate_in_process(policy, TARGETS, episodes, seed=0, num_envs=len(TARGETS) * episodes)
    return timer


def run_pool(factory, episodes: int, envs_per_actor: int) -> tuple[Timer, list[float]]:
    config = EvalConfig(targets=TARGETS, seeds=[0], episodes=episodes, num_actors=2, cpus_per_actor=1.0,
                        envs_per_actor=envs_per_actor)
    with Timer() as timer, contextlib.redirect_stdout(io.StringIO()):  # the summary table is not the point
        result = evaluate_grid({"dt": factory}, config, tempfile.mkdtemp(prefix="bench-eval-out-"), progress=False)
    timer.cpu = float("nan")  # spent in the actors, not here
    ordered = result.episodes.sort_values(["target", "episode"])  # the sequential order
    return timer, ordered["return"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10, help="episodes per target")
    parser.add_argument("--envs-per-actor", type=int, default=50)
    args = parser.parse_args()
    n = len(TARGETS) * args.episodes
    load_before = os.getloadavg()[0]
    native_bf16 = bf16_pays(torch.device("cpu"))

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="bench-eval-"),
             configure_logging=False, log_to_driver=False)
    try:  # first, so that Ray is gone for the in-process loops
        pool, pool_returns = run_pool(make_policy, args.episodes, args.envs_per_actor)
        pool_bf16 = run_pool(functools.partial(make_policy, "bf16"), args.episodes, args.envs_per_actor)[0] if native_bf16 else None
    finally:
        ray.shutdown()
    literal, _ = run_sequential(args.episodes)  # torch's default threads, as the original code runs
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sequential, sequential_returns = run_sequential(args.episodes)
    rows = [(f"sequential, original DT style, torch default ({default_threads} threads)", literal),
            ("sequential, original DT style, 1 thread", sequential),
            (f"dtray evaluate_in_process, {n} envs batched, 1 thread", run_in_process(make_policy, args.episodes)),
            (f"dtray pool, 2 actors x 1 CPU x {args.envs_per_actor} envs, end to end", pool)]
    if native_bf16:
        rows += [("same, policy under bf16 autocast (this CPU has native bf16)", pool_bf16)]

    print(f"\n{ENV_ID}: {len(TARGETS)} targets x {args.episodes} episodes = {n} episodes of 200 steps. Policy: "
          f"random-init dtray DecisionTransformer (d=128, 3 layers, K=20) in DTPolicy, fp32 unless noted. "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, native bf16: {native_bf16}; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after.\n")
    print("| evaluation loop | wall s | episodes/s | vs sequential (default threads) | vs sequential (1 thread) "
          "| CPU ms per episode-step |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, timer in rows:
        print(f"| {name} | {timer.wall:.1f} | {n / timer.wall:.2f} | {literal.wall / timer.wall:.1f}x "
              f"| {sequential.wall / timer.wall:.1f}x | {1e3 * timer.cpu / (n * 200):.2f} |".replace("| nan |", "| (in actors) |"))
    gap = np.abs(np.array(pool_returns) - np.array(sequential_returns))
    print(f"\nsame policy: mean return {np.mean(sequential_returns):.2f} (sequential) vs {np.mean(pool_returns):.2f} "
          f"(pool, fp32); largest per-episode difference {gap.max():.2g} (batch-size rounding)")


if __name__ == "__main__":
    main()
