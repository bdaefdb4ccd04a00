"""Training steps of the l_p phase: the native kernels with and without skipping negligible terms.

During the l_p relaxation, each l_inf-distance neuron computes ||x - w||_p for p from 8 up to 1000,
and the native kernels raise every ratio |x_i - w_i| / max_i |x_i - w_i| to the power p.  Terms
below eps / n^2 cannot change a float, and late in the phase most terms are of that kind, so the
kernels skip vectors of them (``lipkit.nn.distance.native.set_lp_skip``).  This bench times one
training step (forward, loss, backward, Adam) of the ``linf-fmnist`` model on real Fashion-MNIST
batches of 512, at several p, with skipping on and off alternating step by step in one process, and
reports the median step time of each and their ratio.

The share of negligible terms depends on the weights, so the bench runs on the model as the recipe
initialises it and, with ``--run DIR``, on the weights of a trained run (``DIR/weights.safetensors``
from ``lipkit train --recipe linf-fmnist``), and with ``--checkpoint`` on a training checkpoint
(its own model shape and weights, e.g. in the middle of the l_p phase).

``python bench/linf_lp.py [--run /work/runs/fm100sa/linf-fmnist] [--rounds 7]`` writes
``bench/results/linf_lp.json``: per weights (``init``, ``trained``) and per p the medians
``skip_ms``, ``full_ms`` and ``speedup`` (full / skip).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

P_VALUES = [8, 32, 64, 128, 256, 512, 1000]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="a trained linf-fmnist run folder (weights.safetensors)")
    ap.add_argument("--checkpoint", default=None,
                    help="a training checkpoint (RUN/checkpoints/epoch_NNNN.json): its model and weights")
    ap.add_argument("--p", default=",".join(map(str, P_VALUES)), help="exponents to time, e.g. 8,32,1000")
    ap.add_argument("--rounds", type=int, default=7, help="timed steps per variant and p")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)

    from lipkit.nn.distance import native as distance_native
    from lipkit.training.config import load_recipe
    from lipkit.training.data import load_dataset
    from lipkit.training.linf import (
        LinfSchedule,
        apply_schedule,
        distance_layers,
        mix_loss,
        pair_lipschitz,
        standardised_init,
    )
    from lipkit.training.trainer import build_model

    if distance_native.load() is None:
        raise SystemExit(f"native kernels unavailable: {distance_native.unavailable_reason()}")
    cfg = load_recipe("linf-fmnist")
    split = load_dataset("fashion-mnist")
    x_all = split.x_train.reshape(len(split.x_train), -1)
    y_all = split.y_train
    g = torch.Generator().manual_seed(0)

    models = {}
    init_model = build_model(cfg, x_all.shape[1], 10)
    standardised_init(init_model, float(x_all.mean()), float(x_all.std()))
    models["init"] = init_model
    if args.run:
        from safetensors.torch import load_file

        trained = build_model(cfg, x_all.shape[1], 10)
        trained.load_state_dict(load_file(str(Path(args.run) / "weights.safetensors")))
        models["trained"] = trained

    if args.checkpoint:  # RUN/checkpoints/epoch_NNNN.json, read (and checksummed) as the trainer does
        from lipkit.training.config import RunConfig
        from lipkit.training.trainer import checkpoint_model_state, load_checkpoint

        ck = Path(args.checkpoint)
        meta, tensors = load_checkpoint(ck.parent.parent, int(ck.stem.split("_")[-1]))
        ck_model = build_model(RunConfig.from_dict(meta["config"]), x_all.shape[1], 10)
        ck_model.load_state_dict(checkpoint_model_state(tensors))
        models[f"epoch {meta['epoch']}"] = ck_model
    p_values = [int(v) for v in args.p.split(",")]

    figures: dict[str, dict] = {}
    for label, model in models.items():
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-9)  # a real step, weights barely move
        rows = {}
        for p in p_values:
            apply_schedule(model, LinfSchedule(p=float(p), eps=cfg.margin, ce_weight=0.1))
            times: dict[bool, list[float]] = {True: [], False: []}
            for r in range(args.rounds + 1):  # round 0 warms up
                idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=g)
                xb, yb = x_all[idx], y_all[idx]
                for skip in (True, False) if r % 2 == 0 else (False, True):
                    distance_native.set_lp_skip(skip)
                    t = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    f = model(xb)
                    loss = mix_loss(f, yb, pair_lipschitz(model), cfg.margin, 0.1, cfg.temperature)
                    loss.backward()
                    opt.step()
                    if r > 0:
                        times[skip].append(time.perf_counter() - t)
            distance_native.set_lp_skip(True)
            skip_ms = 1e3 * statistics.median(times[True])
            full_ms = 1e3 * statistics.median(times[False])
            rows[str(p)] = {"skip_ms": round(skip_ms, 1), "full_ms": round(full_ms, 1),
                            "speedup": round(full_ms / skip_ms, 3)}
            print(f"{label:8s} p={p:5d}  skip {skip_ms:8.1f} ms  full {full_ms:8.1f} ms  "
                  f"x{full_ms / skip_ms:.2f}", flush=True)
        figures[label] = {"layers": len(distance_layers(model)), "steps": rows}
    write_result("linf_lp", figures, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
