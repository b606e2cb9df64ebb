"""Evaluation: the actor pool gives exactly the returns of a plain loop, reports every cell
once (also when an actor is killed mid-grid), feeds the policy the right returns-to-go,
writes readable files, and rejects bad arguments with a DtrayError."""

import functools
import os
import signal
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import ray

from dtray.config import EvalConfig
from dtray.data import WindowSpec
from dtray.errors import DtrayError
from dtray.evaluate import (auto_targets, best_following, calibration, episode_seed, evaluate_grid, evaluate_in_process,
                            format_calibration, rank_correlation, target_slope)
from dtray.format import DatasetInfo

# Ray workers cannot import this file (tests/ is not on their path): ship the stubs by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def pendulum_rule(states, rtg):
    """Torque from the pole's angle and speed, shifted by the scaled return-to-go, so that
    different targets give different returns."""
    return np.clip(-2.0 * states[:, 1:2] - 0.5 * states[:, 2:3] + 0.1 * rtg[:, None], -2.0, 2.0)


def cartpole_rule(states, rtg):
    """Push towards the side the pole leans to: episodes of 25-50 steps, varying by seed."""
    return (states[:, 2] > 0).astype(np.int64)


PENDULUM_SPEC = WindowSpec(context_len=4, max_ep_len=1000, rtg_scale=100.0, gamma=0.99)
CARTPOLE_SPEC = WindowSpec(context_len=4, max_ep_len=1000, rtg_scale=10.0, gamma=1.0)
PENDULUM_STATS = {"min": -1400.0, "max": -200.0, "quantiles": {"0.1": -1200.0, "0.5": -700.0, "0.9": -300.0}}
CARTPOLE_STATS = {"min": 10.0, "max": 60.0, "quantiles": {0.1: 15.0, 0.5: 30.0, 0.9: 50.0}}


class RulePolicy:
    """A Policy that acts by ``rule(last states, last returns-to-go)`` on each window."""

    def __init__(self, env_id, rule, spec, return_stats=None, ref_scores=(None, None), record=False):
        env = gym.make(env_id)
        self.info = DatasetInfo(env_id, env.observation_space, env.action_space,
                                ref_min_score=ref_scores[0], ref_max_score=ref_scores[1])
        env.close()
        self.spec, self.rule, self.return_stats = spec, rule, return_stats
        self.seen = [] if record else None  # every batch of windows, when recording

    def act(self, windows):
        if self.seen is not None:
            self.seen.append({key: value.copy() for key, value in windows.items()})
        return self.rule(windows["states"][:, -1], windows["returns_to_go"][:, -1])


class SlowPolicy(RulePolicy):
    """Takes a few ms per step and leaves its process id in ``pid_dir`` once it is stepping,
    so that a test can kill an actor in the middle of its episodes."""

    def __init__(self, pid_dir, *args):
        super().__init__(*args)
        self.pid_dir, self.announced = pid_dir, False

    def act(self, windows):
        if not self.announced:
            open(os.path.join(self.pid_dir, str(os.getpid())), "w").close()
            self.announced = True
        time.sleep(0.004)
        return super().act(windows)


pendulum = functools.partial(RulePolicy, "Pendulum-v1", pendulum_rule, PENDULUM_SPEC, PENDULUM_STATS, (-1200.0, -150.0))
cartpole = functools.partial(RulePolicy, "CartPole-v1", cartpole_rule, CARTPOLE_SPEC, CARTPOLE_STATS)
RULES = {"pendulum": (pendulum_rule, PENDULUM_SPEC), "cartpole": (cartpole_rule, CARTPOLE_SPEC)}


