"""Clipless DP-SGD (lipkit.dp) against Opacus 1.6 (per-sample clipping, "hooks" and "ghost") on Fashion-MNIST.

Protocol (reduced to fit a shared 2-core machine, see ``docs/dp.md`` and the results' ``protocol``):

* data: Fashion-MNIST, pixels in [0, 1]; 10,000 training images carved off as the validation split used to
  choose the grid point (and, in ``--levers`` runs, everything else); the test set only reports the
  chosen run;
* models: an MLP 784-W-W-10 on both sides (lipkit: orthogonal ``LipLinear`` + GroupSort(2), inputs projected
  onto the l2 ball of radius ``R``; Opacus: ``nn.Linear`` + ReLU, per-sample clipping at ``--clip``);
* same optimiser (Adam), same epochs, the same grid of expected batch size x learning rate on both sides
  (``--batches``, ``--lrs``), Poisson sampling, delta = 1e-5, target epsilon in {1, 3, 8} (RDP accountant
  on both sides);
* step cost: the same network trained without DP ("plain", lipkit's layers), lipkit's DP step (the bound
  computation counts inside it), Opacus hooks and ghost steps (on Opacus' ReLU MLP), interleaved in one
  loop, medians over repeats; peak memory is the maximum RSS growth over a block of steps of each kind;
* certified l2 accuracy of the lipkit model at radii 0.1, 0.25, 0.5 (pixel space, before the projection;
  lipkit.compute_certificates with the bound of the model's weights).

``python bench/dp.py`` (``--quick`` for a smoke run) writes ``bench/results/dp.json``; or, in parallel,
``python bench/dp.py --eps E`` for E = 1, 3, 8 then ``python bench/dp.py --merge``.  ``--levers JSON``
appends validation-only runs to ``bench/results/dp_levers.json`` (the ``levers`` key of the next full run,
merge or ``--costs-only``); ``--levers-table`` prints them for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

import lipkit  # noqa: E402
from lipkit import dp  # noqa: E402

warnings.filterwarnings("ignore")
DELTA = 1e-5
EPSILONS = (1.0, 3.0, 8.0)
RADII = (0.1, 0.25, 0.5)


def data(n_val: int = 10_000):
    split = lipkit.load_dataset("fashion-mnist")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(split.x_train), generator=g)
    val, tr = perm[:n_val], perm[n_val:]
    return (split.x_train[tr], split.y_train[tr]), (split.x_train[val], split.y_train[val]), \
        (split.x_test, split.y_test)


def lip_mlp(width: int, first: str = "orthogonal", rest: str = "orthogonal") -> nn.Sequential:
    """784-W-W-10 with GroupSort(2); ``first`` / ``rest``: the constraint of the first / other layers."""
    return nn.Sequential(lipkit.LipLinear(784, width, constraint=first), lipkit.GroupSort(2),
                         lipkit.LipLinear(width, width, constraint=rest), lipkit.GroupSort(2),
                         lipkit.LipLinear(width, 10, constraint=rest))


def relu_mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def lip_cnn(channels: int = 16, pool: str = "l2", conv_bias: bool = False) -> nn.Sequential:
    """A small l2 1-Lipschitz CNN on 1x28x28: two AOL ``LipConv2d`` 3x3 (``channels``, ``2 channels``) each
    followed by GroupSort(2) and a 1-Lipschitz 2x2 downsampling (``pool``: ``"l2"`` = L2NormPool2d,
    ``"avg"`` = ScaledAvgPool2d), then an orthogonal ``LipLinear`` to the 10 logits.  ``conv_bias``: the
    convolutions' biases (off by default: a conv bias's per-example gradient bound is ``sqrt(P) G`` over
    its ``P`` output positions, 28x the gradient bound ``G`` on the first layer, which inflates the global
    noise of every tensor)."""
    down = lipkit.L2NormPool2d if pool == "l2" else lipkit.ScaledAvgPool2d
    c = channels
    return nn.Sequential(nn.Unflatten(1, (1, 28, 28)),
                         lipkit.LipConv2d(1, c, 3, constraint="aol", bias=conv_bias), lipkit.GroupSort(2),
                         down(2),
                         lipkit.LipConv2d(c, 2 * c, 3, constraint="aol", bias=conv_bias), lipkit.GroupSort(2),
                         down(2),
                         nn.Flatten(), lipkit.LipLinear(2 * c * 49, 10, constraint="orthogonal"))


def relu_cnn(channels: int = 16) -> nn.Sequential:
    """Opacus' counterpart of :func:`lip_cnn`: the same convolutions and linear layer, plain ``nn.Conv2d`` /
    ``nn.Linear`` with ReLU and 2x2 average pooling."""
    c = channels
    return nn.Sequential(nn.Unflatten(1, (1, 28, 28)),
                         nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(2 * c * 49, 10))


def lipkit_net(args) -> nn.Sequential:
    """lipkit's network of a run: ``arch`` ``"mlp"`` (default) or ``"cnn"``."""
    if getattr(args, "arch", "mlp") == "cnn":
        return lip_cnn(getattr(args, "channels", 16), getattr(args, "pool", "l2"),
                       bool(getattr(args, "conv_bias", False)))
    return lip_mlp(args.width, getattr(args, "first", "orthogonal"), getattr(args, "rest", "orthogonal"))


