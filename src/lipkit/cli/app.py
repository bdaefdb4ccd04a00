"""``lipkit`` command line: ``demo``, ``train``, ``certify``, ``report``, ``estimate``.

Every user-facing failure (bad config, missing run folder, bad radius, corrupt checkpoint,
missing data) ends with one line ``error: ...`` on stderr and a non-zero exit code, never a
traceback.  Ctrl-C during training exits with code 130 and ``kill`` (SIGTERM) with 143, each with one
line; checkpoints are written atomically, so re-running the same command resumes from the last one.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

try:  # typer >= 0.2x vendors click as typer._click
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover - older typer depends on click
    from click import exceptions as _cx

from lipkit.training.config import DEMO_CONFIG, ConfigError, RunConfig

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lipkit: neural networks whose Lipschitz constant is known and bounded.")

class CliError(Exception):
    """A user error reported as one line."""


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


def _parse_domain(text: str) -> tuple[float, float]:
    parts = text.replace(",", " ").split()
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise CliError(f"--input-domain: {text!r} is not two numbers LO,HI (e.g. 0,1)") from None
    if not (lo < hi and math.isfinite(lo) and math.isfinite(hi)):
        raise CliError(f"--input-domain: need finite LO < HI, got {text!r}")
    return lo, hi


def _parse_radii(text: str) -> list[float]:
    out = []
    for tok in text.replace(",", " ").split():
        try:
            r = float(tok)
        except ValueError:
            raise CliError(f"--eps: {tok!r} is not a number (give radii like 0.1,0.5)") from None
        if not (r > 0 and math.isfinite(r)):
            raise CliError(f"--eps: radius {tok!r} must be a positive finite number")
        out.append(r)
    if not out:
        raise CliError("--eps: give at least one radius, e.g. --eps 0.1,0.5")
    return out


def _run_pipeline(cfg: RunConfig, out: Path, progress: bool) -> dict[str, Any]:
    """Train (resuming if possible), export, certify, attack and write the run folder."""
    if cfg.model == "monotonic-mlp":  # tabular: lipkit.training.monotonic
        from lipkit.training.monotonic import train_tabular

        run_dir, metrics = train_tabular(cfg, out, progress)
        _tabular_summary(run_dir, metrics)
        return metrics
    from lipkit.exporting import export
    from lipkit.training.data import split_for_config
    from lipkit.training.report import certify_run, write_report
    from lipkit.training.runs import save_run
    from lipkit.training.trainer import fit

    run_dir = out / cfg.name
    model, hist = fit(cfg, run_dir, progress=progress)
    split = split_for_config(cfg)
    plain = export(model, split.x_test[:256], p=cfg.p, input_shape=tuple(split.x_test.shape[1:]))
    save_run(run_dir, cfg, plain)
    metrics = certify_run(plain, split, cfg.radii, pgd_steps=cfg.pgd_steps, seed=cfg.seed, p=cfg.p)
    metrics["train_seconds"] = hist["train_seconds"]
    metrics["resumed_from_epoch"] = hist["resumed_from"]
    metrics["history"] = hist["history"]
    if cfg.private:  # privacy and certified accuracy of the same model, side by side
        from lipkit.training.dp import privacy_record

        metrics["privacy"] = privacy_record(hist["history"])
    write_report(run_dir, metrics, cfg)
    _summary(run_dir, metrics)
    return metrics


def _run_privacy(run_dir: Path) -> dict[str, Any] | None:
    """The privacy record of a private run folder (from its metrics.json history)."""
    from lipkit.training.dp import privacy_record

    path = Path(run_dir) / "metrics.json"
    try:
        return privacy_record(json.loads(path.read_text()).get("history", []))
    except (OSError, json.JSONDecodeError):
        raise CliError(f"{path} is missing or unreadable: the privacy record of a private run lives there; "
                       "re-run lipkit train") from None


def _summary(run_dir: Path, metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    norm = "l_inf" if str(metrics.get("p", 2)) == "inf" else "l2"
    table = Table(title=f"{run_dir}: clean accuracy {100 * metrics['clean_accuracy']:.2f}%, "
                        f"{norm} bound {metrics['lipschitz_bound']:.6f}")
    table.add_column(f"{norm} radius", justify="right")
    table.add_column("certified acc.", justify="right")
    table.add_column("PGD: certified points broken", justify="right")
    for k in sorted(metrics["certified_accuracy"], key=float):
        e = metrics.get("pgd", {}).get(k, {})
        table.add_row(k, f"{100 * metrics['certified_accuracy'][k]:.2f}%",
                      f"{e.get('broken', 0)} / {e.get('certified_points', 0)}")
    Console(stderr=False).print(table)
    priv = metrics.get("privacy")
    if priv:
        Console(stderr=False).print(
            f"differential privacy: epsilon {priv['epsilon']:.3f} at delta {priv['delta']:g} "
            f"(noise multiplier {priv['noise_multiplier']:.4g}, {priv['sampling']} sampling, "
            f"{priv['neighbouring']} neighbours, inputs in the l2 ball of radius {priv['input_radius']:g})")


def _tabular_summary(run_dir: Path, metrics: dict[str, Any]) -> None:
    """One paragraph for a monotone tabular run (lipkit.training.monotonic)."""
    checks = metrics.get("monotonic_check", {})
    viol = sum(c["violations"] for c in checks.values())
    head = (f"test accuracy {100 * metrics['clean_accuracy']:.2f}%" if metrics["task"] == "binary" else
            f"test MSE {metrics['mse']:.4g}")
    typer.echo(f"{run_dir}: {head}, l_inf bound {metrics['lipschitz_bound']:.6g} (lam {metrics['lam']:.6g}); "
               f"check_monotonic on {len(checks)} features: {viol} violations; certificates broken by PGD: "
               f"{metrics['certificates_broken']}; report: {run_dir / 'report.md'}")
    if metrics["task"] == "binary":
        typer.echo("certified accuracy (l_inf, standardised units): " + ", ".join(
            f"{k}: {100 * v:.2f}%" for k, v in sorted(metrics["certified_accuracy"].items(),
                                                    key=lambda kv: float(kv[0]))))


@app.command()
def demo(
    epochs: Annotated[int | None, typer.Option(help="override the number of epochs (e.g. 1 for a smoke run)")]
    = None,
    out: Annotated[Path, typer.Option(help="parent folder of the run folder")] = Path("runs"),
    name: Annotated[str, typer.Option(help="run folder name")] = "demo",
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    pgd_steps: Annotated[int | None, typer.Option(help="PGD steps of the certificate check")] = None,
    widths: Annotated[str | None, typer.Option(help="override the hidden widths, e.g. 64,64")] = None,
) -> None:
    """Train a 1-Lipschitz l2 classifier on digits, certify it, attack it, write runs/demo/."""
    cfg = RunConfig.from_dict(DEMO_CONFIG).replace(epochs=epochs, name=name, pgd_steps=pgd_steps,
                                                   widths=widths)
    _run_pipeline(cfg, out, progress)


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="YAML (or JSON) run config")] = None,
    recipe: Annotated[str | None, typer.Option(
        help="a shipped recipe (linf-digits, linf-fmnist, digits-cnn, fmnist-cnn, monotonic-compas, "
             "monotonic-heart, monotonic-autompg); --config keys and flags override it")] = None,
    monotonic: Annotated[str | None, typer.Option(
        help="monotonic-mlp: constraints by name (priors_count=1,age=0) or one sign per column")] = None,
    data_seed: Annotated[int | None, typer.Option(help="seed of the data split")] = None,
    model: Annotated[str | None, typer.Option(
        help="lipmlp or lipcnn (l2), linf-dist or sortnet (l_inf), monotonic-mlp (tabular)")] = None,
    channels: Annotated[str | None, typer.Option(
        help="lipcnn: output channels of the conv stages, e.g. 16,32")] = None,
    kernel_size: Annotated[int | None, typer.Option(help="lipcnn: conv kernel size")] = None,
    downsample: Annotated[str | None, typer.Option(help="lipcnn: stride, pool or none")] = None,
    conv_constraint: Annotated[str | None, typer.Option(help="lipcnn: spectral or aol")] = None,
    head_width: Annotated[int | None, typer.Option(help="l_inf models: hybrid head width (0: none)")] = None,
    standardised_init: Annotated[bool | None, typer.Option(
        help="l_inf models: initialise as if the inputs were standardised (see the recipe)")] = None,
    augment_shift: Annotated[int | None, typer.Option(
        help="random image shifts of up to this many pixels (0: none)")] = None,
    ce_weight: Annotated[str | None, typer.Option(
        help="l_inf mix loss: CE weight decaying from W0 to W1 over the p window, e.g. 1,0.02")] = None,
    p_window: Annotated[str | None, typer.Option(
        help="l_inf models: fractions A,B of the steps over which p grows to p_end, e.g. 0.02,0.3")] = None,
    name: Annotated[str | None, typer.Option()] = None,
    dataset: Annotated[str | None, typer.Option()] = None,
    widths: Annotated[str | None, typer.Option(
        help="hidden widths, e.g. 256,256 (lipcnn: dense layers after the convs, '' for none)")] = None,
    activation: Annotated[str | None, typer.Option(help="maxmin, groupsort or spline")] = None,
    tv2_weight: Annotated[float | None, typer.Option(help="spline activations: TV(2) penalty weight")] = None,
    spline_lr: Annotated[float | None, typer.Option(
        help="spline activations: their own learning rate (0: lr)")] = None,
    loss: Annotated[str | None, typer.Option()] = None,
    temperature: Annotated[float | None, typer.Option()] = None,
    margin: Annotated[float | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    radii: Annotated[str | None, typer.Option(help="certification radii, e.g. 0.1,0.5,1")] = None,
    p: Annotated[str | None, typer.Option(help="norm: 2 (or inf)")] = None,
    out: Annotated[Path, typer.Option(help="parent folder of the run folder")] = Path("runs"),
    progress: Annotated[bool, typer.Option()] = True,
    dp: Annotated[bool | None, typer.Option(
        "--dp/--no-dp", help="differentially private training without clipping (lipkit.dp)")] = None,
    epsilon: Annotated[float | None, typer.Option(help="--dp: target epsilon")] = None,
    delta: Annotated[float | None, typer.Option(help="--dp: target delta")] = None,
    input_radius: Annotated[float | None, typer.Option(
        help="--dp: inputs are projected onto the l2 ball of this radius")] = None,
    noise_multiplier: Annotated[float | None, typer.Option(
        help="--dp: fixed noise multiplier instead of a target epsilon")] = None,
    accountant: Annotated[str | None, typer.Option(help="--dp: rdp or prv")] = None,
) -> None:
    """Train from a recipe, a config file and/or flags (each overrides the one before), then certify
    and report."""
    from lipkit.training.config import load_recipe, read_config_file

    raw = read_config_file(config) if config is not None else {}
    cfg = load_recipe(recipe).replace(**raw) if recipe is not None else RunConfig.from_dict(raw)
    cfg = cfg.replace(name=name, dataset=dataset, widths=widths, activation=activation, loss=loss,
                      temperature=temperature, margin=margin, lr=lr, epochs=epochs, batch_size=batch_size,
                      seed=seed, radii=radii, p=p, model=model, head_width=head_width, channels=channels,
                      kernel_size=kernel_size, downsample=downsample, conv_constraint=conv_constraint,
                      standardised_init=standardised_init, augment_shift=augment_shift,
                      ce_weight=ce_weight, p_window=p_window, tv2_weight=tv2_weight, spline_lr=spline_lr,
                      private=dp, epsilon=epsilon, delta=delta,
                      input_radius=input_radius, noise_multiplier=noise_multiplier, accountant=accountant,
                      monotonic=monotonic, data_seed=data_seed)
    _run_pipeline(cfg, out, progress)


@app.command()
def certify(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (e.g. runs/demo)")],
    eps: Annotated[str | None, typer.Option(help="radii in the run's norm (l2 or l_inf), e.g. 0.1,0.5 "
                                                 "(default: the run's radii)")] = None,
    pgd_steps: Annotated[int, typer.Option(help="PGD steps for the sanity check (0: skip)")] = 50,
    interval: Annotated[bool, typer.Option(
        help="l_inf runs: also certify with interval bounds tightened by the Lipschitz bound")] = False,
    input_domain: Annotated[str | None, typer.Option(
        help="with --interval: clip the ball to the valid inputs LO,HI (e.g. 0,1 for pixels); the "
             "certificate then covers the clipped ball only")] = None,
) -> None:
    """Certified accuracy of a trained run at the given radii, with a PGD check; prints JSON."""
    from lipkit.bounds import UnsupportedModuleError
    from lipkit.training.report import certify_run, interval_figures
    from lipkit.training.runs import load_run

    radii = _parse_radii(eps) if eps is not None else None
    if pgd_steps < 0:
        raise CliError("--pgd-steps must be >= 0")
    domain = _parse_domain(input_domain) if input_domain is not None else None
    if domain is not None and not interval:
        raise CliError("--input-domain needs --interval")
    cfg, model, split = load_run(run_dir)
    if cfg.model == "monotonic-mlp":  # tabular: per-record l_inf radii (lipkit.training.monotonic)
        if interval:
            raise CliError("--interval is for l_inf image runs; a monotonic run is certified by its margin")
        from lipkit.training.monotonic import certify_tabular

        m = certify_tabular(model, split, radii or cfg.radii, pgd_steps=pgd_steps, seed=cfg.seed)
        m.pop("radii_sorted", None)
        typer.echo(json.dumps(m, indent=2, sort_keys=True))
        if m["certificates_broken"]:
            raise CliError(f"{m['certificates_broken']} certificates were broken by PGD: the bound is wrong")
        return
    if interval and cfg.p != math.inf:
        raise CliError(f"--interval certifies l_inf runs; this run is l_{cfg.p:g}")
    if domain is not None and (split.x_test.min() < domain[0] or split.x_test.max() > domain[1]):
        raise CliError(f"--input-domain {input_domain}: the test inputs lie in "
                       f"[{float(split.x_test.min()):g}, {float(split.x_test.max()):g}], outside it")
    m = certify_run(model, split, radii or cfg.radii, pgd_steps=pgd_steps, seed=cfg.seed, p=cfg.p)
    m.pop("radii_sorted")
    if cfg.private:
        m["privacy"] = _run_privacy(run_dir)
    if interval:
        try:
            m["interval"] = interval_figures(model, split, radii or cfg.radii, domain, pgd_steps, cfg.seed)
        except (ValueError, UnsupportedModuleError) as exc:
            raise CliError(f"--interval: {exc}") from None
        m["certificates_broken"] += sum(m["interval"]["broken"].values())
    typer.echo(json.dumps(m, indent=2, sort_keys=True))
    if m["certificates_broken"]:
        raise CliError(f"{m['certificates_broken']} certified points were broken by PGD: the bound is wrong")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder (e.g. runs/demo)")]) -> None:
    """Recompute metrics.json, certified_accuracy.png and report.md for a trained run."""
    from lipkit.training.report import certify_run, write_report
    from lipkit.training.runs import load_run

    cfg, model, split = load_run(run_dir)
    if cfg.model == "monotonic-mlp":
        from lipkit.training.monotonic import certify_tabular

        metrics = certify_tabular(model, split, cfg.radii, pgd_steps=cfg.pgd_steps, seed=cfg.seed)
    else:
        metrics = certify_run(model, split, cfg.radii, pgd_steps=cfg.pgd_steps, seed=cfg.seed, p=cfg.p)
    old = Path(run_dir) / "metrics.json"
    if old.is_file():
        try:
            prev = json.loads(old.read_text())
            for k in ("train_seconds", "history", "resumed_from_epoch"):
                if k in prev:
                    metrics[k] = prev[k]
        except json.JSONDecodeError:
            pass
    if cfg.private:
        metrics["privacy"] = _run_privacy(run_dir)
    if cfg.model == "monotonic-mlp":
        from lipkit.training.monotonic import write_tabular_report

        paths = write_tabular_report(run_dir, metrics, cfg, model, split)
        _tabular_summary(Path(run_dir), metrics)
        typer.echo(f"wrote {paths['report']}")
        return
    paths = write_report(run_dir, metrics, cfg)
    _summary(Path(run_dir), metrics)
    typer.echo(f"wrote {paths['report']}")


@app.command("estimate")
def estimate_cmd(
    model: Annotated[str, typer.Argument(help="an .onnx file (MLP/CNN) or a lipkit run folder")],
    p: Annotated[str, typer.Option("--p", help="norm: 2, inf or 1")] = "2",
    method: Annotated[str | None, typer.Option(
        help="naive, lipsdp, lipsdp-layer, lipopt, lipopt2; several separated by commas "
             "(default: lipsdp for p=2, lipopt for inf/1)")] = None,
    time_limit: Annotated[float | None, typer.Option(help="seconds per solver (SCS / HiGHS)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results as JSON here")] = None,
    input_shape: Annotated[str | None, typer.Option(help="shape of one input, e.g. 1,28,28")] = None,
    lower: Annotated[bool, typer.Option(help="also compute a lower bound")] = True,
    progress: Annotated[bool, typer.Option(help="show a progress indicator")] = True,
) -> None:
    """Bracket a network's Lipschitz constant: sound upper bounds per method and an attained lower bound."""
    from lipkit.cli.estimate import run_estimate

    try:
        run_estimate(model, p, method, time_limit, json_out, input_shape, lower, progress)
    except ValueError as exc:  # ModelLoadError, EstimateCommandError, bad options
        raise CliError(str(exc)) from None


