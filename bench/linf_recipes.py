"""l_inf recipes end to end: train, certify (lipkit.certify), attack (PGD-l_inf), side by side.

* ``digits``: ``lipkit train --recipe linf-digits`` (l_inf-distance net) against the baseline
  of the same epochs and data, a 1-Lipschitz l2 network (``model: lipmlp``, orthogonal layers,
  MaxMin) certified for l_inf with the better of two sound routes: ``lipkit.certify(p=inf)``
  (product of l_inf operator norms) and the l2 certificate divided by ``sqrt(d)``
  (``||delta||_2 <= sqrt(d) ||delta||_inf``).
* ``fmnist`` (``--fmnist-epochs N``): the ``linf-fmnist`` recipe with its schedules compressed to
  N epochs (windows are fractions of the run), interrupted after N // 2 epochs and resumed, then
  certified and attacked on the full 10k test set.  The time of the full recipe is estimated from
  measured step times at the p values its schedule visits.

``python bench/linf_recipes.py [--fmnist-epochs N] [--skip-fmnist] [--pgd-steps K]`` writes
``bench/results/linf_recipes.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

import lipkit  # noqa: E402
from lipkit.certify.margin import compute_certificates  # noqa: E402
from lipkit.exporting import export  # noqa: E402
from lipkit.training.config import RunConfig, load_recipe  # noqa: E402
from lipkit.training.data import split_for_config  # noqa: E402
from lipkit.training.linf import build_linf_model, mix_loss, pair_lipschitz, schedule_at  # noqa: E402
from lipkit.training.report import certify_run  # noqa: E402
from lipkit.training.trainer import fit  # noqa: E402

INF = math.inf


def _certify_linf(cfg: RunConfig, run_dir: Path, split, pgd_steps: int, stop_half: bool) -> dict:
    t0 = time.perf_counter()
    if stop_half:
        fit(cfg, run_dir, split=split, progress=False, stop_after=cfg.epochs // 2)  # "interrupted"
    model, hist = fit(cfg, run_dir, split=split, progress=False)
    plain = export(model, split.x_test[:256], p=INF)
    m = certify_run(plain, split, cfg.radii, pgd_steps=pgd_steps, seed=cfg.seed, p=INF)
    return {
        "config": cfg.to_dict(),
        # the attack that ran (certify_run's PGD: 1 start, no pixel clamp); the config's pgd_steps is not it
        "attack": {"steps": pgd_steps, "restarts": 1, "clamp": None},
        "clean": m["clean_accuracy"],
        "certified": m["certified_accuracy"],
        "pgd": {k: v.get("pgd_robust_accuracy") for k, v in m["pgd"].items()},
        "certificates_broken": m["certificates_broken"],
        "pgd_own_radius": m["pgd_own_radius"],
        "train_seconds": hist["train_seconds"],
        "resumed_from_epoch": hist["resumed_from"],
        "epoch_seconds": [round(r["seconds"], 2) for r in hist["history"]],
        "wall_seconds": time.perf_counter() - t0,
    }


def digits(pgd_steps: int) -> dict:
    cfg = load_recipe("linf-digits")
    split = split_for_config(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ours = _certify_linf(cfg, Path(tmp) / "linf", split, pgd_steps, stop_half=False)
        base_cfg = RunConfig(name="l2", dataset="digits", widths=[256, 256], epochs=cfg.epochs,
                             threads=cfg.threads, radii=cfg.radii, seed=cfg.seed)
        t0 = time.perf_counter()
        model, hist = fit(base_cfg, Path(tmp) / "l2", split=split, progress=False)
        plain = export(model, split.x_test[:256], p=2)
    x, y = split.x_test, split.y_test
    r_inf = compute_certificates(plain, x, INF)
    r_l2 = compute_certificates(plain, x, 2)
    d = x.shape[1]
    radius = torch.maximum(r_inf.radius, r_l2.radius / math.sqrt(d) * (1 - 1e-12))
    correct = r_l2.prediction == y
    base = {
        "config": base_cfg.to_dict(),
        "clean": correct.double().mean().item(),
        "certified": {f"{r:g}": (correct & (radius >= r)).double().mean().item() for r in cfg.radii},
        "certified_l2_to_linf_only": {
            f"{r:g}": (correct & (r_l2.radius / math.sqrt(d) >= r)).double().mean().item()
            for r in cfg.radii},
        "lipschitz_bound_linf": r_inf.lipschitz,
        "train_seconds": hist["train_seconds"],
        "wall_seconds": time.perf_counter() - t0,
    }
    return {"linf_recipe": ours, "baseline_l2_lipmlp": base}


def _step_seconds(cfg: RunConfig, split, ps: list[float], steps: int = 3) -> dict[float, float]:
    """Median seconds of one training step (forward + backward + Adam) at each relaxation p."""
    torch.manual_seed(0)
    net = build_linf_model(cfg, split.num_features, split.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x, y = split.x_train[: cfg.batch_size], split.y_train[: cfg.batch_size]
    out: dict[float, float] = {}
    for p in ps:
        for m in net.modules():
            if isinstance(m, lipkit.LinfDistLinear):
                m.p = p
        ts = []
        for _ in range(steps + 1):
            t = time.perf_counter()
            loss = mix_loss(net(x), y, pair_lipschitz(net), cfg.margin, 0.01, cfg.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ts.append(time.perf_counter() - t)
        out[p] = sorted(ts[1:])[len(ts[1:]) // 2]
    return out


def _log_gap(b: float, p: float) -> float:
    if math.isinf(b) or math.isinf(p):
        return 0.0 if b == p else math.inf
    return abs(math.log(b) - math.log(p))


def fmnist(epochs: int, pgd_steps: int) -> dict:
    full = load_recipe("linf-fmnist")
    cfg = full.replace(epochs=epochs, name="linf-fmnist-short")
    split = split_for_config(cfg)
    torch.set_num_threads(cfg.threads)
    flush = torch.set_flush_denormal(True)
    try:
        buckets = [8.0, 32.0, 128.0, 1000.0, INF]
        step_s = _step_seconds(full, split, buckets)
    finally:
        if flush:
            torch.set_flush_denormal(False)
    spe = math.ceil(len(split.x_train) / full.batch_size)
    est = 0.0
    n_relaxed = 0
    for e in range(full.epochs):
        for s in range(spe):
            p = schedule_at(full, e, s, spe).p
            near = min(buckets, key=lambda b, p=p: _log_gap(b, p))
            est += step_s[near]
            n_relaxed += math.isfinite(p)
    with tempfile.TemporaryDirectory() as tmp:
        res = _certify_linf(cfg, Path(tmp) / "fm", split, pgd_steps, stop_half=True)
    # second estimate from the short run's own epochs: its first epoch is all relaxed (p < inf),
    # its last epochs all at p = inf
    short_spe = spe
    t_relaxed = res["epoch_seconds"][0] / short_spe
    t_inf = sorted(res["epoch_seconds"][-3:])[1] / short_spe
    est_run = n_relaxed * t_relaxed + (full.epochs * spe - n_relaxed) * t_inf
    res["full_recipe_estimate"] = {
        "epochs": full.epochs,
        "steps_per_epoch": spe,
        "relaxed_steps": n_relaxed,
        "step_seconds_by_p": {("inf" if math.isinf(k) else f"{k:g}"): v for k, v in step_s.items()},
        "estimated_train_hours_from_step_timing": est / 3600,
        "step_seconds_in_short_run": {"relaxed": t_relaxed, "inf": t_inf},
        "estimated_train_hours_from_short_run": est_run / 3600,
        "note": "two estimates of the full recipe's training time (2 threads, shared machine, evaluation "
                "excluded): the sum over its steps of a separately timed step at the nearest p, and "
                "relaxed / p=inf steps timed inside the short run's first / last epochs",
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fmnist-epochs", type=int, default=8)
    ap.add_argument("--skip-fmnist", action="store_true")
    ap.add_argument("--pgd-steps", type=int, default=20)
    args = ap.parse_args()
    t0 = time.perf_counter()
    figures: dict = {"digits": digits(args.pgd_steps)}
    print("digits", {k: (v["clean"], v["certified"]) for k, v in figures["digits"].items()}, flush=True)
    if not args.skip_fmnist:
        figures["fmnist_short"] = fmnist(args.fmnist_epochs, args.pgd_steps)
        f = figures["fmnist_short"]
        print("fmnist", f["clean"], f["certified"], f["pgd"], f["full_recipe_estimate"], flush=True)
    path = write_result("linf_recipes", figures, time.perf_counter() - t0)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
