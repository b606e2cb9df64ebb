"""dtray: Decision Transformers trained and evaluated on Ray."""

__version__ = "0.1.0"

from dtray.envs import register as _register_envs  # noqa: E402

_register_envs()  # the image envs of the built-in datasets, for every process that imports dtray


def load_policy(checkpoint, device: str = "cpu"):
    """A ready-to-act policy from a checkpoint directory, with or without Ray."""
    from dtray.policy import load_policy as _load

    return _load(checkpoint, device=device)
