"""Monotonic networks on real tabular data: lipkit vs monotonicnetworks 1.5.1, an MLP and HGB-monotonic.

Protocol (the same for every model, paired over splits):

* data sets COMPAS, Heart (binary, accuracy) and Auto MPG (regression, MSE in mpg^2), each with ``--seeds``
  random 60/20/20 splits (``lipkit.load_dataset(name, seed=s)``; encoding fitted on the training rows);
* every model tries the same number of configurations (``len(GRID[model])`` is the same for all); the
  configuration and the epoch (boosting iteration for HGB) are chosen on the validation split (accuracy,
  ties broken by the validation loss; MSE for Auto MPG); the test split is read once, for the chosen model;
* networks: Adam, mini-batches of 256, the same epochs per data set, logits with binary cross-entropy or
  the standardised target with squared error;
* monotonicnetworks: ``LipschitzLinear(kind="one-inf")``, ``GroupSort(2)``, ``LipschitzLinear(kind="inf")``
  layers with per-layer constant ``lam ** (1 / n_layers)`` and ``MonotonicWrapper(lipschitz_const=lam)``,
  the product of the per-layer constants, as its README says;
* lipkit: :class:`lipkit.monotonic.MonotonicMLP` (lam derived from the weights), checked afterwards with
  :func:`lipkit.check_monotonic` on the test rows (extreme values included).

Writes ``bench/results/monotonic.json`` and ``docs/monotonic_pd.png`` (partial dependence of lipkit's model
on each monotone feature, seed 0).  ``--explore`` compares activations and first-layer constraints of
lipkit's network on a few seeds (``bench/results/monotonic_explore.json``).

    OMP_NUM_THREADS=1 python bench/monotonic.py [--seeds 10] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

import lipkit  # noqa: E402
from lipkit.monotonic import MonotonicMLP, check_monotonic  # noqa: E402

DATASETS = ("compas", "heart", "autompg")
EPOCHS = {"compas": 60, "heart": 300, "autompg": 400}
EVAL_EVERY = {"compas": 2, "heart": 5, "autompg": 5}
BATCH = 256

# every model tries len(GRID[model]) = 4 configurations
GRID: dict[str, list[dict[str, Any]]] = {
    "lipkit": [{"width": 64, "lip": 1.0}, {"width": 64, "lip": 3.0},
               {"width": 128, "lip": 1.0}, {"width": 128, "lip": 3.0}],
    "monotonicnetworks": [{"width": 64, "lam": 1.0}, {"width": 64, "lam": 3.0},
                          {"width": 128, "lam": 1.0}, {"width": 128, "lam": 3.0}],
    "mlp": [{"width": 64, "wd": 0.0}, {"width": 64, "wd": 1e-3},
            {"width": 128, "wd": 0.0}, {"width": 128, "wd": 1e-3}],
    "hgb": [{"learning_rate": 0.05, "max_leaf_nodes": 15}, {"learning_rate": 0.05, "max_leaf_nodes": 31},
            {"learning_rate": 0.1, "max_leaf_nodes": 15}, {"learning_rate": 0.1, "max_leaf_nodes": 31}],
}
LR = 5e-3
DEPTH = 2  # hidden layers


# --------------------------------------------------------------------------- models

def make_lipkit(d: int, mono: list[int], cfg: dict, activation: str = "groupsort",
                first_layer: str = "one-inf") -> nn.Module:
    return MonotonicMLP(d, cfg["width"], DEPTH, monotonic=mono, lip=cfg["lip"], activation=activation,
                        first_layer=first_layer)


def make_monotonicnetworks(d: int, mono: list[int], cfg: dict) -> nn.Module:
    import monotonicnetworks as lmn

    n_layers = DEPTH + 1
    per_layer = cfg["lam"] ** (1.0 / n_layers)
    w = cfg["width"]
    layers: list[nn.Module] = [lmn.LipschitzLinear(d, w, kind="one-inf", lipschitz_const=per_layer)]
    for i in range(DEPTH):
        out = 1 if i == DEPTH - 1 else w
        layers += [lmn.GroupSort(2), lmn.LipschitzLinear(w, out, kind="inf", lipschitz_const=per_layer)]
    return lmn.MonotonicWrapper(nn.Sequential(*layers), lipschitz_const=per_layer ** n_layers,
                                monotonic_constraints=mono)


def make_mlp(d: int, mono: list[int], cfg: dict) -> nn.Module:
    w = cfg["width"]
    layers: list[nn.Module] = [nn.Linear(d, w), nn.ReLU()]
    for _ in range(DEPTH - 1):
        layers += [nn.Linear(w, w), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(w, 1))


# --------------------------------------------------------------------------- training

def _loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task == "binary":
        return nn.functional.binary_cross_entropy_with_logits(out, y)
    return ((out - y) ** 2).mean()


def _score(task: str, out: torch.Tensor, y: torch.Tensor, y_mean: float, y_std: float) -> tuple[float, float]:
    """(metric to maximise, loss) on a split: accuracy and BCE, or -MSE (original units) and MSE."""
    with torch.no_grad():
        if task == "binary":
            acc = float(((out > 0).float() == y).float().mean())
            return acc, float(_loss(task, out, y))
        mse = float((((out * y_std + y_mean) - (y * y_std + y_mean)) ** 2).mean())
        return -mse, mse


def train_net(model: nn.Module, split: Any, task: str, epochs: int, every: int, seed: int,
              wd: float = 0.0) -> tuple[nn.Module, tuple[float, float], int]:
    """Adam on mini-batches; returns the state with the best validation score, that score and its epoch."""
    g = torch.Generator().manual_seed(seed)
    x, y = split.x_train, split.y_train
    y_mean, y_std = (float(y.mean()), float(y.std())) if task == "regression" else (0.0, 1.0)
    yt = (y - y_mean) / y_std
    yv = (split.y_val - y_mean) / y_std
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=wd)
    best: tuple[tuple[float, float], int, dict] | None = None
    n = len(x)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            _loss(task, model(x[idx])[:, 0], yt[idx]).backward()
            opt.step()
        if epoch % every == 0 or epoch == epochs:
            model.eval()
            with torch.no_grad():
                score = _score(task, model(split.x_val)[:, 0], yv, y_mean, y_std)
            if best is None or (score[0], -score[1]) > (best[0][0], -best[0][1]):
                best = (score, epoch, copy.deepcopy(model.state_dict()))
    assert best is not None
    model.load_state_dict(best[2])
    model.eval()
    model.y_mean, model.y_std = y_mean, y_std  # type: ignore[attr-defined]
    return model, best[0], best[1]


def test_metric(model: nn.Module, split: Any, task: str) -> float:
    with torch.no_grad():
        out = model(split.x_test)[:, 0]
    if task == "binary":
        return float(((out > 0).float() == split.y_test).float().mean())
    pred = out * model.y_std + model.y_mean  # type: ignore[attr-defined]
    return float(((pred - split.y_test) ** 2).mean())


def run_nets(kind: str, split: Any, task: str, name: str, seed: int, **extra: Any) -> dict[str, Any]:
    d, mono = split.num_features, split.monotonic_vector()
    best = None
    for ci, cfg in enumerate(GRID[kind]):
        torch.manual_seed(1000 * seed + ci)
        if kind == "lipkit":
            model = make_lipkit(d, mono, cfg, **extra)
        elif kind == "monotonicnetworks":
            model = make_monotonicnetworks(d, mono, cfg)
        else:
            model = make_mlp(d, mono, cfg)
        model, score, epoch = train_net(model, split, task, EPOCHS[name], EVAL_EVERY[name], seed,
                                        wd=cfg.get("wd", 0.0))
        if best is None or (score[0], -score[1]) > (best[1][0], -best[1][1]):
            best = (model, score, epoch, cfg)
    assert best is not None
    model, score, epoch, cfg = best
    return {"model": model, "test": test_metric(model, split, task), "config": cfg, "epoch": epoch,
            "val": score[0] if task == "binary" else score[1]}


def run_hgb(split: Any, task: str, seed: int) -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    x, xv, xt = (t.numpy().astype(np.float64) for t in (split.x_train, split.x_val, split.x_test))
    y, yv, yt = (t.numpy().astype(np.float64) for t in (split.y_train, split.y_val, split.y_test))
    mono = split.monotonic_vector()
    best = None
    for cfg in GRID["hgb"]:
        kw = dict(monotonic_cst=mono, max_iter=300, early_stopping=False, random_state=seed, **cfg)
        if task == "binary":
            m = HistGradientBoostingClassifier(**kw).fit(x, y.astype(int))
            for it, p in enumerate(m.staged_predict_proba(xv)):
                acc = float(((p[:, 1] > 0.5) == yv).mean())
                loss = float(-np.mean(yv * np.log(np.clip(p[:, 1], 1e-12, 1))
                                      + (1 - yv) * np.log(np.clip(p[:, 0], 1e-12, 1))))
                if best is None or (acc, -loss) > (best[0], -best[1]):
                    best = (acc, loss, cfg, it + 1)
        else:
            m = HistGradientBoostingRegressor(**kw).fit(x, y)
            for it, p in enumerate(m.staged_predict(xv)):
                mse = float(((p - yv) ** 2).mean())
                if best is None or (-mse, -mse) > (best[0], -best[1]):
                    best = (-mse, mse, cfg, it + 1)
    assert best is not None
    _, _, cfg, iters = best
    kw = dict(monotonic_cst=mono, max_iter=iters, early_stopping=False, random_state=seed, **cfg)
    if task == "binary":
        m = HistGradientBoostingClassifier(**kw).fit(x, y.astype(int))
        metric = float((m.predict(xt) == yt).mean())
    else:
        m = HistGradientBoostingRegressor(**kw).fit(x, y)
        metric = float(((m.predict(xt) - yt) ** 2).mean())
    return {"test": metric, "config": {**cfg, "max_iter": iters}}


# --------------------------------------------------------------------------- summary

def _mean_std(v: list[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _paired(lip: list[float], peer: list[float], higher_better: bool) -> tuple[float, float]:
    d = np.asarray(lip) - np.asarray(peer)
    d = d if higher_better else -d
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()), se


def partial_dependence(model: nn.Module, split: Any, feature: str, n: int = 41) -> tuple[np.ndarray, ...]:
    """Average model output over the test rows with ``feature`` set to each of ``n`` values spanning its
    training range (raw units); for a binary model the average probability."""
    j = split.feature_names.index(feature)
    lo, hi = float(split.x_train[:, j].min()), float(split.x_train[:, j].max())
    grid = torch.linspace(lo, hi, n)
    vals = []
    with torch.no_grad():
        for v in grid:
            x = split.x_test.clone()
            x[:, j] = v
            out = model(x)[:, 0]
            out = torch.sigmoid(out) if split.task == "binary" else out * model.y_std + model.y_mean
            vals.append(float(out.mean()))
    raw = grid.double().numpy() * split.raw_std[feature] + split.raw_mean[feature]
    return raw, np.asarray(vals)


def plot_pd(curves: dict[str, list[tuple[str, np.ndarray, np.ndarray]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ylabels = {"compas": "mean P(two-year recidivism)", "heart": "mean P(disease)", "autompg": "mean MPG"}
    for ax, (name, cs) in zip(axes, curves.items(), strict=True):
        for feat, raw, vals in cs:
            lo, hi = raw.min(), raw.max()
            ax.plot((raw - lo) / (hi - lo if hi > lo else 1), vals, label=f"{feat} [{lo:.0f}, {hi:.0f}]")
        ax.set_title(f"{name}: lipkit MonotonicMLP (seed 0)")
        ax.set_xlabel("feature: training range [min, max] mapped to [0, 1]")
        ax.set_ylabel(ylabels[name])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--quick", action="store_true", help="2 seeds, few epochs (a smoke run; no results file)")
    ap.add_argument("--figure", action="store_true",
                    help="retrain lipkit seed-0 models (deterministic), redraw docs/monotonic_pd.png only")
    ap.add_argument("--markdown", action="store_true",
                    help="print the docs table (with source markers) from bench/results/monotonic.json")
    ap.add_argument("--explore", action="store_true",
                    help="compare lipkit's activations and first-layer constraints (monotonic_explore.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    names = [n for n in args.datasets.split(",") if n]
    if args.quick:
        args.seeds = 2
        for k in EPOCHS:
            EPOCHS[k] = max(EPOCHS[k] // 10, 4)
    seeds = list(range(args.seeds))
    if args.markdown:
        print(markdown())
        return
    if args.figure:
        curves = {}
        for name in DATASETS:
            split = lipkit.load_dataset(name, seed=0)
            task = "binary" if name != "autompg" else "regression"
            r = run_nets("lipkit", split, task, name, 0)
            curves[name] = [(f, *partial_dependence(r["model"], split, f)) for f in split.monotonic]
        plot_pd(curves, Path(__file__).resolve().parents[1] / "docs" / "monotonic_pd.png")
        return
    if args.explore:
        explore(names, seeds, start)
        return
    out: dict[str, Any] = {"protocol": {"split": "random 60/20/20 per seed, paired across models",
                                        "selection": "configuration and epoch on validation",
                                        "configurations_per_model": {k: len(v) for k, v in GRID.items()},
                                        "grids": GRID, "epochs": EPOCHS, "batch": BATCH, "lr": LR,
                                        "depth": DEPTH}}
    curves: dict[str, list] = {}
    for name in names:
        task = "binary" if name != "autompg" else "regression"
        key = "accuracy" if task == "binary" else "mse"
        res: dict[str, list[float]] = {"lipkit": [], "monotonicnetworks": [], "mlp": [], "hgb": []}
        chosen: dict[str, list] = {k: [] for k in res}
        worst = 0.0
        worst_raw = 0.0
        viol = 0
        for seed in seeds:
            split = lipkit.load_dataset(name, seed=seed)
            for kind in ("lipkit", "monotonicnetworks", "mlp"):
                r = run_nets(kind, split, task, name, seed)
                res[kind].append(r["test"])
                chosen[kind].append({"config": r["config"], "epoch": r["epoch"]})
                if kind == "lipkit":
                    chk = check_monotonic(r["model"], split.x_test)
                    viol += chk.violations
                    worst = max(worst, chk.worst_beyond_roundoff)
                    worst_raw = max(worst_raw, chk.worst)
                    if seed == 0:
                        curves[name] = [(f, *partial_dependence(r["model"], split, f))
                                        for f in split.monotonic]
            h = run_hgb(split, task, seed)
            res["hgb"].append(h["test"])
            chosen["hgb"].append({"config": h["config"]})
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in res.items()),
                  f"({time.time() - start:.0f}s)", flush=True)
        entry: dict[str, Any] = {"seeds": seeds, "n_test": len(split.y_test), "task": task,
                                 "monotonic_features": split.monotonic}
        higher = task == "binary"
        for kind, vals in res.items():
            prefix = "" if kind == "lipkit" else f"{kind}_"
            m, s = _mean_std(vals)
            entry[f"{prefix}{key}"] = m
            entry[f"{prefix}{key}_std"] = s
            entry[f"{prefix}{key}_per_seed"] = vals
            if kind != "lipkit":
                d, se = _paired(res["lipkit"], vals, higher)
                entry[f"diff_vs_{kind}"] = d
                entry[f"diff_vs_{kind}_se"] = se
        entry["diff_sign"] = "lipkit minus peer (accuracy)" if higher else "peer minus lipkit (MSE)"
        entry["violations"] = worst
        entry["violations_count"] = viol
        entry["worst_raw_float32_move"] = worst_raw
        entry["chosen"] = chosen
        out[name] = entry
    if args.quick:
        print({k: {kk: vv for kk, vv in v.items() if not isinstance(vv, (list, dict))}
               for k, v in out.items() if k in names})
        return
    if set(names) == set(DATASETS):
        plot_pd(curves, Path(__file__).resolve().parents[1] / "docs" / "monotonic_pd.png")
    path = write_result("monotonic", out, time.time() - start)
    print("wrote", path)


def markdown() -> str:
    """The docs/benchmarks.md table: mean +- std on test, and lipkit's paired difference +- SE."""
    import json

    from _common import results_dir

    r = json.loads((results_dir() / "monotonic.json").read_text())
    f = "monotonic.json"
    rows = ["| model | COMPAS accuracy | Heart accuracy | Auto MPG MSE |", "|---|---|---|---|"]
    for kind, label in (("", "lipkit MonotonicMLP"), ("monotonicnetworks_", "monotonicnetworks 1.5.1"),
                        ("hgb_", "HGB, monotonic_cst"), ("mlp_", "MLP (unconstrained)")):
        cells = []
        for name in DATASETS:
            key = "accuracy" if name != "autompg" else "mse"
            if key == "accuracy":
                cell = (f"{100 * r[name][kind + key]:.1f}%<!-- {f}:{name}.{kind}{key}% --> +- "
                        f"{100 * r[name][kind + key + '_std']:.1f}<!-- {f}:{name}.{kind}{key}_std% -->")
            else:
                cell = (f"{r[name][kind + key]:.2f}<!-- {f}:{name}.{kind}{key} --> +- "
                        f"{r[name][kind + key + '_std']:.2f}<!-- {f}:{name}.{kind}{key}_std -->")
            if kind:
                peer = kind[:-1]
                d, se = r[name][f"diff_vs_{peer}"], r[name][f"diff_vs_{peer}_se"]
                if key == "accuracy":
                    cell += (f" (lipkit {100 * d:+.1f}<!-- {f}:{name}.diff_vs_{peer}% --> +- "
                             f"{100 * se:.1f}<!-- {f}:{name}.diff_vs_{peer}_se% -->)")
                else:
                    cell += (f" (lipkit {-d:+.2f}<!-- = 0 - {f}:{name}.diff_vs_{peer} --> +- "
                             f"{se:.2f}<!-- {f}:{name}.diff_vs_{peer}_se -->)")
            cells.append(cell)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def explore(names: list[str], seeds: list[int], start: float) -> None:
    """lipkit's levers: activation x first-layer constraint, same grid and protocol, validation and test."""
    variants = [("groupsort", "one-inf"), ("groupsort", "two-inf"), ("groupsort", "inf"),
                ("relu", "one-inf"), ("spline", "one-inf")]
    out: dict[str, Any] = {}
    for name in names:
        task = "binary" if name != "autompg" else "regression"
        out[name] = {}
        for act, first in variants:
            tests, vals = [], []
            for seed in seeds:
                split = lipkit.load_dataset(name, seed=seed)
                r = run_nets("lipkit", split, task, name, seed, activation=act, first_layer=first)
                tests.append(r["test"])
                vals.append(r["val"])
            out[name][f"{act}/{first}"] = {"val_mean": float(np.mean(vals)),
                                           "test_mean": float(np.mean(tests)), "test_per_seed": tests}
            print(name, act, first, f"val {np.mean(vals):.4f} test {np.mean(tests):.4f}",
                  f"({time.time() - start:.0f}s)", flush=True)
    out["seeds"] = seeds
    out["note"] = "the default is chosen on val_mean; test_mean is shown for the record"
    write_result("monotonic_explore", out, time.time() - start)


if __name__ == "__main__":
    main()
