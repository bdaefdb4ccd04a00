"""Certify a trained run, check it with an attack, and write a report a person reads.

A run folder ``runs/<name>/`` holds ``config.json`` and ``weights.safetensors`` (the exported,
plain-torch weights; read and written by :mod:`lipkit.training.runs`).  :func:`certify_run` takes the
reloaded model and computes the sound l_p bound ``L`` of those
exact weights with :func:`lipkit.lipschitz_bound` (p = the run's norm, 2 or inf), the certified
radius of every test point from :func:`lipkit.certify.compute_certificates` (l2:
``(f_y - max_{j!=y} f_j) / (sqrt(2) L)``; l_inf: ``margin / (2 L)``, or the pairwise rule of a hybrid
head) and the certified accuracy per radius, then runs a PGD attack in the same norm of radius
``r`` on every point certified at ``r``: a certificate is *broken* if the attack changes the
prediction, which would prove a bug (the expected count is 0).
:func:`write_report` writes ``metrics.json``, ``certified_accuracy.png`` and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipkit.bounds import lipschitz_bound
from lipkit.training.checkpoints import atomic_write_bytes
from lipkit.training.config import RunConfig
from lipkit.training.data import Split
from lipkit.training.runs import RunError, load_run, save_weights
from lipkit.training.trainer import margin_radius

__all__ = ["certify_run", "interval_figures", "write_report",
           # run-folder I/O, re-exported from lipkit.training.runs (its home)
           "RunError", "load_run", "save_weights"]


def certify_run(model: nn.Module, split: Split, radii: list[float], pgd_steps: int = 50,
                seed: int = 0, p: float = 2.0) -> dict[str, Any]:
    """Clean accuracy, certified accuracy per radius and two PGD checks, on the test split.

    * per radius ``r``: every point certified at ``r`` is attacked by l_p PGD inside the ball of
      radius ``r`` (:func:`lipkit.certify.attacks.pgd`, no input clamping: the certificate covers the
      whole ball); ``broken`` counts prediction changes (must be 0).  The same attack on every
      correctly classified point gives the empirical robust accuracy, an upper bound of the
      certified accuracy;
    * per point: :func:`lipkit.certify.attacks.check_certificates` attacks each certified point at
      0.999 x its own radius, and at 3 x its radius to show the attack has teeth.
    """
    from lipkit.certify.attacks import check_certificates, pgd

    t0 = time.perf_counter()
    model.eval()
    x, y = split.x_test, split.y_test
    bound = lipschitz_bound(model, p, input_shape=tuple(x.shape[1:]))  # (conv rules: the known image size)
    correct, radius = margin_radius(model, x, y, bound, p=p)
    cert = {f"{r:g}": (radius >= r).double().mean().item() for r in radii}
    pgd_res: dict[str, Any] = {}
    gen = torch.Generator().manual_seed(seed)
    for r in radii:
        entry: dict[str, Any] = {"certified_points": int((radius >= r).sum()), "broken": 0,
                                 "steps": pgd_steps}
        if pgd_steps > 0:
            idx = correct.nonzero().squeeze(1)
            adv = pgd(model, x[idx], y[idx], r, p, steps=pgd_steps, clamp=None, generator=gen)
            with torch.no_grad():
                fooled = model(adv).argmax(1) != y[idx]
            entry["broken"] = int((fooled & (radius[idx] >= r)).sum())
            entry["pgd_robust_accuracy"] = (~fooled).double().sum().item() / len(y)
        pgd_res[f"{r:g}"] = entry
    per_point: dict[str, Any] = {}
    if pgd_steps > 0:
        chk = check_certificates(model, x, y, p, radii=radius, steps=pgd_steps, restarts=1, generator=gen)
        per_point = {"n_certified": chk.n_certified, "n_broken": chk.n_broken,
                     "attack_success_at_3x_radius": chk.baseline_success, "factor": 0.999}
    broken = sum(e["broken"] for e in pgd_res.values()) + per_point.get("n_broken", 0)
    return {
        "dataset": split.name,
        "n_test": len(y),
        "p": "inf" if p == float("inf") else p,
        "lipschitz_bound": bound,
        "clean_accuracy": correct.double().mean().item(),
        "certified_accuracy": cert,
        "pgd": pgd_res,
        "pgd_own_radius": per_point,
        "certificates_broken": int(broken),
        "radius_quantiles": {f"{q:g}": radius.quantile(q).item() for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        "radii_sorted": radius.sort().values.tolist(),
        "certify_seconds": time.perf_counter() - t0,
    }


def interval_figures(model: nn.Module, split: Split, radii: list[float],
                     input_domain: tuple[float, float] | None = None, pgd_steps: int = 50,
                     seed: int = 0) -> dict[str, Any]:
    """l_inf certified accuracy per radius from :func:`lipkit.interval_certified` (margin or interval
    bounds; the ball clipped to ``input_domain`` when given), with a PGD check of the points that only
    the interval bounds certify (attack clamped to ``input_domain``; ``broken`` must be 0)."""
    import math

    from lipkit.certify.attacks import pgd
    from lipkit.certify.interval import interval_certified
    from lipkit.certify.margin import compute_certificates

    t0 = time.perf_counter()
    model.eval()
    x, y = split.x_test, split.y_test
    res = compute_certificates(model, x, math.inf)  # once for all radii
    correct = (res.prediction == y).nonzero().squeeze(1)
    xc, radius, pred = x[correct], res.radius[correct], res.prediction[correct]
    # the certificates of the correctly classified points only: the interval test runs on those alone
    res_c = dataclasses.replace(res, radius=radius, prediction=pred, margin=res.margin[correct],
                                allowance=res.allowance[correct])
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"input_domain": list(input_domain) if input_domain is not None else None,
                           "certified_accuracy": {}, "interval_only_points": {}, "broken": {}}
    for r in radii:
        cert = interval_certified(model, xc, r, input_domain=input_domain, certificates=res_c)[0]
        only = (cert & ~(radius >= r)).nonzero().squeeze(1)
        broken = 0
        if only.numel() and pgd_steps > 0:
            xs = xc[only]
            adv = pgd(model, xs, pred[only], r, math.inf, steps=pgd_steps, restarts=2, clamp=input_domain,
                      generator=gen)
            with torch.no_grad():
                broken = int((model(adv).argmax(1) != pred[only]).sum())
        key = f"{r:g}"
        out["certified_accuracy"][key] = float(cert.sum()) / len(y)
        out["interval_only_points"][key] = int(only.numel())
        out["broken"][key] = broken
    out["seconds"] = time.perf_counter() - t0
    return out


def _plot(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = torch.tensor(metrics["radii_sorted"], dtype=torch.float64)
    top = max(float(rs.max()) if len(rs) else 1.0, max(float(k) for k in metrics["certified_accuracy"]))
    top *= 1.05
    grid = torch.linspace(0.0, top, 200, dtype=torch.float64)
    curve = [(rs >= g).double().mean().item() if g > 0 else metrics["clean_accuracy"] for g in grid.tolist()]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(grid.numpy(), curve, label="certified (sound bound)")
    ks = sorted(metrics["certified_accuracy"], key=float)
    ax.scatter([float(k) for k in ks], [metrics["certified_accuracy"][k] for k in ks], zorder=3)
    pgd_pts = [(float(k), v["pgd_robust_accuracy"]) for k, v in metrics.get("pgd", {}).items()
               if "pgd_robust_accuracy" in v]
    if pgd_pts:
        pgd_pts.sort()
        ax.plot(*zip(*pgd_pts, strict=True), "x--", label="PGD empirical (upper bound)")
    ax.set_xlabel(f"{_norm_name(metrics.get('p', 2))} radius")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"{metrics.get('dataset', '')}: certified accuracy vs radius")
    ax.legend(loc="lower left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _own_radius_line(d: dict[str, Any]) -> str:
    if not d:
        return "Per-point PGD check: skipped."
    return (f"Per-point PGD check: {d['n_certified']} certified points attacked at 0.999 x their own radius, "
            f"**{d['n_broken']} broken**; at 3 x the radius the attack succeeds on "
            f"{100 * d['attack_success_at_3x_radius']:.1f}% of them (the attack works).")


def _norm_name(p: Any) -> str:
    return "l_inf" if str(p) == "inf" else "l2"


def _model_line(cfg: RunConfig) -> str:
    if cfg.model == "lipcnn":
        return (f"Model: l2 CNN, LipConv2d stages {cfg.channels} ({cfg.kernel_size}x{cfg.kernel_size}, "
                f"{cfg.conv_constraint}, downsample {cfg.downsample}), dense widths {cfg.widths}, "
                f"{cfg.activation}, loss `{cfg.loss}` (temperature {cfg.temperature:g}, margin "
                f"{cfg.margin:g}), {cfg.epochs} epochs.  ")
    if not cfg.is_linf_model:
        return (f"Model: orthogonal dense widths {cfg.widths}, {cfg.activation}, loss `{cfg.loss}` "
                f"(temperature {cfg.temperature:g}, margin {cfg.margin:g}), {cfg.epochs} epochs.  ")
    kind = "l_inf-distance" if cfg.model == "linf-dist" else f"SortNet (q={cfg.sort_q:g})"
    head = f", hybrid head of width {cfg.head_width} ({cfg.head_activation})" if cfg.head_width else ""
    return (f"Model: {kind} widths {cfg.widths}{head}, loss `{cfg.loss}` (training radius {cfg.margin:g}, "
            f"CE weight {cfg.ce_weight[0]:g} -> {cfg.ce_weight[1]:g}, temperature {cfg.temperature:g}), "
            f"p {cfg.p_start:g} -> {cfg.p_end:g} -> inf over the fraction {cfg.p_window} of the steps, "
            f"{cfg.epochs} epochs.  ")


def write_report(run_dir: str | Path, metrics: dict[str, Any], cfg: RunConfig) -> dict[str, Path]:
    """Write ``metrics.json``, ``certified_accuracy.png`` and ``report.md`` into ``run_dir``."""
    run_dir = Path(run_dir)
    public = {k: v for k, v in metrics.items() if k != "radii_sorted"}
    norm = _norm_name(metrics.get("p", 2))
    paths = {"metrics": run_dir / "metrics.json", "plot": run_dir / "certified_accuracy.png",
             "report": run_dir / "report.md"}
    atomic_write_bytes(paths["metrics"], json.dumps(public, indent=2, sort_keys=True).encode())
    _plot(metrics, paths["plot"])
    lines = [
        f"# lipkit run `{cfg.name}`",
        "",
        f"Data: **{metrics['dataset']}** test split ({metrics['n_test']} points, pixels in [0, 1]).  ",
        _model_line(cfg),
        f"Sound {norm} Lipschitz bound of the exported weights: **{metrics['lipschitz_bound']:.9f}**.",
        "",
        f"Clean accuracy: **{100 * metrics['clean_accuracy']:.2f}%**",
        "",
        f"| {norm} radius | certified accuracy | certified points (attacked by PGD) | broken "
        "| PGD robust acc. |",
        "|---:|---:|---:|---:|---:|",
    ]
    for k in sorted(metrics["certified_accuracy"], key=float):
        e = metrics.get("pgd", {}).get(k, {})
        rob = e.get("pgd_robust_accuracy")
        lines.append(f"| {k} | {100 * metrics['certified_accuracy'][k]:.2f}% | "
                     f"{e.get('certified_points', 0)} | "
                     f"{e.get('broken', 0)} | {'' if rob is None else f'{100 * rob:.2f}%'} |")
    lines += [
        "",
        ("Certified radius of a point: (f_y - max_{j != y} f_j) / (sqrt(2) L)" if norm == "l2" else
         "Certified radius of a point: min_{j != y} (f_y - f_j) / L_yj with L_yj = 2 L (1-Lipschitz logits) "
         "or ||v_y - v_j||_1 L_body (hybrid head)")
        + f"; PGD attacks every point certified at radius r inside the {norm} ball of radius r. "
        "A broken certificate would be a bug.",
        "",
        _own_radius_line(metrics.get("pgd_own_radius", {})),
        "",
        "![certified accuracy](certified_accuracy.png)",
        "",
    ]
    if "train_seconds" in metrics:
        lines.append(f"Training time (all epochs, summed over resumes): {metrics['train_seconds']:.1f} s; "
                     "certification + PGD: "
                     f"{metrics['certify_seconds']:.1f} s.")
    priv = metrics.get("privacy")
    if priv:  # a private run: privacy and certified accuracy of the same model
        lines += ["", f"Differential privacy (lipkit.dp, clipless DP-SGD): epsilon {priv['epsilon']:.3f} "
                  f"at delta {priv['delta']:g}, noise multiplier {priv['noise_multiplier']:.4g}, "
                  f"{priv['sampling']} sampling (rate {priv['sample_rate']:.4g}), {priv['neighbouring']} "
                  f"neighbours, inputs projected onto the l2 ball of radius {priv['input_radius']:g}.  The "
                  "training metrics above (loss, train accuracy) are not private."]
    atomic_write_bytes(paths["report"], ("\n".join(lines) + "\n").encode())
    return paths
