"""The Decision Transformer: a causal Transformer over (R̂_t, s_t, a_t) tokens.

One module, read top to bottom: the Transformer block (pre-LN, SDPA, GELU MLP), the
image encoder, the policy heads' maths, the path-integral tilt of the return head, then
:class:`DecisionTransformer` itself.

Batches follow :func:`dtray.data.build_windows`: ``states`` (B,K,*obs) float32 (uint8 for
images), ``actions`` (B,K,act_dim) float32 or (B,K) int64, ``returns_to_go`` (B,K),
``timesteps`` (B,K) int64 and ``mask`` (B,K) with 0 on left padding.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dtray.config import ActionSampling, ModelConfig

TOKENS_PER_STEP = 3  # R̂_t, s_t, a_t; (s_t, R̂_t, a_t) with a return head
ACTION_READ, RETURN_READ = 1, 0  # token of a step that each head reads: the one before a_t; s_t
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # Online DT's range for the Gaussian head
ATANH_EPS = 1e-6  # dataset actions are clipped into (-1, 1) before atanh


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.embed_dim % config.n_head:
            raise ValueError(f"embed_dim={config.embed_dim} is not divisible by n_head={config.n_head}")
        self.n_head, self.dropout = config.n_head, config.dropout
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, rows: slice) -> torch.Tensor:
        """Outputs for the query tokens ``x[:, rows]``, attending to all of ``x``."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(
            q[:, :, rows], k, v, attn_mask=allowed[:, :, rows], dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).flatten(2)))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.embed_dim, 4 * config.embed_dim)
        self.proj = nn.Linear(4 * config.embed_dim, config.embed_dim)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN Transformer block, as in GPT-2 / nanoGPT."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.embed_dim)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.embed_dim)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """Outputs for the tokens ``x[:, rows]`` only: the last block computes the attention
        output and MLP just for the s_t tokens that the head reads, a third of the work."""
        x = x[:, rows] + self.attn(self.ln_1(x), allowed, rows)
        return x + self.mlp(self.ln_2(x))


class ImageEncoder(nn.Module):
    """Nature-DQN conv stack for uint8 frames (C, H, W). Frames under 36 px, too small for
    its 8x8/4 first layer, get padded 3x3 convs instead, so any frame size works; frames of
    at most 12 px are grids of cells (MiniGrid's), where any stride would merge the cells
    that hold the agent and its heading, so their convs keep every cell.

    ``frame_mean`` (the dataset's mean frame, pixel units) is subtracted first, so that what
    never changes, such as a white page behind a thin pendulum, reads as zero and the convs
    see what moves. Without it the white background drowned the rod, and pixel Pendulum
    learnt next to nothing (docs/results.md, item 19)."""

    NATURE = ((32, 8, 4, 0), (64, 4, 2, 0), (64, 3, 1, 0))  # (channels, kernel, stride, padding)
    SMALL = ((32, 3, 2, 1), (64, 3, 2, 1), (64, 3, 1, 1))
    CELLS = ((32, 3, 1, 1), (64, 3, 1, 1), (64, 3, 1, 1))

    def __init__(self, obs_shape: tuple[int, int, int], embed_dim: int, frame_mean=None):
        super().__init__()
        channels, height, width = obs_shape
        mean = torch.zeros(obs_shape) if frame_mean is None else torch.as_tensor(frame_mean).reshape(obs_shape)
        self.register_buffer("frame_mean", mean.float() / 255.0, persistent=False)
        stack = self.NATURE if min(height, width) >= 36 else self.CELLS if max(height, width) <= 12 else self.SMALL
        layers = []
        for out_channels, kernel, stride, padding in stack:
            layers += [nn.Conv2d(channels, out_channels, kernel, stride, padding), nn.ReLU()]
            channels = out_channels
        self.convs = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *obs_shape)).shape[1]
        self.proj = nn.Linear(flat, embed_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) uint8 -> (..., embed_dim)."""
        lead = frames.shape[:-3]
        x = self.convs(frames.reshape(-1, *frames.shape[-3:]).float() / 255.0 - self.frame_mean)
        return self.proj(x).reshape(*lead, -1)


# --- the tanh-Gaussian policy -----------------------------------------------------------


class Gaussian(NamedTuple):
    """The stochastic head's output: a diagonal Gaussian over pre-tanh actions."""

    mean: torch.Tensor
    log_std: torch.Tensor


def tanh_gaussian_log_prob(u: torch.Tensor, dist: Gaussian) -> torch.Tensor:
    """log p(tanh(u)) for u ~ N(mean, std), summed over action dims: the density of an action
    in [-1, 1] units. The log-det of tanh,
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), is written to be stable for large |u|."""
    normal = -0.5 * ((u - dist.mean) * torch.exp(-dist.log_std)) ** 2 - dist.log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (normal - log_det).sum(-1)


# --- the return head's path-integral tilt ------------------------------------------------


def tilted_log_probs(logits: torch.Tensor, returns: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """log of p(R) * exp(R / alpha) / Z over return bins: the data's path weight applied to the
    model's belief p(R | history, s_t). ``logits`` (B, n), ``returns`` (n,) the bins' returns,
    ``alpha`` (B,) in the same units: alpha -> inf leaves p, alpha -> 0 picks the highest bin."""
    return torch.log_softmax(logits.float() + returns.float() / alpha.float()[:, None], dim=-1)


def bf16_pays(device: torch.device) -> bool:
    """bf16 matmuls are fast on GPUs that support bf16 (Ampere and later) and on CPUs with native
    bf16 (AVX512-BF16, AMX, Arm bf16); elsewhere (e.g. AVX2-only CPUs) they are emulated and
    many times slower than fp32."""
    if device.type != "cpu":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    caps = torch.cpu.get_capabilities()
    return any(caps.get(flag, False) for flag in ("avx512_bf16", "amx_bf16", "bf16"))


def autocast(amp: str, device: torch.device | str):
    """The autocast context for ``amp``: "bf16" always, "off" never, "auto" where it pays."""
    device = torch.device(device)
    if amp == "bf16" or (amp == "auto" and bf16_pays(device)):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def bin_centers(low: float, high: float, bins: int) -> torch.Tensor:
    """Centres of ``bins`` equal bins of [low, high]."""
    return low + (high - low) / bins * (torch.arange(bins) + 0.5)


def bin_index(values: torch.Tensor, low, width, bins: int) -> torch.Tensor:
    """The bin of each value (int64); values outside the bins' range go to the edge bins."""
    return torch.floor((values.float() - low) / width).long().clamp(0, bins - 1)


def _choose(logits: torch.Tensor, sampling: ActionSampling) -> torch.Tensor:
    """Index of the most likely entry of the last dim, or a draw from softmax(logits / T)
    over its nucleus: the fewest most likely entries whose probabilities reach top_p."""
    if sampling.deterministic:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if sampling.top_p < 1.0:
        probs, order = torch.softmax(logits, -1).sort(-1, descending=True)
        beyond = probs.cumsum(-1) - probs >= sampling.top_p  # the nucleus was full before this entry
        logits = logits.masked_fill(torch.zeros_like(beyond).scatter(-1, order, beyond), float("-inf"))
    return torch.distributions.Categorical(logits=logits).sample()


# --- the model --------------------------------------------------------------------------


class DecisionTransformer(nn.Module):
    """Predicts a_t from the hidden state of the token before a_t: s_t, given (R̂, s, a) up
    to s_t. With ``return_head`` a step's tokens are (s_t, R̂_t, a_t): a_t is read from R̂_t,
    and a categorical p(R̂_t | history, s_t) over return bins from s_t, which has not seen R̂_t.
    The R̂_t token embeds s_t too, so that the action is read from a residual stream that holds
    both, as the s_t token's does in the plain order, not from one that must fetch the state
    by attention (on Pendulum medium-replay this lifted the path integral from 50.5 to 62.4,
    seed 0: docs/results.md).

    Continuous actions live in [-1, 1] inside the model: inputs are normalised with the
    action bounds, and tanh outputs are mapped back to [low, high] by :meth:`to_env`.
    ``return_range`` (low, high), in model units (returns / rtg_scale), places the return bins.
    ``frame_mean``: for image observations, the dataset's mean frame (see :class:`ImageEncoder`).
    """

    def __init__(self, config: ModelConfig, obs_shape: tuple[int, ...], act_dim: int, discrete: bool,
                 context_len: int, max_ep_len: int, action_low=None, action_high=None,
                 return_range: tuple[float, float] | None = None, frame_mean=None):
        super().__init__()
        if discrete != (config.policy == "discrete"):
            raise ValueError(f"policy={config.policy!r} does not fit {'discrete' if discrete else 'continuous'} actions")
        if config.n_layer < 1:
            raise ValueError(f"n_layer={config.n_layer}: need at least one block")
        if len(obs_shape) not in (1, 3):
            raise ValueError(f"obs_shape {obs_shape}: expected a vector (D,) or an image (C, H, W)")
        self.config, self.discrete, self.context_len = config, discrete, context_len
        d = config.embed_dim

        self.embed_return = nn.Linear(1, d)
        self.embed_state = nn.Linear(obs_shape[0], d) if len(obs_shape) == 1 else ImageEncoder(obs_shape, d, frame_mean)
        self.embed_action = nn.Embedding(act_dim, d) if discrete else nn.Linear(act_dim, d)
        self.embed_timestep = nn.Embedding(max_ep_len, d)
        self.embed_ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(d)
        outputs = {"stochastic": 2 * act_dim, "binned": act_dim * config.action_bins}.get(config.policy, act_dim)
        self.head = nn.Linear(d, outputs, bias=not discrete)
        if config.return_head:
            if return_range is None or not return_range[1] > return_range[0] or config.return_bins < 2:
                raise ValueError(f"return_head needs return_range low < high and return_bins >= 2, "
                                 f"got {return_range} and {config.return_bins}")
            # an MLP: with return_loss_weight 0 it reads features the action loss shaped, which a
            # linear read fits less well
            self.return_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, config.return_bins))
            low, high = return_range
            width = (high - low) / config.return_bins
            self.register_buffer("return_low", torch.tensor(float(low)), persistent=False)
            self.register_buffer("return_width", torch.tensor(float(width)), persistent=False)
            self.register_buffer("return_centers", bin_centers(low, high, config.return_bins), persistent=False)

        T = TOKENS_PER_STEP * context_len
        self.register_buffer("causal", torch.ones(T, T, dtype=torch.bool).tril(), persistent=False)
        if not discrete:
            low, high = _bounds(act_dim, action_low, action_high)
            self.register_buffer("action_center", (high + low) / 2, persistent=False)
            self.register_buffer("action_scale", (high - low) / 2, persistent=False)
        if config.policy == "binned":
            if config.action_bins < 2:
                raise ValueError(f"action_bins={config.action_bins}: need at least 2")
            self.register_buffer("action_bin_centers", bin_centers(-1.0, 1.0, config.action_bins), persistent=False)

        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            for layer in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(layer.weight, std=config.init_std / math.sqrt(2 * config.n_layer))
        if discrete:  # a logit is the similarity of the hidden state to that action's embedding
            self.head.weight = self.embed_action.weight

    def _init_weights(self, module: nn.Module) -> None:
        """normal(0, init_std) for Linear/Embedding; convs keep PyTorch's fan-in init (ReLU)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # --- forward ------------------------------------------------------------------------

    def forward(self, states, actions, returns_to_go, timesteps, mask, last_only: bool = False) -> torch.Tensor | Gaussian:
        """The action head's raw output at every step (junk at padded ones): pre-tanh means
        (B,K,act_dim) for "deterministic", a pre-tanh :class:`Gaussian` for "stochastic",
        logits (B,K,act_dim,bins) for "binned", (B,K,n) for "discrete". ``last_only``: the
        last step only (K=1), all that acting needs; the last block then computes one query
        per window."""
        rows = self._rows(mask.shape[1], ACTION_READ, last_only)
        return self._action_output(self._hidden(states, actions, returns_to_go, timesteps, mask, rows))

    def _rows(self, K: int, token: int, last_only: bool) -> slice:
        """Token rows that a head reads: ``token`` of every step, or of the last step only."""
        T = TOKENS_PER_STEP * K
        return slice(T - TOKENS_PER_STEP + token, T - TOKENS_PER_STEP + token + 1) if last_only \
            else slice(token, None, TOKENS_PER_STEP)

    def _hidden(self, states, actions, returns_to_go, timesteps, mask, rows: slice) -> torch.Tensor:
        """Final hidden states (B, rows, d) of the token ``rows``; the last block computes only those."""
        B, K = mask.shape
        if not self.config.return_conditioned:
            returns_to_go = torch.zeros_like(returns_to_go)
        if self.discrete:
            action_tokens = self.embed_action(actions)
        else:
            action_tokens = self.embed_action(self.normalize_action(actions))
        return_tokens, state_tokens = self.embed_return(returns_to_go.unsqueeze(-1)), self.embed_state(states)
        if self.config.return_head:  # a_t is read from R̂_t's token, which then carries s_t itself
            order = (state_tokens, return_tokens + state_tokens)
        else:
            order = (return_tokens, state_tokens)
        tokens = torch.stack((*order, action_tokens), dim=2) + self.embed_timestep(timesteps).unsqueeze(2)  # (B, K, 3, d)
        x = self.drop(self.embed_ln(tokens.reshape(B, TOKENS_PER_STEP * K, -1)))
        allowed = self._allowed(mask)
        for block in self.blocks[:-1]:
            x = block(x, allowed)
        return self.ln_f(self.blocks[-1](x, allowed, rows))

    def _action_output(self, hidden: torch.Tensor) -> torch.Tensor | Gaussian:
        out = self.head(hidden)
        if self.config.policy == "binned":
            return out.unflatten(-1, (-1, self.config.action_bins))
        if self.config.policy != "stochastic":
            return out
        mean, raw_log_std = out.chunk(2, dim=-1)  # log_std: a soft clamp as in Online DT, never a dead gradient
        return Gaussian(mean, LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw_log_std) + 1.0))

    def return_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, return_bins) of p(R̂_t | history, s_t) at each window's last step; the
        step's own R̂_t comes after s_t, so whatever it holds does not matter."""
        rows = self._rows(batch["mask"].shape[1], RETURN_READ, last_only=True)
        hidden = self._hidden(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"],
                              batch["mask"], rows)
        return self.return_head(hidden[:, -1]).float()

    def return_bin(self, returns_to_go: torch.Tensor) -> torch.Tensor:
        """The bin of each return-to-go (model units); returns outside the range go to the edge bins."""
        return bin_index(returns_to_go, self.return_low, self.return_width, self.config.return_bins)

    def _allowed(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, T) bool, True = may attend: causal and never to a padded key. Every token
        may attend to itself, so that padded rows stay finite (their outputs are unused)."""
        T = TOKENS_PER_STEP * mask.shape[1]
        real = mask.bool().repeat_interleave(TOKENS_PER_STEP, dim=1)
        self_only = torch.eye(T, dtype=torch.bool, device=mask.device)
        return self.causal[:T, :T] & (real[:, None, None, :] | self_only)

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return (action - self.action_center) / self.action_scale

    def action_bin(self, action: torch.Tensor) -> torch.Tensor:
        """The bin of each action dimension (env units in, int64 out); the bounds go to the edge bins."""
        return bin_index(self.normalize_action(action.float()), -1.0, 2.0 / self.config.action_bins, self.config.action_bins)

    def to_env(self, squashed: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [low, high]."""
        return self.action_center + self.action_scale * squashed

    # --- training -----------------------------------------------------------------------

    def loss(self, batch: dict[str, torch.Tensor], entropy_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Masked loss over real steps, computed in fp32 (also under autocast), and metrics:
        ``action_error`` (MSE in env units, or the error rate for discrete actions), plus
        ``nll`` and ``entropy`` for the stochastic policy. With a return head its weighted
        cross-entropy on the binned true R̂_t is added (metric ``return_nll``)."""
        if not self.config.return_head:
            return self._action_loss(self(batch["states"], batch["actions"], batch["returns_to_go"],
                                          batch["timesteps"], batch["mask"]), batch, entropy_coef)
        hidden = self._hidden(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"],
                              batch["mask"], slice(None))
        hidden = hidden.unflatten(1, (-1, TOKENS_PER_STEP))  # (B, K, 3, d)
        loss, metrics = self._action_loss(self._action_output(hidden[:, :, ACTION_READ]), batch, entropy_coef)
        read, weight = hidden[:, :, RETURN_READ], self.config.return_loss_weight
        shared = weight * read + (1.0 - weight) * read.detach()  # same value; the trunk gets `weight` of the gradient
        logits = self.return_head(shared).float()
        nll = F.cross_entropy(logits.flatten(0, 1), self.return_bin(batch["returns_to_go"]).flatten(), reduction="none")
        return_nll = masked_mean(nll.view_as(batch["mask"]), batch["mask"].float())
        return loss + return_nll, {**metrics, "return_nll": return_nll.detach()}

    def _action_loss(self, out, batch: dict[str, torch.Tensor], entropy_coef: float):
        mask, target = batch["mask"].float(), batch["actions"]
        if self.config.policy == "discrete":
            logits = out.float()
            nll = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(mask)
            wrong = (logits.argmax(-1) != target).float()
            return masked_mean(nll, mask), {"action_error": masked_mean(wrong, mask).detach()}
        if self.config.policy == "binned":
            logits = out.float()
            bins = self.action_bin(target)
            nll = F.cross_entropy(logits.flatten(0, 2), bins.flatten(), reduction="none").view_as(bins).mean(-1)
            action_error = (self.to_env(self.action_bin_centers[logits.argmax(-1)]) - target).square().mean(-1)
            return masked_mean(nll, mask), {"action_error": masked_mean(action_error, mask).detach()}

        mean = (out.mean if self.config.policy == "stochastic" else out).float()
        action_error = masked_mean((self.to_env(torch.tanh(mean)) - target).square().mean(-1), mask).detach()
        if self.config.policy == "deterministic":  # the original DT's MSE, in [-1, 1] units
            mse = (torch.tanh(mean) - self.normalize_action(target)).square().mean(-1)
            return masked_mean(mse, mask), {"action_error": action_error}

        dist = Gaussian(mean, out.log_std.float())
        u_target = torch.atanh(self.normalize_action(target).clamp(-1 + ATANH_EPS, 1 - ATANH_EPS))
        nll = masked_mean(-tanh_gaussian_log_prob(u_target, dist), mask)
        u_sample = dist.mean + dist.log_std.exp() * torch.randn_like(dist.mean)  # reparameterised
        entropy = masked_mean(-tanh_gaussian_log_prob(u_sample, dist), mask)  # one-sample estimate
        metrics = {"action_error": action_error, "nll": nll.detach(), "entropy": entropy.detach()}
        return nll - entropy_coef * entropy, metrics

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], sampling: ActionSampling = ActionSampling()) -> torch.Tensor:
        """The action of each window's last step: (B, act_dim) float32 in env units, or (B,)
        int64: the mean or most likely action, or drawn as ``sampling`` says."""
        out = self(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"],
                   last_only=True)
        if self.config.policy == "discrete":
            return _choose(out[:, -1].float(), sampling)
        if self.config.policy == "binned":
            return self.to_env(self.action_bin_centers[_choose(out[:, -1].float(), sampling)])
        if self.config.policy == "deterministic":
            return self.to_env(torch.tanh(out[:, -1].float()))
        mean, log_std = out.mean[:, -1].float(), out.log_std[:, -1].float()
        u = mean if sampling.deterministic else mean + sampling.temperature * log_std.exp() * torch.randn_like(mean)
        return self.to_env(torch.tanh(u))

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameters whose gradient norm is clipped together: the action model first, then the
        return head alone, so that the head's large cross-entropy gradient does not shrink the
        action model's steps through one shared norm."""
        if not self.config.return_head:
            return [list(self.parameters())]
        head = list(self.return_head.parameters())
        in_head = {id(p) for p in head}
        return [[p for p in self.parameters() if id(p) not in in_head], head]

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay Linear/Conv weights only; biases, LayerNorms and embeddings
        (including the tied discrete head) are not decayed. Each parameter appears once."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        decayed = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv2d))} - embeddings
        params = list(self.parameters())  # shared (tied) parameters are listed once
        return [
            {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
        ]


def _bounds(act_dim: int, low, high) -> tuple[torch.Tensor, torch.Tensor]:
    """Action bounds as float32 vectors; [-1, 1] when not given. Finite bounds are required:
    the tanh head can only produce actions inside a box."""
    low, high = (np.broadcast_to(np.asarray(default if bound is None else bound, dtype=np.float64).reshape(-1), (act_dim,))
                 for bound, default in ((low, -1.0), (high, 1.0)))
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
        raise ValueError(f"action bounds must be finite with low < high, got low={low}, high={high}")
    return torch.tensor(low, dtype=torch.float32), torch.tensor(high, dtype=torch.float32)
