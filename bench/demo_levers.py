"""Which changes to the demo's 1-Lipschitz network raise certified l2 accuracy at radius 0.5 on digits?

Each variant is trained on the ``lipkit demo`` split with the demo's loss and optimiser (cross-entropy
with temperature 8 and margin offset 1 * sqrt(2), Adam, one-cycle lr 3e-3, batch 64) and certified
with :func:`lipkit.certified_radius` (sound: the bound of the weights the forward pass uses, round-off
included).  Train and test certified accuracy are both reported, to separate under-fitting from the
generalisation gap.

* ``base``: the demo network, three orthogonal (Cayley) dense layers of 512 with MaxMin, 100 epochs;
* ``width1024``, ``depth5``, ``epochs200``: more capacity or more training;
* ``shift``, ``shift50``: random one-pixel translations of every (half of the) training image;
* ``conv-spectral``: two 3x3 spectral-normalised convolutions (32, 64 channels, MaxMin) before the
  dense layers; ``conv-sll``: a spectral 3x3 convolution to 32 channels and three SLL residual
  convolutions (Araujo et al., ICLR 2023).

Run on an idle machine: ``python bench/demo_levers.py`` (about 20 minutes on 2 cores; ``--only`` picks
variants).  Writes ``bench/results/demo_levers.json``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
from _common import write_result
from torch import nn

import lipkit
from lipkit.training.config import DEMO_CONFIG, RunConfig
from lipkit.training.data import load_dataset, random_shift
from lipkit.training.trainer import make_loss

RADII = (0.25, 0.5, 0.75)


def dense(n_in: int, n_out: int) -> nn.Module:
    return lipkit.LipLinear(n_in, n_out, constraint="orthogonal", orthogonal_method="cayley")


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    n = 64
    for w in widths:
        layers += [dense(n, w), lipkit.MaxMin()]
        n = w
    return nn.Sequential(*layers, dense(n, 10))


def conv_net(kind: str) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Unflatten(1, (1, 8, 8)),
                               lipkit.LipConv2d(1, 32, 3, padding=1, constraint="spectral"), lipkit.MaxMin()]
    if kind == "spectral":
        layers += [lipkit.LipConv2d(32, 64, 3, padding=1, constraint="spectral"), lipkit.MaxMin()]
        channels = 64
    else:
        layers += [lipkit.SLLConv2d(32, 64) for _ in range(3)]
        channels = 32
    return nn.Sequential(*layers, nn.Flatten(), dense(channels * 64, 512), lipkit.MaxMin(), dense(512, 10))


def shift(x: torch.Tensor, gen: torch.Generator, prob: float) -> torch.Tensor:
    """Translate each 8x8 image by -1, 0 or +1 pixel per axis (zero fill) with probability ``prob``."""
    moved = random_shift(x, 1, gen, fill="zero")
    still = torch.rand(x.shape[0], generator=gen) >= prob
    return torch.where(still[:, None], x, moved)


VARIANTS: dict[str, tuple[Callable[[], nn.Module], int, float]] = {
    # name: (model, epochs, shift probability)
    "base": (lambda: mlp((512, 512, 512)), 100, 0.0),
    "width1024": (lambda: mlp((1024, 1024, 1024)), 100, 0.0),
    "depth5": (lambda: mlp((512,) * 5), 100, 0.0),
    "epochs200": (lambda: mlp((512, 512, 512)), 200, 0.0),
    "shift": (lambda: mlp((512, 512, 512)), 100, 1.0),
    "shift50": (lambda: mlp((512, 512, 512)), 100, 0.5),
    "conv-spectral": (lambda: conv_net("spectral"), 100, 0.0),
    "conv-sll": (lambda: conv_net("sll"), 100, 0.0),
}


def train(model: nn.Module, split, epochs: int, shift_prob: float) -> None:
    loss_fn = make_loss(RunConfig.from_dict(DEMO_CONFIG))  # the demo's CE with temperature and margin
    bs, lr = DEMO_CONFIG["batch_size"], DEMO_CONFIG["lr"]
    n = len(split.x_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * math.ceil(n / bs))
    gen = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for k in range(0, n, bs):
            idx = perm[k:k + bs]
            x, y = split.x_train[idx], split.y_train[idx]
            if shift_prob > 0:
                x = shift(x, gen, shift_prob)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def certified(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    radius = lipkit.certified_radius(model, x, 2)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return {"clean": round(ok.float().mean().item(), 4),
            **{str(e): round((ok & (radius >= e)).float().mean().item(), 4) for e in RADII}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    names = [v.strip() for v in args.only.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    torch.set_num_threads(args.threads)
    t_start = time.time()
    split = load_dataset("digits")
    out: dict = {"dataset": "digits", "test_points": len(split.y_test), "radii": list(RADII), "variants": {}}
    for name in names:
        make, epochs, shift_prob = VARIANTS[name]
        model = make()
        t0 = time.time()
        train(model, split, epochs, shift_prob)
        rec = {"epochs": epochs, "shift_prob": shift_prob, "train_seconds": round(time.time() - t0, 1),
               "train": certified(model, split.x_train, split.y_train),
               "test": certified(model, split.x_test, split.y_test)}
        out["variants"][name] = rec
        print(name, rec, flush=True)
    if "base" in out["variants"]:
        base = out["variants"]["base"]
        for rec in out["variants"].values():
            rec["test_certified_0.5_minus_base"] = round(rec["test"]["0.5"] - base["test"]["0.5"], 4)
            rec["time_ratio_to_base"] = round(rec["train_seconds"] / base["train_seconds"], 2)
    print("wrote", write_result("demo_levers", out, time.time() - t_start))


if __name__ == "__main__":
    main()
