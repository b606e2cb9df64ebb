"""Checkpoint directories: everything needed to act, plus the state for exact resume.

    model.safetensors   weights of the bare module (no pickle)
    dtray.json          run config, window spec, dataset info and statistics, step, metrics
    train_state.pt      optimiser, scheduler, step/epoch position and RNG states; tensors and
                        plain containers only, read back with ``torch.load(weights_only=True)``

Files are written into a fresh directory that Ray Train then uploads whole, so a
checkpoint is either complete or absent. Reading one never shows a library's traceback:
a missing, truncated or mismatched file is a one-line :class:`DtrayError` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from dtray.config import Config, from_dict
from dtray.data import NormStats, WindowSpec
from dtray.errors import DtrayError
from dtray.format import DatasetInfo
from dtray.model import DecisionTransformer

WEIGHTS = "model.safetensors"
META = "dtray.json"
TRAIN_STATE = "train_state.pt"
# of dtray.json and the files beside it; checkpoints without one are version 1. Version 2: a
# return head's R̂_t token embeds s_t too; version 1 is still read for models without one.
FORMAT_VERSION = 2


def return_range(config: Config, stats: NormStats) -> tuple[float, float]:
    """The return head's bins, in model units: from the dataset's lowest to its highest episode
    return, stretched to include 0, which every return-to-go reaches at an episode's end."""
    low, high = min(stats.return_min, 0.0), max(stats.return_max, 0.0)
    return low / config.data.rtg_scale, (high if high > low else low + 1.0) / config.data.rtg_scale


def build_model(config: Config, info: DatasetInfo, stats: NormStats | None = None) -> DecisionTransformer:
    """The model for a dataset: shapes and action bounds come from its spaces, the return
    head's bins (``model.return_head``) and the mean frame of image observations from its
    statistics."""
    model_config = config.model
    if info.discrete and model_config.policy != "discrete":
        model_config = type(model_config)(**{**model_config.__dict__, "policy": "discrete"})
    bounds = {} if info.discrete else {
        "action_low": info.action_space.low, "action_high": info.action_space.high}
    if bounds and not (np.isfinite(bounds["action_low"]).all() and np.isfinite(bounds["action_high"]).all()):
        raise DtrayError(f"{info.env_id}: action space {info.action_space} is unbounded; the tanh policy "
                         "head needs finite bounds (set them in the dataset's metadata)")
    if model_config.return_head and stats is None:
        raise DtrayError("model.return_head needs the dataset's return statistics to place its bins")
    return DecisionTransformer(
        model_config,
        obs_shape=info.obs_shape,
        act_dim=info.act_dim,
        discrete=info.discrete,
        context_len=config.data.context_len,
        max_ep_len=config.data.max_ep_len,
        return_range=return_range(config, stats) if model_config.return_head else None,
        frame_mean=stats.frame_mean if stats is not None else None,
        **bounds,
    )


def save(directory: str | Path, model: torch.nn.Module, config: Config, info: DatasetInfo,
         spec: WindowSpec, stats: NormStats, train_state: dict[str, Any], metrics: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS))
    torch.save(train_state, directory / TRAIN_STATE)
    meta = {
        "format_version": FORMAT_VERSION,
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
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DtrayError(f"{path}: corrupt checkpoint metadata: {err}") from None
    version = meta.get("format_version", 1) if isinstance(meta, dict) else None
    if version not in (1, FORMAT_VERSION):
        raise DtrayError(f"{path}: checkpoint format {version!r} was written by an incompatible dtray version "
                         f"(this one reads format {FORMAT_VERSION})")
    try:
        config = from_dict(meta["config"], str(path))
        spec, info = WindowSpec.from_dict(meta["spec"]), DatasetInfo.from_json(json.dumps(meta["info"]))
        stats = NormStats.from_dict(meta["stats"])
    except (KeyError, TypeError, ValueError) as err:
        raise DtrayError(f"{path}: corrupt checkpoint metadata: {type(err).__name__}: {err}") from None
    if version == 1 and config.model.return_head:
        raise DtrayError(f"{path}: a return-head model of checkpoint format 1, whose R̂ token did not embed the "
                         "state; this dtray's model of the same weights would act differently: retrain it")
    return config, spec, info, stats


def load_weights(directory: str | Path, model: torch.nn.Module) -> None:
    path = Path(directory) / WEIGHTS
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except FileNotFoundError:
        raise DtrayError(f"{path}: missing: the checkpoint has no weights") from None
    except (SafetensorError, OSError) as err:
        raise DtrayError(f"{path}: truncated or not a safetensors file ({err})") from None
    except RuntimeError as err:  # torch: tensors of other shapes than the model's
        sizes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise DtrayError(f"{path}: weights do not fit the model of {META}: {sizes[0] if sizes else err}") from None
    if missing or unexpected:
        raise DtrayError(f"{path}: weights do not fit the model of {META} (missing {missing}, unexpected {unexpected})")


def load_train_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / TRAIN_STATE
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise DtrayError(f"{path}: missing: the checkpoint cannot resume training") from None
    except Exception as err:  # noqa: BLE001 - damaged bytes raise whatever torch's parsers raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DtrayError(f"{path}: truncated or not a training state written by dtray ({first_line})") from None
