"""Checkpoint directories: everything needed to act, plus the state for exact resume.

    model.safetensors   weights of the bare module (no pickle)
    dtray.json          run config, window spec, dataset info and statistics, step, metrics
    train_state.pt      optimiser, scheduler, step/epoch position and RNG states; tensors and
                        plain containers only, read back with ``torch.load(weights_only=True)``

Files are written into a fresh directory that Ray Train then uploads whole, so a
checkpoint is either complete or absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from dtray.config import Config, from_dict
from dtray.data import NormStats, WindowSpec
from dtray.errors import DtrayError
from dtray.format import DatasetInfo
from dtray.model import DecisionTransformer

WEIGHTS = "model.safetensors"
META = "dtray.json"
TRAIN_STATE = "train_state.pt"


def build_model(config: Config, info: DatasetInfo) -> DecisionTransformer:
    """The model for a dataset: shapes and action bounds come from its spaces."""
    model_config = config.model
    if info.discrete and model_config.policy != "discrete":
        model_config = type(model_config)(**{**model_config.__dict__, "policy": "discrete"})
    bounds = {} if info.discrete else {
        "action_low": info.action_space.low, "action_high": info.action_space.high}
    if bounds and not (np.isfinite(bounds["action_low"]).all() and np.isfinite(bounds["action_high"]).all()):
        raise DtrayError(f"{info.env_id}: action space {info.action_space} is unbounded; the tanh policy "
                         "head needs finite bounds (set them in the dataset's metadata)")
    return DecisionTransformer(
        model_config,
        obs_shape=info.obs_shape,
        act_dim=info.act_dim,
        discrete=info.discrete,
        context_len=config.data.context_len,
        max_ep_len=config.data.max_ep_len,
        **bounds,
    )


def save(directory: str | Path, model: torch.nn.Module, config: Config, info: DatasetInfo,
         spec: WindowSpec, stats: NormStats, train_state: dict[str, Any], metrics: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS))
    torch.save(train_state, directory / TRAIN_STATE)
    meta = {
        "config": config.to_dict(),
        "spec": spec.to_dict(),
        "info": json.loads(info.to_json()),
        "stats": stats.to_dict(),
        "step": train_state.get("step"),
        "metrics": metrics,
    }
    (directory / META).write_text(json.dumps(meta, indent=1, default=float))
    return directory


def read_meta(directory: str | Path) -> tuple[Config, WindowSpec, DatasetInfo, NormStats]:
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DtrayError(f"{directory}: not a dtray checkpoint (no {META})") from None
    except json.JSONDecodeError as err:
        raise DtrayError(f"{path}: corrupt checkpoint metadata: {err}") from None
    return (
        from_dict(meta["config"], str(path)),
        WindowSpec.from_dict(meta["spec"]),
        DatasetInfo.from_json(json.dumps(meta["info"])),
        NormStats.from_dict(meta["stats"]),
    )


def load_weights(directory: str | Path, model: torch.nn.Module) -> None:
    missing, unexpected = load_model(model, str(Path(directory) / WEIGHTS), strict=False)
    if missing or unexpected:
        raise DtrayError(f"{directory}: weights do not match the model (missing {missing}, unexpected {unexpected})")


def load_train_state(directory: str | Path) -> dict[str, Any]:
    return torch.load(Path(directory) / TRAIN_STATE, weights_only=True)