def opacus_net(args) -> nn.Sequential:
    if getattr(args, "arch", "mlp") == "cnn":
        return relu_cnn(getattr(args, "channels", 16))
    return relu_mlp(args.width)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i:i + 2000]) for i in range(0, len(x), 2000)])
    return (out.argmax(1) == y).double().mean().item()


def lipkit_loss(temperature: float, kind: str = "ce", margin: float = 1.0, alpha: float = 10.0):
    """lipkit's per-example loss: ``"ce"`` (tempered cross entropy over its temperature), ``"hinge"``
    (multi-class hinge of margin ``margin``) or ``"hkr"`` (HKR of ``alpha`` and ``margin`` over ``alpha``,
    uniform class priors)."""
    if kind == "hinge":
        return lipkit.MulticlassHingeLoss(margin=margin)
    if kind == "hkr":
        return dp.losses.ScaledLoss(lipkit.HKRLoss(alpha=alpha, margin=margin), 1.0 / alpha)
    if kind != "ce":
        raise ValueError(f"unknown loss {kind!r}; valid: ce, hinge, hkr")
    return dp.losses.ScaledLoss(lipkit.LipschitzCrossEntropyLoss(temperature=temperature), 1.0 / temperature)


def run_loss(args):
    return lipkit_loss(args.temperature, getattr(args, "loss", "ce"), getattr(args, "margin", 1.0),
                       getattr(args, "alpha", 10.0))


def train_lipkit(train, eps: float, lr: float, args, seed: int = 0):
    torch.manual_seed(seed)
    net = lipkit_net(args)
    if getattr(args, "optimizer", "adam") == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=lr)
    model, opt, loader = dp.make_private(net, opt, train, criterion=run_loss(args),
                                         batch_size=args.batch, target_epsilon=eps, target_delta=DELTA,
                                         epochs=args.epochs, input_radius=args.radius, seed=seed,
                                         calibration=getattr(args, "calibration", "global"))
    for _ in range(args.epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            opt.criterion(model(x), y).backward()
            opt.step()
    return model, opt


def opacus_parts(out: tuple, mode: str) -> tuple:
    """``(model, optimizer, criterion, loader)`` from Opacus' ``make_private*``: "ghost" mode returns its
    own criterion (4 items), "hooks" does not (3 items: plain cross-entropy)."""
    if mode == "ghost":
        return out
    model, opt, loader = out
    return model, opt, nn.CrossEntropyLoss(), loader


def train_opacus(train, eps: float, lr: float, args, mode: str = "ghost", seed: int = 0):
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    net = opacus_net(args)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(*train), batch_size=args.batch)
    engine = PrivacyEngine(accountant="rdp")
    out = engine.make_private_with_epsilon(module=net, optimizer=opt, data_loader=loader,
                                           criterion=nn.CrossEntropyLoss(), target_epsilon=eps,
                                           target_delta=DELTA, epochs=args.epochs,
                                           max_grad_norm=getattr(args, "clip", 1.0),
                                           grad_sample_mode=mode, poisson_sampling=True)
    model, opt, crit, loader = opacus_parts(out, mode)
    for _ in range(args.epochs):
        model.train()
        for x, y in loader:
            if len(x) == 0:
                continue
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    return model, engine.get_epsilon(DELTA)