def run_by_hand(env_id, rule, spec, target, env_seed):
    """One episode written out plainly: reset with the seed, act on the last state and the
    scaled return-to-go, then R <- (R - r) / gamma. Returns (return, length, rewards)."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=env_seed)
    rtg, rewards, done = target, [], False
    while not done:
        action = rule(obs[None].astype(np.float32), np.array([rtg / spec.rtg_scale], dtype=np.float32))[0]
        if isinstance(env.action_space, gym.spaces.Discrete):
            action = int(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(float(reward))
        rtg = (rtg - float(reward)) / spec.gamma
        done = terminated or truncated
    env.close()
    return sum(rewards), len(rewards), rewards


def assert_matches_by_hand(episodes: pd.DataFrame, env_ids: dict[str, str]):
    for row in episodes.to_dict("records"):
        assert row["env_seed"] == episode_seed(row["seed"], row["episode"])
        rule, spec = RULES[row["policy"]]
        ret, length, _ = run_by_hand(env_ids[row["policy"]], rule, spec, row["target"], row["env_seed"])
        assert (row["return"], row["length"]) == (ret, length), row


@pytest.fixture(scope="module")
def grid(ray_local, tmp_path_factory):
    """Two policies (continuous and discrete actions), auto targets, 2 seeds x 2 episodes,
    on 2 actors with 4 envs each: 20 cells, 40 episodes."""
    out = tmp_path_factory.mktemp("eval") / "out"
    config = EvalConfig(targets="auto", seeds=[0, 1], episodes=2, num_actors=2, envs_per_actor=4)
    return evaluate_grid({"pendulum": pendulum, "cartpole": cartpole}, config, out, progress=False)


def test_pool_returns_equal_a_plain_loop_with_the_same_seeds(grid):
    """Batched stepping on actors, episodes of different cells and lengths mixed in one
    batch, changes nothing: each return and length equals the by-hand episode's."""
    assert_matches_by_hand(grid.episodes, {"pendulum": "Pendulum-v1", "cartpole": "CartPole-v1"})
    pendulum_returns = grid.episodes.query("policy == 'pendulum' and seed == 0 and episode == 0")["return"]
    assert pendulum_returns.nunique() == len(pendulum_returns) == 5  # the target reaches the policy
    assert grid.episodes.query("policy == 'cartpole'")["length"].nunique() > 1


def test_every_cell_is_reported_once_with_auto_targets(grid):
    """One row per (policy, env, target, seed, episode); targets are the auto spread of each
    policy's own return stats, the normalised score uses the dataset's references."""
    keys = ["policy", "env", "target", "seed", "episode"]
    assert not grid.episodes.duplicated(keys).any()
    for name, stats, env_id in (("pendulum", PENDULUM_STATS, "Pendulum-v1"), ("cartpole", CARTPOLE_STATS, "CartPole-v1")):
        rows = grid.episodes[grid.episodes["policy"] == name]
        assert set(rows["env"]) == {env_id}
        assert sorted(rows["target"].unique()) == auto_targets(stats)
        assert len(rows) == len(auto_targets(stats)) * 2 * 2
    pendulum_rows = grid.episodes[grid.episodes["policy"] == "pendulum"]
    np.testing.assert_allclose(pendulum_rows["score"], 100 * (pendulum_rows["return"] + 1200) / 1050)
    assert grid.episodes.loc[grid.episodes["policy"] == "cartpole", "score"].isna().all()


def test_auto_targets_reach_beyond_the_max_also_for_negative_returns():
    """Quantiles 0.1/0.5/0.9, max, then max + 0.1 * range (above the max even when max < 0)."""
    assert auto_targets(PENDULUM_STATS) == [-1200.0, -700.0, -300.0, -200.0, -80.0]
    assert auto_targets({"min": 0.0, "max": 100.0}) == [100.0, 110.0]
    assert auto_targets({"min": -5.0, "max": -5.0, "quantiles": {}}) == [-5.0, -4.5]


def test_rank_correlation_ranks_ties_and_is_undefined_for_constant_sides():
    assert rank_correlation([1.0, 2.0, 3.0], [10.0, 30.0, 20.0]) == pytest.approx(0.5)
    assert rank_correlation([1, 2, 3, 4], [5, 5, 6, 7]) == pytest.approx(np.corrcoef([1, 2, 3, 4], [1.5, 1.5, 3, 4])[0, 1])
    assert np.isnan(rank_correlation([1.0, 2.0], [500.0, 500.0]))
    assert np.isnan(rank_correlation([1.0], [2.0]))


def test_calibration_counts_only_targets_inside_the_dataset_returns():
    summary = pd.DataFrame({"target": [10.0, 20.0, 30.0, 40.0], "return_mean": [1.0, 2.0, 3.0, 0.0]})
    assert calibration(summary, max_return=30.0) == pytest.approx(1.0)  # the target beyond the max is left out
    assert calibration(summary, max_return=40.0) == pytest.approx(-0.2)


