"""Image-observation envs of the built-in datasets, registered with gymnasium.

Collection and evaluation build these envs by id (``gym.make("dtray/PixelPendulum-v1")``), so
the frames a policy sees when it acts are made by the same wrapper as the stored ones:

* ``dtray/MiniGrid-DoorKey-6x6-v0``: MiniGrid's DoorKey, the whole grid as a (3, 6, 6) uint8
  image (object, colour and state channels, the agent drawn in), 7 discrete actions; the
  policy sees the whole grid, as the planner that made the data does;
* ``dtray/PixelPendulum-v1``, ``dtray/PixelCartPole-v1``: the classic-control envs seen
  through :class:`PixelFrames`, the last 3 rendered frames in grey, downsampled by area
  averaging, as (3, H, W) uint8.

Importing :mod:`dtray` registers them (Ray workers import it before they make an env).
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np

FRAME_STACK = 3  # frames per observation: enough for a velocity


class PixelFrames(gym.Wrapper):
    """Observations become the last ``stack`` rendered frames, grey, shrunk ``factor`` times
    per side by averaging ``factor`` x ``factor`` blocks: (stack, H // factor, W // factor)
    uint8. The env must render ``rgb_array``; its own observation is hidden from the policy
    (the builtin experts read the env's state, see :func:`dtray.collect.state_of`)."""

    def __init__(self, env: gym.Env, factor: int, stack: int = FRAME_STACK):
        super().__init__(env)
        self.factor, self.frames = factor, deque(maxlen=stack)
        env.reset(seed=0)
        height, width = self._frame().shape
        self.observation_space = gym.spaces.Box(0, 255, (stack, height, width), np.uint8)

    def _frame(self) -> np.ndarray:
        rgb = np.asarray(self.env.render(), dtype=np.float32)
        f = self.factor
        height, width = rgb.shape[0] // f * f, rgb.shape[1] // f * f
        grey = rgb[:height, :width] @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.round(grey.reshape(height // f, f, width // f, f).mean(axis=(1, 3))).astype(np.uint8)

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        frame = self._frame()
        self.frames.extend([frame] * self.frames.maxlen)
        return np.stack(self.frames), info

    def step(self, action):
        _, reward, terminated, truncated, info = self.env.step(action)
        self.frames.append(self._frame())
        return np.stack(self.frames), reward, terminated, truncated, info


class GridImage(gym.ObservationWrapper):
    """MiniGrid's fully observed grid encoding, channels first: (3, W, H) uint8. Its object,
    colour and state indices (0..10) are multiplied by ``SCALE``, so that the image encoder's
    division by 255 leaves them spread over [0, 1] rather than crowded below 0.04."""

    SCALE = 20

    def __init__(self, env: gym.Env):
        from minigrid.wrappers import FullyObsWrapper

        super().__init__(FullyObsWrapper(env))
        width, height, channels = self.env.observation_space["image"].shape
        self.observation_space = gym.spaces.Box(0, 255, (channels, width, height), np.uint8)

    def observation(self, observation):
        return np.ascontiguousarray(observation["image"].transpose(2, 0, 1) * self.SCALE, dtype=np.uint8)


def make_minigrid(env_id: str, **kwargs) -> gym.Env:
    import minigrid  # noqa: F401 - registers MiniGrid's envs

    return GridImage(gym.make(env_id, **kwargs))


def make_pixel(env_id: str, factor: int, screen: dict[str, int], **kwargs) -> gym.Env:
    """``screen`` sets the env's own render size first (drawing fewer pixels is the cost)."""
    env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    for name, value in screen.items():
        setattr(env.unwrapped, name, value)
    return PixelFrames(env, factor)


IMAGE_ENVS = {
    "dtray/MiniGrid-DoorKey-6x6-v0": ("dtray.envs:make_minigrid", {"env_id": "MiniGrid-DoorKey-6x6-v0"}),
    "dtray/PixelPendulum-v1": ("dtray.envs:make_pixel",
                               {"env_id": "Pendulum-v1", "factor": 4, "screen": {"screen_dim": 160}}),
    "dtray/PixelCartPole-v1": ("dtray.envs:make_pixel",
                               {"env_id": "CartPole-v1", "factor": 4,
                                "screen": {"screen_width": 240, "screen_height": 160}}),
}


def register() -> None:
    for env_id, (entry_point, kwargs) in IMAGE_ENVS.items():
        if env_id not in gym.envs.registry:
            gym.register(env_id, entry_point=entry_point, kwargs=kwargs)
