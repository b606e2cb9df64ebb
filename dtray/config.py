"""Every hyper-parameter of a dtray run, in one place, as typed dataclasses.

A run is described by one YAML file whose top-level keys are the sections below.
Unknown keys and wrong types are errors (a typo must never silently fall back to a
default). Command lines override single keys with ``section.key=value``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dacite
import yaml

from dtray.errors import DtrayError

Sampling = Literal["length", "uniform_episode", "top_percent", "boltzmann"]
PolicyKind = Literal["deterministic", "stochastic", "binned", "discrete"]
Amp = Literal["auto", "bf16", "off"]
Compile = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class ActionSampling:
    """How an action is read from the policy head: its mean or most likely action
    (``deterministic``), or a draw at ``temperature`` (logits / T; the Gaussian's std * T)
    from the nucleus of a categorical head: its most likely actions whose probabilities
    sum to ``top_p`` (Holtzman et al., 2020). The nucleus keeps a draw off the rare actions
    of a confident policy (the random actions mixed into a noisy behaviour's data) while a
    policy unsure of its action still samples widely, which keeps it following the target."""

    deterministic: bool = True
    temperature: float = 1.0
    top_p: float = 1.0

    @classmethod
    def parse(cls, name: str) -> ActionSampling:
        """A way of acting from its short name: ``greedy``, ``T<temperature>`` (``T0.5``) or
        ``T<temperature>p<top_p>`` (``T1p0.9``), as command lines give candidates."""
        if name == "greedy":
            return cls()
        match = re.fullmatch(r"T(\d*\.?\d+)(?:p(\d*\.?\d+))?", name)
        temperature, top_p = (float(match[1]), float(match[2] or 1)) if match else (0.0, 0.0)
        if not (temperature > 0 and 0 < top_p <= 1):
            raise DtrayError(f"way of acting {name!r}: expected greedy, T<temperature> or T<temperature>p<top_p> "
                             "with temperature > 0 and top_p in (0, 1] (e.g. T1p0.9)")
        return cls(False, temperature, top_p)

    @property
    def name(self) -> str:
        """The short name :meth:`parse` reads."""
        if self.deterministic:
            return "greedy"
        return f"T{self.temperature:g}" + (f"p{self.top_p:g}" if self.top_p < 1 else "")


@dataclass
class DataConfig:
    """Where the trajectories are and how they become training windows."""

    paths: list[str] = field(default_factory=list)  # dirs, files or URIs (s3://...)
    context_len: int = 20  # K: steps per window
    gamma: float = 1.0  # discount of the return-to-go
    rtg_scale: float = 1000.0  # returns-to-go are divided by this before the model
    max_ep_len: int = 1000  # timesteps are clipped to max_ep_len - 1
    sampling: Sampling = "length"
    top_percent: float = 10.0  # for sampling="top_percent": keep the best p% episodes
    temperature: float = 1.0  # alpha for sampling="boltzmann", in return units
    normalize_states: bool = True
    val_fraction: float = 0.1  # held-out *episodes* for validation loss
    val_max_windows: int = 4096  # validation windows per pass (a stride over val steps)
    shuffle_buffer: int = 2048  # windows in each worker's local shuffle buffer
    shuffle_files: bool = True  # reshuffle file order every epoch
    deterministic: bool = False  # same window order for a seed (preserves block order; slower)
    data_cpu_limit: float = 0.0  # CPUs Ray Data may use (0 = Ray's default)
    # Object store that training windows may fill ahead of the trainer. Ray's default (0) is a
    # share of the node's store: a slow trainer then lets the look-ahead grow with the data.
    data_memory_mb: int = 1024
    # Datasets whose training windows fit this many MB are cut once and kept in the object
    # store (epochs then re-read them, reshuffled); larger ones stream, cut anew each epoch.
    # Only for the samplings that take the same windows every epoch (length, top_percent).
    materialize_mb: int = 512
    prefetch_batches: int = 1  # batches each worker prepares ahead of the step (more on GPUs)


@dataclass
class ModelConfig:
    """Decision Transformer shape; defaults are the original paper's."""

    embed_dim: int = 128
    n_layer: int = 3
    n_head: int = 1
    dropout: float = 0.1
    policy: PolicyKind = "deterministic"  # forced to "discrete" for Discrete actions
    # "binned": each action dimension a categorical over action_bins equal bins of [low, high],
    # acting with the most likely bin: the mode of noisy behaviour, where MSE learns its mean.
    action_bins: int = 64
    return_conditioned: bool = True  # false hides R̂ from the model: behaviour cloning, same network
    # A categorical head over binned returns-to-go, p(R | history, s_t), read from the s_t token;
    # the tokens of a step are then ordered (s_t, R̂_t, a_t) so that s_t has not seen R̂_t, and
    # R̂_t's token, which the action is read from, embeds s_t too.
    return_head: bool = False
    return_bins: int = 64  # bins spanning the dataset's return-to-go range
    # the share of the return head's gradient that reaches the Transformer below it (the head itself
    # always learns at full rate): 0 makes it a probe that leaves the action model as without it
    return_loss_weight: float = 0.0
    init_std: float = 0.02

    def __post_init__(self):
        if not 0.0 <= self.return_loss_weight <= 1.0:
            raise ValueError(f"model.return_loss_weight must be in [0, 1], got {self.return_loss_weight}")


@dataclass
class TrainConfig:
    """Optimisation. ``batch_size`` is global: it is split across the workers."""

    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 10_000
    lr_schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = 0.25
    max_steps: int = 100_000
    entropy_coef: float = 0.01  # stochastic policy only
    log_every: int = 100
    checkpoint_every: int = 1000
    eval_every: int = 0  # 0 = no in-training evaluation
    amp: Amp = "auto"  # bf16 autocast; auto = on GPUs and CPUs with native bf16 (the loss stays fp32)
    compile: Compile = "auto"  # torch.compile the step; auto = CUDA graphs on GPUs, eager on CPUs (no gain there)
    seed: int = 0


@dataclass
class RunConfig:
    """Ray resources and where results are stored."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int = 0  # intra-op threads per worker; 0 = Ray's rule (the worker's whole CPUs, at least 1)
    storage_path: str = "runs"  # local dir, shared filesystem or s3://...
    name: str = ""  # empty = a fresh timestamped name
    num_to_keep: int = 2
    max_failures: int = 0


@dataclass
class EvalConfig:
    """The evaluation grid: targets x envs x seeds x episodes."""

    # Target returns, "auto" (quantiles of the dataset's returns and beyond), or "path-integral":
    # R̂ drawn from p(R | history, s_t) * exp(R / alpha) (models with model.return_head).
    targets: list[float] | Literal["auto", "path-integral"] = "auto"
    alpha: list[float] | Literal["auto"] = "auto"  # path-integral temperatures, in return units
    # path-integral: draw R̂ once at t=0, then R̂ - r as for a set target; true: a fresh draw every
    # step, which asks for a sequence of returns that no episode of the data has (scores lower)
    resample_return: bool = False
    envs: list[str] = field(default_factory=list)  # empty = the checkpoint's env
    seeds: list[int] = field(default_factory=lambda: [0])
    episodes: int = 5  # per (env, target, seed) cell
    num_actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    envs_per_actor: int = 16  # episodes stepped together in one vector env
    max_steps: int = 0  # 0 = the env's own limit
    amp: Amp = "auto"  # bf16 autocast for acting, as train.amp
    deterministic: bool = True  # act with the mean (argmax); false samples a ~ p(a | history, R̂)
    temperature: float = 1.0  # when sampling: a ~ p^(1/temperature); below 1 sharpens p toward its mode
    top_p: float = 1.0  # when sampling a binned or discrete head: only its most likely actions, p summing to top_p
    out: str = ""  # results dir; empty = <checkpoint>/eval

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"eval.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"eval.top_p must be in (0, 1], got {self.top_p}")

    @property
    def sampling(self) -> ActionSampling:
        return ActionSampling(self.deterministic, self.temperature, self.top_p)

    def with_sampling(self, sampling: ActionSampling) -> EvalConfig:
        """This grid, acting the way ``sampling`` says."""
        return dataclasses.replace(self, **dataclasses.asdict(sampling))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a Config, rejecting unknown keys and wrong types with a clear message."""
    try:
        return dacite.from_dict(
            Config, data, config=dacite.Config(strict=True, cast=[tuple], type_hooks={float: _number})
        )
    except (dacite.DaciteError, TypeError, ValueError) as err:
        raise DtrayError(f"{source}: {err}") from None


def _number(value: Any) -> Any:
    """YAML reads ``1`` as int and ``3e-4`` as str; both are fine where a float is expected."""
    if isinstance(value, bool):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value  # left as is: dacite then reports the wrong type


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise DtrayError(f"override {item!r}: expected section.key=value")
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return data


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a YAML run config (or the defaults) and apply overrides."""
    if path is None:
        return loads("", overrides, "defaults")
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DtrayError(f"{path}: no such config file") from None
    return loads(text, overrides, str(path))


def loads(text: str, overrides: list[str] = (), source: str = "config") -> Config:
    """A run config from YAML text, with overrides; ``source`` names it in errors."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise DtrayError(f"{source}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise DtrayError(f"{source}: expected a mapping of sections at top level")
    return from_dict(apply_overrides(data, list(overrides)), source)


def differences(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """``section.key`` -> (value in a, value in b), for every key whose values differ."""
    flat_a, flat_b = (_flatten(_plain(c.to_dict())) for c in (a, b))
    return {key: (flat_a[key], flat_b[key]) for key in flat_a if flat_a[key] != flat_b[key]}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def dumps(config: Config) -> str:
    """The config as YAML text that :func:`load` reads back."""
    return yaml.safe_dump(_plain(config.to_dict()), sort_keys=False)


def save(config: Config, path: str | Path) -> None:
    Path(path).write_text(dumps(config))


def _plain(value: Any) -> Any:
    """Tuples become lists so that YAML stays readable and safe_load-able."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