def certified(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    res = [lipkit.compute_certificates(model, x[i:i + 2000], p=2, input_shape=(784,))
           for i in range(0, len(x), 2000)]
    radius = torch.cat([r.radius for r in res])
    ok = torch.cat([r.prediction for r in res]) == y
    return {f"{r:g}": ((radius >= r) & ok).double().mean().item() for r in RADII}


def rss_mb() -> float:
    """Peak resident set size of this process in MB: ``VmHWM`` of ``/proc/self/status`` (reset by exec,
    unlike ``ru_maxrss``, which a child started from a large parent inherits)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def step_functions(train, args) -> dict:
    """One training step of each kind on the first batch of ``train``: ``plain`` (lipkit's network without
    DP, its constraint maps included), ``lipkit`` (clipless DP, the bound computation included),
    ``plain_relu`` (Opacus' ReLU MLP without DP) and ``opacus_hooks`` / ``opacus_ghost``."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    x, y = train[0][:args.batch], train[1][:args.batch]
    torch.manual_seed(0)
    plain = lipkit_net(args)
    plain_model = nn.Sequential(dp.L2BallProjection(args.radius), plain)
    # the same deployed layers and projection after each step, in its cheapest form (the retraction with
    # bfloat16 products where the CPU has them, no certified norm: nothing needs it without DP)
    dp.materialize_constraints(plain, certify_norm=False)
    maps = dp.projection.constraint_maps(plain, certify_norm=False)
    # the optimiser over the materialised weights (built before, it would hold the replaced parameters and
    # update the biases only, as the step costs measured before 2026-12-05 did)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    assert {id(p) for g in plain_opt.param_groups for p in g["params"]} == {id(p) for p in plain.parameters()}
    loss_plain = run_loss(args)

    def plain_step():
        plain_opt.zero_grad()
        loss_plain(plain_model(x), y).backward()
        plain_opt.step()
        dp.project_constraints(maps)

    net = lipkit_net(args)
    model, opt, _ = dp.make_private(net, torch.optim.Adam(net.parameters(), lr=1e-3), train,
                                    criterion=run_loss(args), batch_size=args.batch,
                                    noise_multiplier=1.0, target_delta=DELTA, epochs=1,
                                    input_radius=args.radius)

    def lipkit_step():
        opt.zero_grad()
        opt.criterion(model(x), y).backward()
        opt.step()

    n_params = sum(p.numel() for p in opt.named_params.values())
    lipkit_step.parts = {  # the two DP-only parts of the step, timed alone (the breakdown)
        "bound": opt.sensitivity_fn,
        "noise": lambda: dp.gaussian_noise((n_params,), 1.0, generator=None, secure=False,
                                           dtype=torch.float32, device=torch.device("cpu")),
    }

    relu = opacus_net(args)
    relu_opt = torch.optim.Adam(relu.parameters(), lr=1e-3)
    ce = nn.CrossEntropyLoss()

    def relu_step():
        relu_opt.zero_grad()
        ce(relu(x), y).backward()
        relu_opt.step()

    steps = {"plain": plain_step, "lipkit": lipkit_step, "plain_relu": relu_step}
    for mode in ("hooks", "ghost"):
        engine = PrivacyEngine()
        onet = opacus_net(args)
        out = engine.make_private(module=onet, optimizer=torch.optim.Adam(onet.parameters(), lr=1e-3),
                                  data_loader=DataLoader(TensorDataset(*train), batch_size=args.batch),
                                  criterion=nn.CrossEntropyLoss(), noise_multiplier=1.0, max_grad_norm=1.0,
                                  grad_sample_mode=mode, poisson_sampling=False)
        omodel, oopt, ocrit, _ = opacus_parts(out, mode)

        def ostep(m=omodel, o=oopt, c=ocrit):
            o.zero_grad()
            c(m(x), y).backward()
            o.step()

        steps[f"opacus_{mode}"] = ostep
    return steps


def step_costs(train, args) -> dict:
    """Median seconds per step of each kind, interleaved (A B C D E, repeated); peak memory per kind from a
    fresh process each (``--memory-probe``)."""
    import subprocess

    steps = step_functions(train, args)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for k, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    parts = steps["lipkit"].parts
    part_times: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(args.repeats):
        for k, fn in parts.items():
            t = time.perf_counter()
            fn()
            part_times[k].append(time.perf_counter() - t)
    for k, v in part_times.items():
        med[f"lipkit_{k}_only"] = statistics.median(v)
    peak: dict[str, float] = {}
    for k in steps:
        cmd = [sys.executable, __file__, "--memory-probe", k, "--width", str(args.width), "--batch",
               str(args.batch), "--radius", str(args.radius), "--temperature", str(args.temperature),
               "--first", args.first, "--rest", args.rest, "--loss", args.loss, "--margin", str(args.margin),
               "--alpha", str(args.alpha)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        peak[k] = float(out.stdout.strip().splitlines()[-1])
    by_batch = {args.batch: {"plain": med["plain"], "lipkit": med["lipkit"]}}
    for b in [int(v) for v in (args.batches or "").split(",") if v and int(v) != args.batch]:
        sf = step_functions(train, argparse.Namespace(**{**vars(args), "batch": b}))
        pair = {"plain": sf["plain"], "lipkit": sf["lipkit"]}
        ts: dict[str, list[float]] = {k: [] for k in pair}
        for fn in pair.values():
            fn()
        for _ in range(args.repeats):
            for k, fn in pair.items():
                t = time.perf_counter()
                fn()
                ts[k].append(time.perf_counter() - t)
        by_batch[b] = {k: statistics.median(v) for k, v in ts.items()}
    return {"median_seconds": med, "peak_rss_growth_mb": peak, "batch": args.batch, "repeats": args.repeats,
            "by_batch": by_batch}


def memory_probe(kind: str, args) -> None:
    """Print the growth of the process's peak RSS (MB) over the first 5 steps of ``kind`` (gradients,
    optimiser state, activations, per-sample gradients or bound computations), from a fresh process."""
    g = torch.Generator().manual_seed(0)
    n = 4 * args.batch
    train = (torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g))
    fn = step_functions(train, args)[kind]
    gc.collect()
    before = rss_mb()
    for _ in range(5):
        fn()
    print(max(0.0, rss_mb() - before))


LEVERS = Path(__file__).resolve().parent / "results" / "dp_levers.json"


def levers(spec: str, train, val, args) -> None:
    """Validation-only runs of single configurations (``spec``: a JSON list of dicts overriding ``side``
    (lipkit / opacus), ``eps``, ``lr``, ``batch``, ``epochs``, ``temperature``, ``radius``, ``width``,
    ``optimizer``, ``calibration``, ``clip``); each result is appended to ``bench/results/dp_levers.json``
    (merged into ``dp.json`` under ``levers`` by the next full run).  The test split is never read."""
    import json

    for cfg in json.loads(spec):
        a = argparse.Namespace(**{**vars(args), **cfg})
        t = time.perf_counter()
        if a.side == "lipkit":
            model, _ = train_lipkit(train, a.eps, a.lr, a)
        else:
            model, _ = train_opacus(train, a.eps, a.lr, a)
        rec = {"side": a.side, "eps": a.eps, "lr": a.lr, "batch": a.batch, "epochs": a.epochs,
               "val_accuracy": accuracy(model, *val), "seconds": round(time.perf_counter() - t, 1),
               "arch": a.arch}
        if a.arch == "cnn":
            rec.update(channels=a.channels)
        else:
            rec.update(width=a.width)
        if a.side == "lipkit":
            rec.update(temperature=a.temperature, radius=a.radius, loss=a.loss,
                       optimizer=getattr(a, "optimizer", "adam"),
                       calibration=getattr(a, "calibration", "global"))
            if a.loss != "ce":
                rec.update(margin=a.margin)
            if a.loss == "hkr":
                rec.update(alpha=a.alpha)
            if a.arch == "cnn":
                rec.update(pool=a.pool, conv_bias=bool(getattr(a, "conv_bias", False)))
            else:
                rec.update(first=getattr(a, "first", "orthogonal"), rest=getattr(a, "rest", "orthogonal"))
        else:
            rec.update(clip=getattr(a, "clip", 1.0))
        import fcntl
        import tempfile

        lock_path = Path(tempfile.gettempdir()) / "lipkit-dp-levers.lock"
        with open(lock_path, "w") as lock:  # parallel lever runs append one at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            old = json.loads(LEVERS.read_text()) if LEVERS.exists() else []
            LEVERS.write_text(json.dumps([*old, rec], indent=1) + "\n")
        print(rec, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lrs", type=str, default="0.002,0.004")
    ap.add_argument("--batches", type=str, default="256,1024",
                    help="expected batch sizes of the grid (both sides); step costs at each")
    ap.add_argument("--eps", type=str, default=None, help="one epsilon only (a part, merged by --merge)")
    ap.add_argument("--merge", action="store_true", help="merge the parts and measure the step costs")
    ap.add_argument("--levers-table", action="store_true", help="print the lever runs of dp.json (markdown)")
    ap.add_argument("--radius", type=float, default=8.0)
    ap.add_argument("--temperature", type=float, default=8.0)
    ap.add_argument("--clip", type=float, default=1.0, help="Opacus' per-sample clipping norm")
    ap.add_argument("--first", default="orthogonal", help="constraint of lipkit's first layer")
    ap.add_argument("--rest", default="orthogonal", help="constraint of lipkit's other layers")
    ap.add_argument("--arch", default="mlp", choices=("mlp", "cnn"), help="the network of both sides")
    ap.add_argument("--channels", type=int, default=16, help="channels of the CNN's first convolution")
    ap.add_argument("--pool", default="l2", choices=("l2", "avg"),
                    help="lipkit CNN's 1-Lipschitz downsampling")
    ap.add_argument("--loss", default="ce", choices=("ce", "hinge", "hkr"), help="lipkit's loss")
    ap.add_argument("--margin", type=float, default=1.0, help="margin of the hinge / HKR loss")
    ap.add_argument("--alpha", type=float, default=10.0, help="HKR's hinge weight")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3000 training images, 1 epoch")
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--levers", default=None, help="JSON list of validation-only configurations to run")
    ap.add_argument("--refresh-levers", action="store_true",
                    help="copy the lever runs into the existing results file (nothing re-measured)")
    ap.add_argument("--costs-only", action="store_true",
                    help="re-measure step costs and memory only, into the existing results file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.levers_table:
        print(levers_table())
        return
    if args.memory_probe:
        memory_probe(args.memory_probe, args)
        return
    if args.refresh_levers:
        import json

        from _common import results_dir

        path = results_dir() / "dp.json"
        res = json.loads(path.read_text())
        res["levers"] = read_levers()
        path.write_text(json.dumps(res, indent=2) + "\n")  # the layout of _common.write_result
        print("levers:", len(res["levers"]))
        return
    t0 = time.perf_counter()
    train, val, test = data()
    if args.levers:
        levers(args.levers, train, val, args)
        return
    if args.merge:
        args.train = train
        merge(args, t0)
        return
    if args.costs_only:
        import json

        from _common import results_dir

        old = json.loads((results_dir() / "dp.json").read_text())
        costs = step_costs(train, args)
        print("step costs", costs, flush=True)
        keep = {k: v for k, v in old.items() if k.startswith("eps") or k == "protocol"}
        keep["levers"] = read_levers()
        keep["accuracy_run"] = {"command": old.get("accuracy_run", {}).get("command", old["command"]),
                                "date": old.get("accuracy_run", {}).get("date", old["date"]),
                                "seconds": old.get("accuracy_run", {}).get("seconds", old["seconds"])}
        path = write_result("dp", {**keep, **cost_figures(costs)}, time.perf_counter() - t0)
        plot(path)
        return
    if args.quick:
        train = (train[0][:3000], train[1][:3000])
        args.epochs, args.repeats = 1, 3
    lrs = [float(v) for v in args.lrs.split(",")]
    batches = [int(v) for v in args.batches.split(",")] if args.batches else [args.batch]
    eps_list = [float(v) for v in args.eps.split(",")] if args.eps else list(EPSILONS)
    results: dict = {}
    for eps in eps_list:
        best_l, best_o = None, None
        runs = []
        for batch in batches:
            for lr in lrs:
                a = argparse.Namespace(**{**vars(args), "batch": batch})
                model, opt = train_lipkit(train, eps, lr, a)
                acc_val = accuracy(model, *val)
                runs.append({"side": "lipkit", "batch": batch, "lr": lr, "val_accuracy": acc_val})
                if best_l is None or acc_val > best_l[0]:
                    best_l = (acc_val, (batch, lr), model, opt.get_epsilon(DELTA))
                omodel, o_eps = train_opacus(train, eps, lr, a)
                acc_val = accuracy(omodel, *val)
                runs.append({"side": "opacus-ghost", "batch": batch, "lr": lr, "val_accuracy": acc_val})
                if best_o is None or acc_val > best_o[0]:
                    best_o = (acc_val, (batch, lr), omodel, o_eps)
                print(eps, runs[-2:], flush=True)
        lacc, oacc = accuracy(best_l[2], *test), accuracy(best_o[2], *test)
        results[f"eps{eps:g}"] = {
            "lipkit_accuracy": lacc, "opacus_accuracy": oacc, "accuracy_gap_vs_opacus": lacc - oacc,
            "lipkit_certified_l2": certified(best_l[2], *test), "epsilon_spent": best_l[3],
            "opacus_epsilon_spent": best_o[3], "lipkit_batch": best_l[1][0], "lipkit_lr": best_l[1][1],
            "opacus_batch": best_o[1][0], "opacus_lr": best_o[1][1],
            "lipkit_val_accuracy": best_l[0], "opacus_val_accuracy": best_o[0], "validation_runs": runs,
        }
        print(eps, {k: v for k, v in results[f"eps{eps:g}"].items() if k != "validation_runs"}, flush=True)
    if args.eps:  # one part of a parallel run: merged by --merge
        import json

        from _common import results_dir

        part = results_dir() / f"dp_part_eps{args.eps}.json"
        part.write_text(json.dumps({"results": results, "seconds": time.perf_counter() - t0,
                                    "protocol": protocol(args, lrs, batches)}, indent=1) + "\n")
        print("wrote", part)
        return
    costs = step_costs(train, args)
    print("step costs", costs, flush=True)
    figures = {**results, **cost_figures(costs), "protocol": protocol(args, lrs, batches),
               "levers": read_levers()}
    path = write_result("dp", figures, time.perf_counter() - t0)
    plot(path)
    print("wrote", path)


def read_levers() -> list:
    """The validation-only lever runs (``--levers``), if any were recorded."""
    import json

    return json.loads(LEVERS.read_text()) if LEVERS.exists() else []


def levers_table() -> str:
    """The validation-only lever runs recorded in ``dp.json`` as a markdown table (docs/benchmarks.md)."""
    import json

    from _common import results_dir

    runs = json.loads((results_dir() / "dp.json").read_text()).get("levers", [])
    base = {"arch": "mlp", "loss": "ce", "temperature": 8.0, "radius": 8.0, "width": 256, "channels": 16,
            "pool": "l2", "conv_bias": False, "margin": None, "alpha": None, "optimizer": "adam",
            "calibration": "global", "first": "orthogonal", "rest": "orthogonal", "clip": 1.0}
    lines = ["| side | epsilon | batch | lr | epochs | changed from the base settings | validation acc. |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["side"], r["eps"], -r["val_accuracy"])):
        changed = ", ".join(f"{k} {r[k]:g}" if isinstance(r[k], float) else f"{k} {r[k]}"
                            for k in base if k in r and r[k] != base[k]) or "-"
        lines.append(f"| {r['side']} | {r['eps']:g} | {r['batch']} | {r['lr']:g} | {r['epochs']} | {changed} "
                     f"| {100 * r['val_accuracy']:.2f}% |")
    return "\n".join(lines)


def merge(args, t0: float) -> None:
    """Combine the per-epsilon parts (``--eps E``) with fresh step costs into ``dp.json``."""
    import json

    from _common import results_dir

    results, seconds, proto = {}, 0.0, None
    for eps in EPSILONS:
        part = json.loads((results_dir() / f"dp_part_eps{eps:g}.json").read_text())
        results.update(part["results"])
        seconds = max(seconds, part["seconds"])
        proto = part["protocol"]
    costs = step_costs(args.train, args)
    print("step costs", costs, flush=True)
    figures = {**results, **cost_figures(costs), "protocol": proto, "levers": read_levers(),
               "accuracy_run": {"command": "python bench/dp.py --eps E (E = 1, 3, 8, in parallel)",
                                "seconds": round(seconds, 1)}}
    path = write_result("dp", figures, time.perf_counter() - t0)
    plot(path)
    print("wrote", path)


def cost_figures(costs: dict) -> dict:
    med = costs["median_seconds"]
    return {
        "step_ratio_vs_plain": med["lipkit"] / med["plain"],
        "opacus_hooks_step_ratio": med["opacus_hooks"] / med["plain_relu"],
        "opacus_ghost_step_ratio": med["opacus_ghost"] / med["plain_relu"],
        "opacus_hooks_step_ratio_vs_lipkit_plain": med["opacus_hooks"] / med["plain"],
        "opacus_ghost_step_ratio_vs_lipkit_plain": med["opacus_ghost"] / med["plain"],
        "step_ratio_note": "lipkit vs the same lipkit network without DP (its constraint maps included); "
                           "opacus vs the same ReLU MLP without DP",
        "step_median_seconds": med,
        "peak_memory_mb": costs["peak_rss_growth_mb"],
        "peak_memory_note": "growth of the peak RSS over the first 5 steps, a fresh process per kind "
                            "(all five step kinds are built in it; only one runs)",
        "step_repeats": costs["repeats"],
        "step_batch": costs["batch"],
        "step_levers": {
            "certified projection step (dp/retraction.py)":
                "the orthogonal LipLinear's projection after each step is one float32 Newton-Schulz step "
                "whose rounding analysis certifies the norm of the weight it writes (about 1 + 1e-3); "
                "the next sensitivity reads it while the weight is bit-for-bit unchanged (torch.equal), "
                "instead of a fresh Gram bound of every layer (gram_bound_fp32, about 2.5 ms of the step "
                "before); the plain step keeps the cheaper bfloat16 retraction, which certifies nothing",
            "registry class-patch checks once per bound computation (memoized_class_checks)":
                "kept (they rebuilt the member table of nn.Module about 45 times per step)",
            "fused finiteness check and noise add (torch._foreach_norm / _foreach_add_)": "kept",
            "conv Gram/Schur bound with Collatz-Wielandt weights (conv_gram_bound)":
                "kept for LipConv2d (the registered rule's explicit bound took about 1.2 s per step on the "
                "lever CNN); not in the MLP's step",
            "float32 Gram by blocks with a rigorous rounding allowance (gram_bound_fp32)":
                "kept as the fallback (first step of each epoch in the trainer, after restarts, other "
                "constraints)",
            "bfloat16 products in the certified step": "not built: a rigorous bound would rest on how the "
                                                       "bfloat16 kernels accumulate, which torch does not "
                                                       "specify",
            "cache of bounds keyed on (data_ptr, _version)": "not built: edits through p.data do not bump "
                                                             "_version; the certificate compares values",
            "remaining DP-only time": "the noise draw (lipkit_noise_only, one float32 normal per parameter), "
                                      "the rest of the bound (lipkit_bound_only: structure checks, forward "
                                      "passes on zeros, the torch.equal checks) and the certified step's "
                                      "float32 products (vs bfloat16 in the plain step)",
        },
        "step_ratio_vs_plain_by_batch": {str(b): v["lipkit"] / v["plain"]
                                         for b, v in costs["by_batch"].items()},
        "step_median_seconds_by_batch": {str(b): v for b, v in costs["by_batch"].items()},
    }


def protocol(args, lrs, batches) -> dict:
    return {
            "reduced": "MLP only in the grid (the small CNNs of both sides were tried as validation-only "
                       "levers at epsilon 3 and lost to the MLPs on both sides), grid of expected batch "
                       "size x learning rate (the same on both sides), no epoch grid, Opacus ghost mode "
                       "only for accuracy (hooks computes the same clipped gradients), one seed; lipkit's "
                       "loss, margin / temperature and input radius and Opacus' clipping norm chosen from "
                       "the validation-only lever runs (levers)",
            "epochs": args.epochs, "width": args.width, "batches": batches, "batch": args.batch,
            "lrs": lrs, "clip": args.clip, "first_constraint": args.first, "other_constraints": args.rest,
            "input_radius": args.radius, "temperature": args.temperature, "delta": DELTA,
            "arch": args.arch, "lipkit_loss": args.loss,
            "margin": args.margin if args.loss != "ce" else None,
            "validation": "10000 training images, chosen by validation accuracy", "quick": args.quick,
            "shared_machine": "2 cores shared with other jobs; 1 torch thread; interleaved medians",
    }


def plot(path: Path) -> None:
    """``docs/dp_accuracy.png``: test accuracy against epsilon, both sides; lipkit's certified accuracy."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(Path(path).read_text())
    eps = [e for e in EPSILONS if f"eps{e:g}" in res]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(eps, [100 * res[f"eps{e:g}"]["lipkit_accuracy"] for e in eps], "o-", label="lipkit (clipless)")
    ax.plot(eps, [100 * res[f"eps{e:g}"]["opacus_accuracy"] for e in eps], "s-",
            label="Opacus (ghost clipping)")
    for r in ("0.1", "0.25"):
        ax.plot(eps, [100 * res[f"eps{e:g}"]["lipkit_certified_l2"][r] for e in eps], ":", marker=".",
                label=f"lipkit certified, l2 radius {r}")
    ax.set_xscale("log")
    ax.set_xticks(eps, [f"{e:g}" for e in eps])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("epsilon (delta = 1e-5)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST, MLP, reduced protocol", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(__file__).resolve().parents[1] / "docs" / "dp_accuracy.png"
    fig.savefig(out, dpi=120)
    print("wrote", out)


if __name__ == "__main__":
    main()