def test_target_slope_is_return_gained_per_unit_asked_within_the_dataset_returns():
    summary = pd.DataFrame({"target": [10.0, 20.0, 30.0, 40.0], "return_mean": [5.0, 15.0, 25.0, 0.0]})
    assert target_slope(summary, max_return=30.0) == pytest.approx(1.0)  # one for one; the beyond target left out
    flat = summary.assign(return_mean=[7.0, 7.1, 6.9, 7.0])  # Spearman -0.5 here: the rank of noise
    assert target_slope(flat, max_return=30.0) == pytest.approx(-0.005)
    assert np.isnan(target_slope(summary, max_return=10.0))  # one target: no slope


def test_evaluation_prints_calibration_for_policies_with_targets_inside_their_data():
    summary = pd.DataFrame({"policy": ["a"] * 4 + ["b"] * 2 + ["c"] * 2, "env": ["E"] * 8,
                            "target": [10.0, 20.0, 30.0, 40.0, 10.0, 40.0, 10.0, 20.0],
                            "return_mean": [5.0, 15.0, 25.0, 0.0, 1.0, 2.0, 3.0, 4.0]})
    ranges = {"a": ("E", 0.0, 30.0), "b": ("E", 0.0, 30.0)}  # c has no dataset returns
    assert format_calibration(summary, ranges) == [  # b has one target inside its data: no line
        "calibration of a on E (targets within the dataset's returns): Spearman 1.00, slope 1.00 "
        "(1: the return follows the target one for one, 0: the target is ignored)"]
    flat = summary.assign(return_mean=7.0)  # every target reached the same return: no rank, slope 0
    assert format_calibration(flat, ranges)[0].startswith("calibration of a on E (targets within the dataset's "
                                                          "returns): Spearman – (the same return at every target), "
                                                          "slope 0.00 (")


def test_calibration_needs_the_max_the_auto_targets_were_made_from():
    stats = {"min": -34.4, "max": 164.6017, "quantiles": {"0.1": -34.3, "0.5": 3.0, "0.9": 46.8}}
    targets = auto_targets(stats)  # the 3 quantiles, the max, one beyond
    summary = pd.DataFrame({"target": targets, "return_mean": [2.0, 3.0, 4.0, 1.0, 0.0]})
    assert calibration(summary, stats["max"]) == pytest.approx(-0.2)  # the max target counts: it falls there
    # the same episodes' max summed another way, one bit lower, silently drops it (the table's old fault)
    assert calibration(summary, np.nextafter(stats["max"], -np.inf)) == pytest.approx(1.0)


def test_the_way_chosen_is_the_best_return_that_follows_the_target_else_the_best_return():
    ways = pd.DataFrame({"return": [99.0, 95.0, 90.0, 97.0], "spearman": [0.2, 1.0, 1.0, np.nan]})
    assert best_following(ways, 0.9) == 1  # greedy scores more but ignores the target
    assert best_following(ways, 1.1) == 0  # nothing follows: the best score
    assert best_following(ways.iloc[[0, 3]], 0.9) == 0  # constant returns (NaN) do not follow


