"""The Decision Transformer: it learns every policy type, it is causal, it ignores padding,
its optimiser groups are right, and it runs under bf16 autocast; in both token orders, the
return head's (s_t, R̂_t, a_t) included, and its return distribution and tilt are right."""

import pytest
import torch
import torch.nn.functional as F

from dtray.config import ActionSampling, ModelConfig
from dtray.model import DecisionTransformer, Gaussian, ImageEncoder, _choose, tilted_log_probs

K, MAX_EP_LEN = 4, 50
LOW, HIGH = [-2.0, -1.0, 0.0], [2.0, 1.0, 5.0]  # deliberately not [-1, 1]
CASES = {  # name: (policy, obs_shape, n_actions or act_dim)
    "deterministic": ("deterministic", (5,), 3),
    "stochastic": ("stochastic", (5,), 3),
    "binned": ("binned", (5,), 3),
    "discrete": ("discrete", (5,), 4),
    "image": ("discrete", (2, 10, 10), 4),
    "return_head": ("stochastic", (5,), 3),  # the cases named return_head* order tokens (s, R̂, a)
    "return_head_discrete": ("discrete", (5,), 4),
}
RETURN_RANGE = (-1.0, 4.0)  # in model units; 10 bins of 0.5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP threads waiting
    for each other make these tests ~40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(case: str, dropout: float = 0.0, embed_dim: int = 32, n_layer: int = 2) -> DecisionTransformer:
    policy, obs_shape, act_dim = CASES[case]
    discrete = policy == "discrete"
    bounds = {} if discrete else {"action_low": LOW, "action_high": HIGH}
    head = case.startswith("return_head")
    config = ModelConfig(embed_dim=embed_dim, n_layer=n_layer, n_head=2, dropout=dropout, policy=policy,
                         return_head=head, return_bins=10)
    return DecisionTransformer(config, obs_shape, act_dim, discrete, context_len=K, max_ep_len=MAX_EP_LEN,
                               return_range=RETURN_RANGE if head else None, **bounds)


def make_batch(case: str, n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """n windows; row i is left-padded by i % K steps, padded steps zeroed as in build_windows."""
    policy, obs_shape, act_dim = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(K) >= (torch.arange(n) % K)[:, None]).float()
    if len(obs_shape) == 3:
        states = torch.randint(0, 256, (n, K, *obs_shape), generator=gen, dtype=torch.uint8)
    else:
        states = torch.randn(n, K, *obs_shape, generator=gen)
    if policy == "discrete":
        actions = torch.randint(0, act_dim, (n, K), generator=gen)
    else:
        low, high = torch.tensor(LOW), torch.tensor(HIGH)
        actions = low + (high - low) * (0.1 + 0.8 * torch.rand(n, K, act_dim, generator=gen))
    start = torch.randint(0, MAX_EP_LEN - K, (n, 1), generator=gen)
    batch = {"states": states, "actions": actions, "returns_to_go": torch.randn(n, K, generator=gen),
             "timesteps": start + torch.arange(K), "mask": mask}
    return {key: value * _expand(mask, value).to(value.dtype) for key, value in batch.items() if key != "mask"} | {"mask": mask}


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(*mask.shape, *[1] * (like.dim() - 2))