def _user_errors() -> tuple[type[BaseException], ...]:
    from lipkit.bounds import UnsupportedModuleError
    from lipkit.exporting import ExportError
    from lipkit.training.checkpoints import CheckpointError
    from lipkit.training.data import DataUnavailableError
    from lipkit.training.runs import RunError

    return (CliError, ConfigError, RunError, CheckpointError, DataUnavailableError, ExportError,
            UnsupportedModuleError, FloatingPointError, FileNotFoundError, PermissionError)


_terminated = threading.Event()  # set by the SIGTERM handler


def _raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C (temporary files removed, one line, resumable): typer turns the
    KeyboardInterrupt into exit code 130, and the flag tells the two apart."""
    _terminated.set()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turn user errors into one line on stderr and an exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    previous = None
    _terminated.clear()
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _main(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args: list[str]) -> int:
    try:
        rv = app(args=args, prog_name="lipkit", standalone_mode=False)
    except _cx.NoArgsIsHelpError as exc:
        exc.show()
        return 0
    except _cx.ClickException as exc:
        _echo(f"error: {exc.format_message()}")
        return exc.exit_code or 2
    except typer.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        rv = 130
    except _user_errors() as exc:
        _echo(f"error: {exc}")
        return 1
    if rv == 130 and _terminated.is_set():
        _echo("error: terminated; re-run the same command to resume from the last checkpoint")
        return 143
    if rv == 130:  # typer turns Ctrl-C into exit code 130
        _echo("error: interrupted; re-run the same command to resume from the last checkpoint")
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
