"""Image datasets end to end: deterministic collection, frames stored as the policy will see
them live, uint8 windows, and a short training run on frames that beats the untrained policy."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from dtray import checkpoint
from dtray.collect import ENVS, collect, episode_start, parse_name
from dtray.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig
from dtray.data import NormStats, build_training_data
from dtray.evaluate import evaluate_in_process
from dtray.format import read_episodes, read_info
from dtray.policy import DTPolicy, load_policy
from dtray.train import fit

IMAGE_DATASETS = ["minigrid-medium", "pixelpendulum-medium-replay", "pixelcartpole-medium-expert"]


@pytest.mark.parametrize("name", IMAGE_DATASETS)
def test_stored_frames_are_the_frames_the_env_shows_when_replayed(name, ray_local, tmp_path):
    """A fresh env built by the dataset's env id, as evaluation builds it, reset with the
    episode's seed and fed its actions, shows exactly the stored observations."""
    files = collect(name, tmp_path / name, seed=5, episodes=3)
    again = collect(name, tmp_path / "again", seed=5, episodes=3, num_workers=1)
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in again]  # deterministic
    info = read_info(str(tmp_path / name))
    assert info.observation_space.dtype == np.uint8 and len(info.obs_shape) == 3
    env_name, tier = parse_name(name)
    env = gym.make(info.env_id)
    for episode in read_episodes(str(tmp_path / name)):
        _, env_seed, _ = episode_start(ENVS[env_name], tier, 5, episode.episode_id)
        live = [env.reset(seed=env_seed)[0]]
        for action in episode.actions:
            live.append(env.step(action)[0])
        assert episode.observations.dtype == np.uint8
        np.testing.assert_array_equal(np.stack(live[:-1]), episode.observations)
        np.testing.assert_array_equal(live[-1], episode.final_observation)


def test_frames_stay_uint8_in_the_windows_and_the_stats_keep_the_mean_frame(ray_local, tmp_path):
    collect("pixelpendulum-expert", tmp_path / "ds", episodes=2)
    data = build_training_data(DataConfig(paths=[str(tmp_path / "ds")], context_len=3, val_fraction=0.0), seed=0)
    windows = data.train.take_batch(8, batch_format="numpy")
    assert windows["states"].dtype == np.uint8 and windows["states"].shape == (8, 3, 3, 40, 40)
    assert data.spec.state_mean is None  # frames are scaled by the encoder, not normalised
    frames = np.concatenate([e.observations for e in read_episodes(str(tmp_path / "ds"))]).astype(np.float64)
    np.testing.assert_allclose(data.stats.frame_mean, frames.mean(0).ravel(), rtol=1e-9)
    encoder = checkpoint.build_model(Config(data=DataConfig(context_len=3)), data.info, data.stats).embed_state
    np.testing.assert_allclose(encoder.frame_mean.numpy(), frames.mean(0) / 255.0, rtol=1e-6)
    written_before = {key: value for key, value in data.stats.to_dict().items() if key != "frame_mean"}
    assert NormStats.from_dict(written_before).frame_mean is None  # an older checkpoint still loads


@pytest.mark.slow
def test_a_short_run_on_grid_images_beats_the_untrained_policy(ray_local, tmp_path):
    collect("minigrid-expert", tmp_path / "ds", episodes=60)
    config = Config(
        data=DataConfig(paths=[str(tmp_path / "ds")], context_len=5, rtg_scale=1.0, max_ep_len=360, val_fraction=0.1),
        model=ModelConfig(embed_dim=32, n_layer=2, n_head=1, dropout=0.0, policy="discrete"),
        train=TrainConfig(batch_size=32, lr=1e-3, warmup_steps=20, max_steps=300, log_every=100,
                          checkpoint_every=300, eval_every=0),
        run=RunConfig(storage_path=str(tmp_path / "runs"), name="grid", cpus_per_worker=1, torch_threads=2),
    )
    trained = load_policy(fit(config).checkpoint.path)
    torch.manual_seed(config.train.seed)  # the weights training started from
    untrained = DTPolicy(checkpoint.build_model(config, trained.info, trained.stats).eval(), trained.info, trained.spec,
                         trained.stats)
    targets = [float(trained.stats.return_max)]
    score = evaluate_in_process(trained, targets, episodes=10, seed=0)["return"]
    baseline = evaluate_in_process(untrained, targets, episodes=10, seed=0)["return"]
    assert score > baseline + 0.15, (score, baseline)