def test_files_summary_and_calibration_plot(grid):
    """episodes.parquet/csv hold the same rows; summary.csv has one row per (policy, env,
    target) with |mean - target|; calibration.png is a PNG that matplotlib reads back."""
    import matplotlib.image

    out = grid.out_dir
    assert sorted(os.listdir(out)) == ["calibration.png", "episodes.csv", "episodes.parquet", "summary.csv"]
    parquet, csv = pd.read_parquet(out / "episodes.parquet"), pd.read_csv(out / "episodes.csv")
    pd.testing.assert_frame_equal(parquet, grid.episodes)
    pd.testing.assert_frame_equal(csv.drop(columns="score"), parquet.drop(columns="score"), check_dtype=False)
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 10 and (summary["episodes"] == 4).all()
    means = grid.episodes.groupby(["policy", "target"])["return"].mean().to_numpy()
    np.testing.assert_allclose(summary["return_mean"], means)
    np.testing.assert_allclose(summary["calibration_error"], np.abs(means - summary["target"]))
    with open(out / "calibration.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out / "calibration.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200


def test_a_killed_actor_is_replaced_and_its_cells_rerun_once(ray_local, tmp_path):
    """SIGKILL one actor while it steps: a new actor reruns its unfinished cells, and every
    cell is still reported exactly once, with the by-hand returns."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    slow = functools.partial(SlowPolicy, str(pid_dir), "Pendulum-v1", pendulum_rule, PENDULUM_SPEC)
    killed = []

    def kill_the_first_stepping_actor():
        while not os.listdir(pid_dir):
            time.sleep(0.05)
        time.sleep(0.3)  # well into its first episodes
        killed.append(int(os.listdir(pid_dir)[0]))
        os.kill(killed[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_first_stepping_actor, daemon=True)
    killer.start()
    config = EvalConfig(targets=[-900.0, -600.0, -300.0], seeds=[0, 1], episodes=2, num_actors=2, envs_per_actor=2)
    result = evaluate_grid({"pendulum": slow}, config, tmp_path / "out", progress=False)
    killer.join(timeout=5)

    assert killed and len(os.listdir(pid_dir)) >= 3  # the killed actor, the other one, the replacement
    assert len(result.episodes) == 12
    assert not result.episodes.duplicated(["target", "seed", "episode"]).any()
    assert_matches_by_hand(result.episodes, {"pendulum": "Pendulum-v1"})


def broken_rule(states, rtg):
    raise ValueError("broken policy")


def test_a_failing_policy_ends_the_grid_with_its_error(ray_local, tmp_path):
    """An exception in ``act`` inside an actor reaches the caller (no hang, no endless rerun)."""
    broken = functools.partial(RulePolicy, "CartPole-v1", broken_rule, CARTPOLE_SPEC)
    config = EvalConfig(targets=[1.0, 2.0], episodes=2, num_actors=1, envs_per_actor=2)
    with pytest.raises(ValueError, match="broken policy"):
        evaluate_grid({"broken": broken}, config, tmp_path, progress=False)


def test_actors_that_cannot_start_end_the_grid_at_once(ray_local, tmp_path, monkeypatch):
    """A factory the workers cannot unpickle (its rule lives in a module only the driver can
    import) is a DtrayError on the first failed actor start, not a loop of replacements."""
    (tmp_path / "driver_only_rules.py").write_text(
        "import numpy as np\n\ndef rule(states, rtg):\n    return (states[:, 2] > 0).astype(np.int64)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from driver_only_rules import rule

    factory = functools.partial(RulePolicy, "CartPole-v1", rule, CARTPOLE_SPEC)
    with pytest.raises(DtrayError, match="could not start .*No module named 'driver_only_rules'"):
        evaluate_grid({"p": factory}, EvalConfig(targets=[1.0], episodes=1, num_actors=1), tmp_path / "out",
                      progress=False)


def test_policy_sees_returns_to_go_updated_by_the_rewards():
    """In-process evaluation feeds each step's window with R_{t+1} = (R_t - r_t) / gamma,
    scaled by 1/rtg_scale, the last K steps of history left-padded; its mean return is the
    by-hand one."""
    policy = RulePolicy("Pendulum-v1", pendulum_rule, PENDULUM_SPEC, record=True)
    result = evaluate_in_process(policy, targets=[-300.0], episodes=1, seed=3)
    ret, length, rewards = run_by_hand("Pendulum-v1", pendulum_rule, PENDULUM_SPEC, -300.0, episode_seed(3, 0))
    assert result["return"] == ret and result["episodes"] == 1 and np.isnan(result["score"])

    rtg = [-300.0]
    for reward in rewards[:-1]:
        rtg.append((rtg[-1] - reward) / 0.99)
    K = PENDULUM_SPEC.context_len
    assert len(policy.seen) == length == 200
    for t, windows in enumerate(policy.seen):
        history = rtg[max(0, t - K + 1): t + 1]
        padding = K - len(history)
        expected = np.array([0.0] * padding + [r / 100.0 for r in history], dtype=np.float32)
        np.testing.assert_array_equal(windows["returns_to_go"][0], expected)
        np.testing.assert_array_equal(windows["mask"][0], [0.0] * padding + [1.0] * len(history))


class ReturnHeadPolicy(RulePolicy):
    """A RulePolicy with a stub return head: it 'draws' R̂ = -100 * alpha - (calls so far),
    so each draw is recognisable, and predicts E[R] = -777 for every window."""

    has_return_head = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.draws = []

    def choose_returns(self, windows, alpha):
        drawn = -100.0 * np.asarray(alpha) - len(self.draws)
        self.draws.append(drawn)
        return drawn, np.full(len(drawn), -777.0)


@pytest.mark.parametrize("resample", [True, False])
def test_path_integral_targets_reach_the_window_as_drawn(resample):
    """Path-integral cells: the drawn R̂ is the current step's return-to-go in the window the
    action is asked from, and stays in the history as it was used; it is drawn every step, or
    once at t=0 and then updated by the rewards as a fixed target is. The prediction at t=0
    is reported with the episode."""
    policy = ReturnHeadPolicy("Pendulum-v1", pendulum_rule, PENDULUM_SPEC, record=True)
    steps, scale = 6, PENDULUM_SPEC.rtg_scale
    evaluate_in_process(policy, targets=[], episodes=1, seed=3, alphas=[2.0], resample=resample, max_steps=steps)
    assert len(policy.seen) == steps and len(policy.draws) == (steps if resample else 1)
    if resample:
        used = [draw[0] for draw in policy.draws]
    else:
        _, _, rewards = run_by_hand("Pendulum-v1", pendulum_rule, PENDULUM_SPEC, -200.0, episode_seed(3, 0))
        used = [-200.0]
        for reward in rewards[:steps - 1]:
            used.append((used[-1] - reward) / PENDULUM_SPEC.gamma)
    for t, windows in enumerate(policy.seen):
        history = used[max(0, t - PENDULUM_SPEC.context_len + 1): t + 1]
        np.testing.assert_allclose(windows["returns_to_go"][0, -len(history):], np.array(history) / scale, rtol=1e-6)


def test_path_integral_grid_writes_the_alpha_curve(ray_local, tmp_path):
    """eval.targets=path-integral: one cell per alpha (auto: fractions of the data's return
    range), no target, the prediction at t=0 per episode, alpha_curve.csv and
    path_integral.png; a policy without a return head is refused before any actor starts."""
    heads = functools.partial(ReturnHeadPolicy, "Pendulum-v1", pendulum_rule, PENDULUM_SPEC, PENDULUM_STATS)
    config = EvalConfig(targets="path-integral", episodes=2, num_actors=1, envs_per_actor=2, max_steps=5)
    result = evaluate_grid({"heads": heads}, config, tmp_path / "out", progress=False)
    span = PENDULUM_STATS["max"] - PENDULUM_STATS["min"]
    np.testing.assert_allclose(sorted(result.episodes["alpha"].unique()), sorted(f * span for f in (1, .3, .1, .03, .01)))
    assert result.episodes["target"].isna().all() and (result.episodes["predicted_return"] == -777.0).all()
    assert sorted(os.listdir(tmp_path / "out")) == ["alpha_curve.csv", "episodes.csv", "episodes.parquet",
                                                    "path_integral.png", "summary.csv"]
    curve = pd.read_csv(tmp_path / "out" / "alpha_curve.csv")
    assert len(curve) == 5 and (curve["episodes"] == 2).all() and (curve["predicted_mean"] == -777.0).all()
    plain = functools.partial(RulePolicy, "Pendulum-v1", pendulum_rule, PENDULUM_SPEC, PENDULUM_STATS)
    with pytest.raises(DtrayError, match="no return head"):
        evaluate_grid({"plain": plain}, config, tmp_path / "refused", progress=False)


@pytest.mark.parametrize("config, message", [
    (EvalConfig(targets=[-100.0], envs=["NoSuchEnv-v0"]), "NoSuchEnv-v0"),
    (EvalConfig(targets=[-100.0], envs=["CartPole-v1"]), r"observation_space Box\(3,\), but env 'CartPole-v1' has Box\(4,\)"),
    (EvalConfig(targets=[]), "no target returns"),
    (EvalConfig(targets="auto", episodes=1), "no return_stats"),
])
def test_bad_arguments_raise_a_clear_error(config, message, tmp_path):
    """Unknown env, spaces that do not fit the policy, no targets, 'auto' without return
    stats: a DtrayError naming the problem, before any actor starts."""
    without_stats = functools.partial(RulePolicy, "Pendulum-v1", pendulum_rule, PENDULUM_SPEC)
    with pytest.raises(DtrayError, match=message):
        evaluate_grid({"pendulum": without_stats}, config, tmp_path, progress=False)
