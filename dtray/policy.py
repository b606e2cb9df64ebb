"""A return-conditioned policy that acts from context windows, with or without Ray."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from dtray.config import ActionSampling
from dtray.data import WindowSpec
from dtray.format import DatasetInfo
from dtray.model import autocast, tilted_log_probs


class Policy(Protocol):
    """What evaluation needs from a policy.

    ``act`` takes a batch of windows built by :func:`dtray.data.build_windows` (through
    :class:`dtray.data.LiveContexts`), one row per live episode, and returns the action of
    each window's last step: (B, act_dim) floats, or (B,) ints for discrete actions.
    """

    info: DatasetInfo
    spec: WindowSpec

    def act(self, windows: dict[str, np.ndarray]) -> np.ndarray: ...


class DTPolicy:
    """A trained Decision Transformer wrapped to act on numpy windows."""

    def __init__(self, model, info: DatasetInfo, spec: WindowSpec, stats, device="cpu", amp: str = "auto",
                 sampling: ActionSampling = ActionSampling()):
        self.model, self.info, self.spec, self.stats, self.amp = model, info, spec, stats, amp
        self.sampling = sampling
        self.device = torch.device(device)
        self.return_stats = {
            "min": stats.return_min,
            "max": stats.return_max,
            "quantiles": {float(q): v for q, v in stats.return_quantiles.items()},
        }

    @torch.no_grad()
    def _evaluate(self, method, windows: dict[str, np.ndarray], **kwargs) -> torch.Tensor:
        """``method(batch, **kwargs)`` of the model in eval mode (dropout off) under the
        policy's autocast, on the windows moved to the policy's device; the model's own
        mode is restored after (it may be a training worker's model)."""
        was_training = self.model.training
        self.model.eval()
        batch = {key: torch.as_tensor(value, device=self.device) for key, value in windows.items()}
        with autocast(self.amp, self.device):
            out = method(batch, **kwargs)
        self.model.train(was_training)
        return out

    def act(self, windows: dict[str, np.ndarray]) -> np.ndarray:
        """Actions for a batch of windows, chosen as the policy's ``sampling`` says."""
        actions = self._evaluate(self.model.predict, windows, sampling=self.sampling).float().cpu().numpy()
        return actions.astype(np.int64) if self.info.discrete else actions

    @property
    def has_return_head(self) -> bool:
        return bool(self.model.config.return_head)

    @torch.no_grad()
    def choose_returns(self, windows: dict[str, np.ndarray], alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Path-integral targets: for each window's current step, R̂ drawn from
        p(R | history, s_t) * exp(R / alpha), and the model's untilted mean E_p[R] (its
        prediction of the return), both in return units (float64)."""
        logits = self._evaluate(self.model.return_logits, windows)
        returns = self.model.return_centers.float() * self.spec.rtg_scale
        expected = torch.softmax(logits, dim=-1) @ returns
        alpha = torch.as_tensor(np.asarray(alpha, dtype=np.float32), device=logits.device)
        drawn = torch.multinomial(tilted_log_probs(logits, returns, alpha).exp(), 1).squeeze(1)
        return returns[drawn].double().cpu().numpy(), expected.double().cpu().numpy()


def load_policy(checkpoint_dir, device: str = "cpu", amp: str = "auto",
                sampling: ActionSampling = ActionSampling()) -> DTPolicy:
    """Rebuild the model from a checkpoint directory (local path or a Ray ``Checkpoint``);
    ``amp`` and ``sampling`` as the ``eval`` section's."""
    from dtray import checkpoint

    if hasattr(checkpoint_dir, "to_directory"):
        checkpoint_dir = checkpoint_dir.to_directory()
    config, spec, info, stats = checkpoint.read_meta(checkpoint_dir)
    model = checkpoint.build_model(config, info, stats)
    checkpoint.load_weights(checkpoint_dir, model)
    return DTPolicy(model.to(device).eval(), info, spec, stats, device, amp, sampling)
