"""A human-readable summary of a dataset, including its path-integral view.

A return-conditioned model trained with Boltzmann sampling sees episode tau with
probability ``p(tau) = exp(G(tau)/alpha) / Z(alpha)``. ``log Z`` and the effective sample
size of these weights say how many episodes really shape training at a temperature alpha.
The dataset is validated in the same pass (``dtray validate``'s checks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from dtray.data import boltzmann_weights, effective_sample_size, log_partition
from dtray.format import DatasetInfo
from dtray.validate import list_rows, validate

ALPHA_MULTIPLES = (0.1, 0.3, 1.0, 3.0, 10.0)  # default temperatures, in units of std(G)
QUANTILES = (0.25, 0.5, 0.75)


@dataclass
class Summary:
    info: DatasetInfo
    files: int
    returns: np.ndarray  # undiscounted return of every episode
    lengths: np.ndarray
    alphas: list[float]
    log_z: list[float]
    ess: list[float]


def episode_returns(paths: str | list[str]) -> tuple[DatasetInfo, int, np.ndarray, np.ndarray]:
    """Metadata, file count, and each episode's return and length, read in the same pass
    that validates the dataset: a summary of bad data would mislead."""
    returns, lengths, files = [], [], set()

    def visit(path: str, batch) -> None:
        rewards = batch.column("rewards")
        values, rows = list_rows(rewards)
        weights = values.to_numpy(zero_copy_only=False).astype(np.float64)
        returns.append(np.bincount(rows, weights=weights, minlength=len(rewards)))
        lengths.append(pc.list_value_length(rewards).to_numpy(zero_copy_only=False))
        files.add(path)

    info = validate(paths, visit)
    return info, len(files), np.concatenate(returns), np.concatenate(lengths)


def summarize(paths: str | list[str], alphas: list[float] | None = None) -> Summary:
    info, files, returns, lengths = episode_returns(paths)
    if alphas is None:
        scale = float(returns.std()) or 1.0  # all returns equal: any alpha gives uniform weights
        alphas = [m * scale for m in ALPHA_MULTIPLES]
    return Summary(
        info=info,
        files=files,
        returns=returns,
        lengths=lengths,
        alphas=list(alphas),
        log_z=[log_partition(returns, alpha) for alpha in alphas],
        ess=[effective_sample_size(boltzmann_weights(returns, alpha)) for alpha in alphas],
    )


def describe(paths: str | list[str], alphas: list[float] | None = None) -> str:
    """The report printed by ``dtray inspect``."""
    s = summarize(paths, alphas)
    info, returns, lengths = s.info, s.returns, s.lengths
    q25, median, q75 = np.quantile(returns, QUANTILES)
    lines = [
        f"env: {info.env_id}" + (f" {json.dumps(info.env_kwargs)}" if info.env_kwargs else ""),
        f"observation space: {one_line(info.observation_space)}",
        f"action space: {one_line(info.action_space)}",
        f"files: {s.files}  episodes: {len(returns)}  steps: {int(lengths.sum())}",
        f"episode length: min {lengths.min()}  mean {lengths.mean():.1f}  max {lengths.max()}",
        f"return: min {returns.min():.2f}  q25 {q25:.2f}  median {median:.2f}  q75 {q75:.2f}  "
        f"max {returns.max():.2f}  mean {returns.mean():.2f}  std {returns.std():.2f}",
        reference_line(info, float(returns.mean())),
    ]
    if info.source:
        lines.append(f"source: {json.dumps(info.source)}")
    lines += [
        "path-integral view: p(tau) = exp(G(tau)/alpha) / Z(alpha)",
        f"  {'alpha':>12}  {'log Z':>12}  {'ESS':>10}  {'ESS %':>7}",
    ]
    for alpha, log_z, ess in zip(s.alphas, s.log_z, s.ess):
        lines.append(f"  {alpha:12.4g}  {log_z:12.4f}  {ess:10.1f}  {100 * ess / len(returns):6.1f}%")
    return "\n".join(lines)


def one_line(space) -> str:
    with np.printoptions(precision=4, linewidth=10**6):
        return str(space)


def reference_line(info: DatasetInfo, mean_return: float) -> str:
    if info.ref_min_score is None or info.ref_max_score is None:
        return "reference scores: none"
    return (f"reference scores: random {info.ref_min_score:.2f}  expert {info.ref_max_score:.2f}  "
            f"(mean return normalized: {info.normalized_score(mean_return):.1f})")
