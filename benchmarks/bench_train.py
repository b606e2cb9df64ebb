"""Training samples/s on CPU: dtray's Decision Transformer vs Hugging Face's, in one run.

A second table times the shipped recipe on each built-in observation shape (vectors, the
MiniGrid grid image, pixel frame stacks): the cost of the conv encoder.

Both models get the same shape (state_dim 17, act_dim 6, K=20, batch 64, dropout 0.1, GELU,
max_ep_len 1000), the same batch (a quarter of the windows left-padded, as at episode
starts), the same loss (masked MSE on the action predictions), and the same step: AdamW
(lr 1e-4, weight decay 1e-4 on matrices), grad-norm clip 0.25. HF's model is built from a
config with SDPA attention. Variants time one thing each: the fused AdamW kernel, and bf16
autocast (only on CPUs with native bf16). After warm-up, variants take turns one step at a
time, ``--steps`` times, so that load from other processes hits all of them alike; the
table uses each variant's median step time, and also its fastest step (the least disturbed).

    python benchmarks/bench_train.py [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from dtray.config import ModelConfig
from dtray.model import DecisionTransformer, bf16_pays

STATE_DIM, ACT_DIM, K, BATCH, MAX_EP_LEN = 17, 6, 20, 64, 1000
SIZES = {"d=128, 3 layers, 1 head": (128, 3, 1), "d=256, 6 layers, 8 heads": (256, 6, 8)}


def make_batch(seed: int = 0, batch: int = BATCH) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, K)
    for row in range(batch // 4):  # windows that start before the episode does
        mask[row, : int(torch.randint(1, K, (1,), generator=gen))] = 0
    return {
        "states": torch.randn(batch, K, STATE_DIM, generator=gen) * mask[..., None],
        "actions": (torch.rand(batch, K, ACT_DIM, generator=gen) * 2 - 1) * mask[..., None],
        "returns_to_go": torch.rand(batch, K, generator=gen) * mask,
        "timesteps": torch.randint(0, MAX_EP_LEN, (batch, K), generator=gen) * mask.long(),
        "mask": mask,
    }


def dtray_model(d: int, n_layer: int, n_head: int) -> tuple[torch.nn.Module, list[dict], callable]:
    model = DecisionTransformer(ModelConfig(embed_dim=d, n_layer=n_layer, n_head=n_head), (STATE_DIM,),
                                ACT_DIM, discrete=False, context_len=K, max_ep_len=MAX_EP_LEN)
    return model, model.optimizer_groups(1e-4), lambda batch: model.loss(batch)[0]


def hf_model(d: int, n_layer: int, n_head: int) -> tuple[torch.nn.Module, list[dict], callable]:
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    config = DecisionTransformerConfig(
        state_dim=STATE_DIM, act_dim=ACT_DIM, hidden_size=d, n_layer=n_layer, n_head=n_head, n_inner=4 * d,
        activation_function="gelu", max_ep_len=MAX_EP_LEN, action_tanh=True, attn_implementation="sdpa")
    model = DecisionTransformerModel(config)
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 1e-4},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]

    def loss(batch):
        _, action_preds, _ = model(
            states=batch["states"], actions=batch["actions"], returns_to_go=batch["returns_to_go"][..., None],
            timesteps=batch["timesteps"], attention_mask=batch["mask"], return_dict=False)
        mse = F.mse_loss(action_preds.float(), batch["actions"], reduction="none").mean(-1)
        return (mse * batch["mask"]).sum() / batch["mask"].sum()

    return model, groups, loss


VARIANTS = {  # name: (builder, fused AdamW, bf16 autocast)
    "HF fp32": (hf_model, False, False),
    "HF fp32, fused AdamW": (hf_model, True, False),
    "dtray fp32": (dtray_model, False, False),
    "dtray fp32, fused AdamW": (dtray_model, True, False),
}
if bf16_pays(torch.device("cpu")):  # emulated bf16 (e.g. AVX2-only CPUs) is many times slower: not worth timing
    VARIANTS |= {"HF bf16, fused AdamW": (hf_model, True, True), "dtray bf16, fused AdamW": (dtray_model, True, True)}


def trainer(builder, size: tuple[int, int, int], fused: bool, bf16: bool):
    """A closure that runs one training step."""
    torch.manual_seed(0)
    model, groups, loss_fn = builder(*size)
    model.train()
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), fused=fused)
    batch = make_batch()

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        return loss.item()

    return step


IMAGE_CASES = {"vector (3,) (Pendulum)": (3,), "grid image (3, 6, 6) (MiniGrid)": (3, 6, 6),
               "frames (3, 40, 40) (pixel Pendulum)": (3, 40, 40), "frames (3, 40, 60) (pixel CartPole)": (3, 40, 60)}


def image_table(steps: int, warmup: int) -> None:
    """The shipped recipe (d=64, 3 layers, K=10, batch 128) on each built-in observation
    shape: what the conv encoder costs per sample against vector observations."""
    batch, context = 128, 10
    print(f"\n| observations (recipe: d=64, 3 layers, K={context}, batch {batch}) | samples/s (median step) "
          "| vs vector |\n|---|---:|---:|")
    rates = {}
    for name, obs_shape in IMAGE_CASES.items():
        torch.manual_seed(0)
        model = DecisionTransformer(ModelConfig(embed_dim=64, n_layer=3, n_head=1, policy="discrete"), obs_shape, 2, True,
                                    context_len=context, max_ep_len=MAX_EP_LEN)
        optimizer = torch.optim.AdamW(model.optimizer_groups(1e-4), lr=1e-4, fused=True)
        frames = len(obs_shape) == 3
        states = (torch.randint(0, 256, (batch, context, *obs_shape), dtype=torch.uint8) if frames
                  else torch.randn(batch, context, *obs_shape))
        windows = {"states": states, "actions": torch.randint(0, 2, (batch, context)),
                   "returns_to_go": torch.rand(batch, context), "mask": torch.ones(batch, context),
                   "timesteps": torch.arange(context).repeat(batch, 1)}
        seconds = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            loss, _ = model.loss(windows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
        rates[name] = batch / statistics.median(seconds)
        print(f"| {name} | {rates[name]:,.0f} | {rates[name] / next(iter(rates.values())):.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images-only", action="store_true", help="only the observation-shape table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.images_only:
        image_table(args.steps, args.warmup)
        return
    from transformers.utils import logging

    logging.set_verbosity_error()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {bf16_pays(torch.device('cpu'))}; batch {BATCH} x K={K}, {args.steps} interleaved steps per variant\n")
    print("| model | variant | samples/s (median step) | vs HF fp32 | samples/s (fastest step) | vs HF fp32 |")
    print("|---|---|---:|---:|---:|---:|")
    for size_name, size in SIZES.items():
        steps = {name: trainer(builder, size, fused, bf16) for name, (builder, fused, bf16) in VARIANTS.items()}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        seconds: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.steps):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                seconds[name].append(time.perf_counter() - start)
        rates = {name: (BATCH / statistics.median(t), BATCH / min(t)) for name, t in seconds.items()}
        for name, (median, fastest) in rates.items():
            base_median, base_fastest = rates["HF fp32"]
            print(f"| {size_name} | {name} | {median:,.0f} | {median / base_median:.2f}x "
                  f"| {fastest:,.0f} | {fastest / base_fastest:.2f}x |", flush=True)
    image_table(args.steps, args.warmup)


if __name__ == "__main__":
    main()
