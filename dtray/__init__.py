"""dtray: Decision Transformers trained and evaluated on Ray."""

__version__ = "0.1.0"


def load_policy(checkpoint, device: str = "cpu"):
    """A ready-to-act policy from a checkpoint directory, with or without Ray."""
    from dtray.policy import load_policy as _load

    return _load(checkpoint, device=device)