def outputs(model: DecisionTransformer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The forward output as one (B, K, n) tensor, whatever the policy."""
    out = model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"])
    return torch.cat(tuple(out), dim=-1) if isinstance(out, Gaussian) else out.flatten(2)


def fit(model: DecisionTransformer, batch: dict[str, torch.Tensor], steps: int, lr: float = 3e-3) -> list[dict]:
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.0), lr=lr)
    history = []
    for _ in range(steps):
        loss, metrics = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"loss": loss.item(), **{k: v.item() for k, v in metrics.items()}})
    return history


@pytest.mark.parametrize("case", ["deterministic", "discrete", "image"])
def test_overfits_fixed_windows(case):
    """A small model drives the loss on 8 fixed windows to ~0: MSE for continuous actions
    (predictions in env units hit the targets), 100% accuracy for discrete ones."""
    torch.manual_seed(0)
    model, batch = make_model(case), make_batch(case)
    history = fit(model, batch, steps=150)
    continuous = CASES[case][0] == "deterministic"
    assert history[-1]["loss"] < 0.02 * history[0]["loss"]
    assert history[-1]["action_error"] < (1e-3 if continuous else 1e-9)
    model.eval()
    predicted = model.predict(batch)
    if continuous:
        torch.testing.assert_close(predicted, batch["actions"][:, -1], atol=0.05, rtol=0)
    else:
        assert predicted.dtype == torch.int64 and torch.equal(predicted, batch["actions"][:, -1])


def test_binned_policy_acts_with_the_mode_of_noisy_actions_where_mse_learns_the_mean():
    """Behaviour that takes a fixed good action 60% of the time and a uniform random one
    otherwise (the medium tiers' epsilon-random actions): the MSE head learns the mean, pulled
    40% of the way to the middle of the bounds; the binned head's most likely bin is the good
    action."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    batch = {key: value.repeat(32, *([1] * (value.dim() - 1))) for key, value in make_batch("binned").items()}
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    good = low + 0.85 * (high - low)
    n = len(batch["actions"])  # 32 copies of 8 windows, which differ only in the last action:
    random_actions = low + (high - low) * torch.rand(n, 3, generator=gen)  # no input has seen it
    batch["actions"][:] = good
    batch["actions"][:, -1] = torch.where(torch.rand(n, 1, generator=gen) < 0.4, random_actions, good)
    predictions = {}
    for policy in ("deterministic", "binned"):
        model = make_model(policy)
        fit(model, batch, steps=300)
        predictions[policy] = model.eval().predict(batch)
    mean = batch["actions"][:, -1].view(32, -1, 3).mean(0).repeat(32, 1)  # ~ 0.6 good + 0.4 middle
    bin_width = (high - low) / ModelConfig().action_bins
    assert ((predictions["deterministic"] - mean).abs() < 0.05 * (high - low)).all()
    assert ((predictions["binned"] - good).abs() <= bin_width).all()


def test_stochastic_policy_learns_the_actions():
    """Tanh-Gaussian NLL falls a lot, its mean approaches the targets, and samples stay
    within the action bounds and spread around the mean."""
    torch.manual_seed(0)
    model, batch = make_model("stochastic"), make_batch("stochastic")
    history = fit(model, batch, steps=300)
    assert history[-1]["nll"] < history[0]["nll"] - 10.0  # nats per step, over 3 action dims
    model.eval()
    target = batch["actions"][:, -1]
    torch.testing.assert_close(model.predict(batch), target, atol=0.05, rtol=0)
    samples = torch.stack([model.predict(batch, ActionSampling(deterministic=False)) for _ in range(20)])
    assert torch.all(samples >= torch.tensor(LOW)) and torch.all(samples <= torch.tensor(HIGH))
    assert samples.std(0).max() > 0
    assert (samples.mean(0) - target).abs().max() < 0.2


def test_sampling_temperature_sharpens_discrete_actions_toward_the_argmax():
    """Sampling at temperature T draws from softmax(logits / T): the share of samples that
    equal the argmax grows as T falls, and is ~1 near T = 0."""
    torch.manual_seed(0)
    model, batch = make_model("discrete"), make_batch("discrete", n=64)
    model.eval()
    argmax = model.predict(batch)

    def agreement(temperature: float) -> float:
        samples = torch.stack([model.predict(batch, ActionSampling(deterministic=False, temperature=temperature))
                               for _ in range(50)])
        return (samples == argmax).float().mean().item()

    hot, warm, cold = agreement(1.0), agreement(0.01), agreement(0.001)  # untrained logits are flat
    assert hot < 0.5 < warm < cold
    assert cold > 0.97  # what remains are near-ties of the untrained logits


def test_nucleus_sampling_draws_only_the_most_likely_actions_that_reach_top_p():
    """top_p keeps the fewest most likely actions whose probabilities reach it and draws
    among them in their renormalised proportions; top_p = 1 keeps every action."""
    torch.manual_seed(0)
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5]])
    logits = probs.log().repeat(4000, 1)

    def shares(top_p: float) -> torch.Tensor:
        drawn = _choose(logits, ActionSampling(deterministic=False, top_p=top_p)).view(4000, 2)
        return torch.stack([F.one_hot(drawn[:, row], 3).float().mean(0) for row in range(2)])

    torch.testing.assert_close(shares(1.0), probs, atol=0.03, rtol=0)
    torch.testing.assert_close(shares(0.75), torch.tensor([[0.0, 2 / 3, 1 / 3], [0.0, 0.375, 0.625]]), atol=0.03, rtol=0)
    torch.testing.assert_close(shares(0.45), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), atol=0, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_future_tokens_never_change_earlier_predictions(case):
    """Changing R̂_j, s_j or a_j leaves the predictions of steps < j unchanged, and a_j
    (which comes after s_j) leaves step j's own prediction unchanged too."""
    torch.manual_seed(0)
    model = make_model(case).eval()
    batch = make_batch(case, n=4)
    batch["mask"] = torch.ones_like(batch["mask"])
    before = outputs(model, batch)
    other = make_batch(case, n=4, seed=1)
    for j in range(1, K):
        for key in ("returns_to_go", "states", "actions"):
            changed = {k: v.clone() for k, v in batch.items()}
            changed[key][:, j] = other[key][:, j]
            after = outputs(model, changed)
            last_same = j + 1 if key == "actions" else j
            torch.testing.assert_close(after[:, :last_same], before[:, :last_same], atol=1e-6, rtol=0)
            if key == "states":  # the test can fail: step j does see s_j
                assert not torch.allclose(after[:, j], before[:, j])


