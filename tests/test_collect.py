"""Built-in datasets: deterministic for a seed, tiers ordered by quality, valid output."""

import numpy as np
import pytest

from dtray.collect import ENVS, collect, list_datasets, rollout
from dtray.errors import DtrayError
from dtray.format import read_episodes, read_info
from dtray.validate import validate


def mean_return(env_name: str, tier: str, episodes: int = 6) -> float:
    episodes = 3 if env_name.startswith("pixel") else episodes  # rendering frames is slow
    return float(np.mean([e.rewards.sum() for e in rollout(env_name, tier, 0, list(range(episodes)))]))


def file_bytes(files) -> list[bytes]:
    return [path.read_bytes() for path in files]


def test_dataset_names():
    names = list_datasets()
    assert len(names) == 7 * 5
    assert {"pendulum-medium-expert", "cartpole-random", "lunarlander-expert", "reacher-medium-replay",
            "minigrid-medium-expert", "pixelpendulum-medium", "pixelcartpole-expert"} <= set(names)


@pytest.mark.parametrize("env_name", sorted(ENVS))
def test_tiers_are_ordered_by_mean_return(env_name):
    random, medium, expert = (mean_return(env_name, tier) for tier in ("random", "medium", "expert"))
    assert random < medium < expert
    assert mean_return(env_name, "medium") < mean_return(env_name, "medium-expert") < expert


@pytest.mark.parametrize("pixels", ["pixelpendulum", "pixelcartpole"])
def test_pixel_envs_return_what_their_vector_twins_do(pixels):
    """Their reference scores are measured on the twin, without rendering a frame."""
    twin = ENVS[pixels].same_returns_as
    for tier in ("random", "expert"):
        frames, vectors = rollout(pixels, tier, 7, [0, 1]), rollout(twin, tier, 7, [0, 1])
        assert [e.rewards.tolist() for e in frames] == [e.rewards.tolist() for e in vectors]


def test_experts_are_near_optimal():
    assert mean_return("pendulum", "expert", 10) > -200
    assert mean_return("cartpole", "expert", 3) == 500


def test_collect_is_deterministic_for_any_worker_count(ray_local, tmp_path):
    one = collect("pendulum-medium-replay", tmp_path / "a", seed=3, episodes=6, num_workers=1)
    again = collect("pendulum-medium-replay", tmp_path / "b", seed=3, episodes=6, num_workers=1)
    two = collect("pendulum-medium-replay", tmp_path / "c", seed=3, episodes=6, num_workers=2)
    other_seed = collect("pendulum-medium-replay", tmp_path / "d", seed=4, episodes=6, num_workers=2)
    assert file_bytes(one) == file_bytes(again) == file_bytes(two)
    assert file_bytes(one) != file_bytes(other_seed)


def test_collect_writes_a_valid_dataset_with_metadata(ray_local, tmp_path):
    out = tmp_path / "cartpole"
    collect("cartpole-random", out, seed=0, episodes=5)
    info = validate(str(out))
    assert info.env_id == "CartPole-v1" and info.discrete
    assert info.ref_min_score < 50 and info.ref_max_score == 500
    assert info.source["tier"] == "random" and info.source["seed"] == 0
    assert info.source["medium"] == {"epsilon": ENVS["cartpole"].medium_epsilon, "noise": 0.0}
    episodes = list(read_episodes(str(out)))
    assert [e.episode_id for e in episodes] == list(range(5))
    for episode in episodes:  # random CartPole falls over long before the 500-step limit
        assert episode.terminated and not episode.truncated and episode.length < 500
        assert episode.final_observation.shape == (4,)
        assert episode.rewards.sum() == episode.length


def test_pendulum_episodes_are_truncated_at_the_time_limit(ray_local, tmp_path):
    collect("pendulum-expert", tmp_path / "p", episodes=2)
    for episode in read_episodes(str(tmp_path / "p")):
        assert episode.truncated and not episode.terminated and episode.length == 200
    assert read_info(str(tmp_path / "p")).ref_max_score > -200


def test_bad_requests_are_user_errors(ray_local, tmp_path):
    with pytest.raises(DtrayError, match="unknown dataset 'pendulum-great'"):
        collect("pendulum-great", tmp_path / "x")
    (tmp_path / "exists").mkdir()
    with pytest.raises(DtrayError, match="already exists"):
        collect("pendulum-random", tmp_path / "exists", episodes=1)