@pytest.mark.parametrize("case", list(CASES))
def test_padded_content_never_changes_real_outputs(case):
    """Garbage in left-padded steps (mask 0) changes no real step's output nor the loss."""
    torch.manual_seed(0)
    model = make_model(case).eval()
    batch = make_batch(case)
    padded = batch["mask"] == 0
    changed = dict(batch)
    for key in ("states", "actions", "returns_to_go", "timesteps"):
        changed[key] = torch.where(_expand(padded, batch[key]), garbage(case, key, batch[key]), batch[key])
    real = batch["mask"].bool()
    torch.testing.assert_close(outputs(model, changed)[real], outputs(model, batch)[real], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.loss(changed)[0], model.loss(batch)[0], atol=1e-6, rtol=0)


def garbage(case: str, key: str, like: torch.Tensor) -> torch.Tensor:
    """Valid but wild values for a batch field (large states and returns, any timestep)."""
    gen = torch.Generator().manual_seed(2)
    if like.dtype == torch.uint8:
        return torch.randint(0, 256, like.shape, generator=gen, dtype=torch.uint8)
    if key == "timesteps":
        return torch.randint(0, MAX_EP_LEN, like.shape, generator=gen)
    if key == "actions" and like.dtype == torch.int64:
        return torch.randint(0, CASES[case][2], like.shape, generator=gen)
    return 100 * torch.randn(like.shape, generator=gen)


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_groups_cover_every_parameter_once(case):
    """Linear/Conv weights decay; biases, LayerNorms and embeddings (also the tied discrete
    head) do not; every parameter is in exactly one group, and a forward+loss uses them all
    (DDP needs no find_unused_parameters)."""
    model = make_model(case)
    decay, no_decay = model.optimizer_groups(0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    ids = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    names = {id(p): name for name, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert all(name.endswith(".weight") and "ln" not in name and "embed_timestep" not in name for name in decayed)
    assert {"embed_timestep.weight", "embed_ln.weight", "embed_ln.bias", "ln_f.weight"} <= {
        names[id(p)] for p in no_decay["params"]}
    assert ("embed_action.weight" in decayed) == (CASES[case][0] != "discrete")
    model.loss(make_batch(case))[0].backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_autocast_is_close_to_fp32(case):
    """Under CPU bf16 autocast the forward runs, stays close to fp32, and the loss is fp32."""
    torch.manual_seed(0)
    model = make_model(case).eval()
    batch = make_batch(case)
    reference, (loss32, _) = outputs(model, batch), model.loss(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, (loss16, metrics) = outputs(model, batch), model.loss(batch)
    assert low.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    torch.testing.assert_close(low.float(), reference, atol=0.03, rtol=0.03)
    torch.testing.assert_close(loss16, loss32, atol=0.02, rtol=0.02)
    assert all(torch.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("case", list(CASES))
def test_acting_reads_the_last_step_of_the_full_forward(case):
    """predict computes only the last state token in the last block; it must equal the last
    step of the full forward, mapped to env units (or the argmax action)."""
    torch.manual_seed(0)
    model = make_model(case).eval()
    batch = make_batch(case)
    last = outputs(model, batch)[:, -1]
    with torch.no_grad():
        acted = model.predict(batch)
    if CASES[case][0] == "discrete":
        torch.testing.assert_close(acted, last.argmax(-1))
    elif CASES[case][0] == "binned":
        bins = last.unflatten(-1, (CASES[case][2], -1)).argmax(-1)
        torch.testing.assert_close(acted, model.to_env(model.action_bin_centers[bins]))
    else:
        mean = last[:, :CASES[case][2]]
        torch.testing.assert_close(acted, model.to_env(torch.tanh(mean)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conditioned", [True, False])
def test_returns_to_go_reach_the_actions_only_when_return_conditioned(conditioned):
    """return_conditioned=false is behaviour cloning with the same network: R̂ is hidden."""
    torch.manual_seed(0)
    model = make_model("deterministic")
    model.config.return_conditioned = conditioned
    model.eval()
    batch = make_batch("deterministic")
    other = dict(batch, returns_to_go=batch["returns_to_go"] + 3.0 * batch["mask"])
    changed = not torch.allclose(outputs(model, batch), outputs(model, other))
    assert changed == conditioned


def test_auto_amp_uses_bf16_only_where_it_pays(monkeypatch):
    """bf16 on CPUs without native bf16 is emulated and many times slower than fp32."""
    from dtray import model as model_module

    for native, expected in ((False, False), (True, True)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": native})
        with model_module.autocast("auto", "cpu"):
            assert torch.is_autocast_enabled("cpu") == expected
    with model_module.autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
    with model_module.autocast("off", "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_image_encoder_sees_frames_less_the_mean_frame():
    """What every frame shares, the dataset's mean frame, reaches the convs as zeros; the mean
    is rebuilt from the checkpoint's statistics, not stored with the weights."""
    shape = CASES["image"][1]
    mean_frame = torch.randint(0, 256, shape, dtype=torch.uint8)
    with_mean = ImageEncoder(shape, 8, frame_mean=mean_frame.flatten().tolist())
    plain = ImageEncoder(shape, 8)
    plain.load_state_dict(with_mean.state_dict())
    torch.testing.assert_close(with_mean(mean_frame[None]), plain(torch.zeros(1, *shape, dtype=torch.uint8)))
    assert "frame_mean" not in with_mean.state_dict()


def test_bad_arguments_are_value_errors():
    config = ModelConfig(embed_dim=16, n_head=2)
    with pytest.raises(ValueError, match="policy"):
        DecisionTransformer(config, (3,), 4, discrete=True, context_len=K, max_ep_len=MAX_EP_LEN)
    with pytest.raises(ValueError, match="policy"):
        DecisionTransformer(ModelConfig(policy="discrete"), (3,), 2, discrete=False, context_len=K, max_ep_len=10)
    with pytest.raises(ValueError, match="obs_shape"):
        DecisionTransformer(config, (3, 3), 2, discrete=False, context_len=K, max_ep_len=10)
    with pytest.raises(ValueError, match="bounds"):
        DecisionTransformer(config, (3,), 2, discrete=False, context_len=K, max_ep_len=10,
                            action_low=[-1, -float("inf")], action_high=[1, float("inf")])
    with pytest.raises(ValueError, match="divisible"):
        DecisionTransformer(ModelConfig(embed_dim=10, n_head=3), (3,), 2, discrete=False, context_len=K, max_ep_len=10)


@pytest.mark.parametrize("case", ["return_head", "return_head_discrete"])
def test_return_head_reads_s_t_before_r_t(case):
    """p(R̂_t | history, s_t) at the last step: unchanged by R̂_t, a_t and padded garbage,
    changed by s_t; the loss adds its cross-entropy (metric return_nll)."""
    torch.manual_seed(0)
    model = make_model(case).eval()
    batch = make_batch(case)
    other = make_batch(case, seed=1)
    before = model.return_logits(batch)
    assert before.shape == (8, 10)
    for key, changes in (("returns_to_go", False), ("actions", False), ("states", True)):
        changed = {k: v.clone() for k, v in batch.items()}
        changed[key][:, -1] = other[key][:, -1]
        after = model.return_logits(changed)
        assert not torch.allclose(after, before) if changes else torch.equal(after, before), key
    padded = batch["mask"] == 0
    garbled = {k: torch.where(_expand(padded, v), garbage(case, k, v), v) if k != "mask" else v for k, v in batch.items()}
    torch.testing.assert_close(model.return_logits(garbled), before, atol=1e-6, rtol=0)
    loss, metrics = model.loss(batch)
    assert metrics["return_nll"] > 0 and loss > metrics["return_nll"]


@pytest.mark.parametrize("case", ["return_head", "return_head_discrete"])
def test_return_head_models_read_the_action_from_a_token_that_holds_s_t_itself(case):
    """With attention silenced (no token reads another), the action read from R̂_t's token
    still changes with s_t: that token embeds the state, as the s_t token does in the
    plain order, rather than fetching it by attention."""
    torch.manual_seed(0)
    model = make_model(case).eval()
    for block in model.blocks:
        torch.nn.init.zeros_(block.attn.proj.weight)
        torch.nn.init.zeros_(block.attn.proj.bias)
    batch = make_batch(case)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["states"][:, -1] = make_batch(case, seed=1)["states"][:, -1]
    assert not torch.allclose(outputs(model, changed)[:, -1], outputs(model, batch)[:, -1])


def return_head_grads(weight: float, action_only: bool = False, clip: float | None = None) -> dict[str, torch.Tensor]:
    """Gradients of a fresh return-head model's loss (or of its action loss alone) on one
    batch, optionally clipped per :meth:`clip_groups` as the trainer does."""
    batch = make_batch("return_head")
    torch.manual_seed(0)
    model = make_model("return_head")
    model.config.return_loss_weight = weight
    if action_only:
        out = model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"])
        loss = model._action_loss(out, batch, 0.0)[0]
    else:
        loss = model.loss(batch)[0]
    loss.backward()
    if clip is not None:
        for group in model.clip_groups():
            torch.nn.utils.clip_grad_norm_(group, clip)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_return_loss_reaches_the_shared_trunk_only_by_its_weight():
    """The return head always learns from its full cross-entropy; the Transformer below it gets
    ``return_loss_weight`` of that gradient: at 0 it trains exactly as on the action loss alone."""
    grads = return_head_grads
    probe, full, quarter, action = grads(0.0), grads(1.0), grads(0.25), grads(0.0, action_only=True)
    trunk = [name for name in action if not name.startswith("return_head")]
    assert trunk and all(name.startswith("return_head") for name in set(probe) - set(action))
    for name in trunk:
        torch.testing.assert_close(probe[name], action[name], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(quarter[name], 0.75 * probe[name] + 0.25 * full[name], atol=1e-6, rtol=1e-4)
    assert any(not torch.allclose(full[name], probe[name]) for name in trunk)
    for name in (name for name in full if name.startswith("return_head")):
        torch.testing.assert_close(probe[name], full[name])


def test_gradient_clipping_keeps_the_return_head_apart_from_the_action_model():
    """One shared norm would let the head's large cross-entropy gradient shrink the action
    model's steps; clipped per group, a probe's action model steps as on the action loss alone."""
    model = make_model("return_head")
    action_params, head_params = model.clip_groups()
    assert {id(p) for p in head_params} == {id(p) for p in model.return_head.parameters()}
    assert len(action_params) + len(head_params) == len(list(model.parameters()))
    assert len(make_model("stochastic").clip_groups()) == 1
    clip = 1e-3  # small enough that every group is clipped
    probe, action = return_head_grads(0.0, clip=clip), return_head_grads(0.0, action_only=True, clip=clip)
    for name, grad in action.items():
        torch.testing.assert_close(probe[name], grad, atol=1e-8, rtol=1e-5)


@pytest.mark.parametrize("weight", [0.0, 1.0])  # a probe on the action model's features; trained jointly
def test_return_head_learns_a_known_return_distribution(weight):
    """Returns-to-go drawn per step as 3.25 with probability 0.9 when s[0] = 2, 0.2 when
    s[0] = -2 (1.25 otherwise): the head's probabilities of the two bins approach those numbers."""
    torch.manual_seed(0)
    model = make_model("return_head")
    model.config.return_loss_weight = weight
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.0), lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def sample(n):
        batch = make_batch("return_head", n=n, seed=int(torch.randint(0, 10**6, (1,), generator=gen)))
        batch["mask"] = torch.ones_like(batch["mask"])
        batch["states"][..., 0] = 2.0 * batch["states"][..., 0].sign()  # a clear sign to condition on
        p_high = torch.where(batch["states"][..., 0] > 0, 0.9, 0.2)
        batch["returns_to_go"] = torch.where(torch.rand(p_high.shape, generator=gen) < p_high, 3.25, 1.25)
        return batch, p_high

    for _ in range(300):
        batch, _ = sample(64)
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    batch, p_high = sample(512)
    with torch.no_grad():
        probs = torch.softmax(model.return_logits(batch), dim=-1)
    high, low = model.return_bin(torch.tensor([3.25, 1.25]))
    assert (probs[:, high] + probs[:, low]).mean() > 0.95
    for wanted in (0.9, 0.2):
        rows = p_high[:, -1] == wanted
        assert abs(probs[rows, high].mean() - wanted) < 0.07, (wanted, probs[rows, high].mean())


def test_tilt_is_p_times_exp_return_over_alpha_renormalised():
    """p(R) exp(R / alpha) / Z on a fixed example; alpha -> inf leaves p, alpha -> 0 the top bin."""
    p = torch.tensor([[0.5, 0.3, 0.2]])
    returns = torch.tensor([0.0, 10.0, 20.0])
    weights = p * torch.exp(returns / 10.0)
    tilted = tilted_log_probs(p.log(), returns, torch.tensor([10.0])).exp()
    torch.testing.assert_close(tilted, weights / weights.sum())
    torch.testing.assert_close(tilted_log_probs(p.log(), returns, torch.tensor([float("inf")])).exp(), p)
    torch.testing.assert_close(tilted_log_probs(p.log(), returns, torch.tensor([1e-3])).exp(), torch.tensor([[0.0, 0.0, 1.0]]))


def test_policy_draws_returns_in_return_units():
    """DTPolicy.choose_returns: bins' returns are model units x rtg_scale; the prediction is
    E_p[R]; a tiny alpha draws the top bin, an infinite one draws as often as p says."""
    import types

    import numpy as np

    from dtray.data import WindowSpec
    from dtray.policy import DTPolicy

    torch.manual_seed(0)
    model = make_model("return_head").eval()
    spec = WindowSpec(context_len=K, max_ep_len=MAX_EP_LEN, rtg_scale=100.0, gamma=1.0)
    stats = types.SimpleNamespace(return_min=-100.0, return_max=400.0, return_quantiles={})
    policy = DTPolicy(model, info=None, spec=spec, stats=stats)
    batch = make_batch("return_head", n=2)
    windows = {key: value.numpy() for key, value in batch.items()}
    returns = 100.0 * (RETURN_RANGE[0] + 0.5 * (torch.arange(10) + 0.5))  # bin centres, in return units
    with torch.no_grad():
        probs = torch.softmax(model.return_logits(batch), dim=-1)
    drawn, expected = policy.choose_returns(windows, np.array([1e-4, 1e-4]))
    # two float32 forward passes of the same windows: equal up to float32 rounding, which varies by CPU
    np.testing.assert_allclose(expected, (probs.double() @ returns.double()).numpy(), rtol=1e-4)
    np.testing.assert_allclose(drawn, [returns[-1].item()] * 2)
    torch.manual_seed(1)
    many = {key: np.repeat(value[:1], 4000, axis=0) for key, value in windows.items()}
    drawn, _ = policy.choose_returns(many, np.full(4000, np.inf))
    frequencies = np.array([(np.isclose(drawn, r)).mean() for r in returns.numpy()])
    np.testing.assert_allclose(frequencies, probs[0].numpy(), atol=0.03)
