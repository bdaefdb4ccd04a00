"""The work behind ``lipkit estimate MODEL``: load, bracket with one or more methods, print, write JSON.

Each requested method runs through :func:`lipkit.estimation.estimate`, which falls back to the next sound
method when a solver fails or runs out of time (the table and stderr say so).  The lower bound (multi-start
Jacobian ascent + pairs) is computed once and shared by every row.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import torch

from lipkit.bounds import normalize_p
from lipkit.estimation import METHODS, estimate
from lipkit.estimation.load import load_model

__all__ = ["EstimateCommandError", "run_estimate", "default_method", "resolve_model"]


class EstimateCommandError(ValueError):
    """A bad argument of ``lipkit estimate`` (reported as one line)."""


def default_method(p: float) -> str:
    """The tightest global method for the norm: LipSDP-Neuron for l2, LiPopt for l_inf / l1."""
    return "lipsdp" if p == 2 else "lipopt"


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise EstimateCommandError(f"--input-shape: {text!r} is not a list of integers like "
                                   "1,28,28") from None
    if not shape or any(s <= 0 for s in shape):
        raise EstimateCommandError(f"--input-shape: {text!r} must list positive sizes, e.g. 1,28,28")
    return shape


def resolve_model(source: str | Path) -> torch.nn.Module:
    """The network ``lipkit estimate`` reads: a lipkit run folder's exported model
    (:func:`lipkit.training.runs.load_run_model`) or an ``.onnx`` file (:func:`lipkit.estimation.load_model`);
    a problem with either raises a ``ValueError`` with one line."""
    if Path(source).is_dir():
        from lipkit.training.runs import RunError, load_run_model

        try:
            return load_run_model(source)
        except RunError as exc:
            raise EstimateCommandError(str(exc)) from None
    return load_model(source)


def _p_text(p: float) -> str:
    return "inf" if p == math.inf else f"{p:g}"


def run_estimate(
    model_path: str,
    p: str = "2",
    methods: str | None = None,
    time_limit: float | None = None,
    json_path: Path | None = None,
    input_shape: str | None = None,
    lower: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the estimate command; returns the JSON record (also written to ``json_path``)."""
    from rich.console import Console
    from rich.table import Table

    try:
        pn = normalize_p(p)
    except ValueError as exc:
        raise EstimateCommandError(f"--p: {exc}") from None
    names = [m.strip().lower() for m in (methods or default_method(pn)).split(",") if m.strip()]
    for m in names:
        if m not in METHODS or m == "local":
            ok = ", ".join(k for k in METHODS if k != "local")
            raise EstimateCommandError(f"--method: unknown method {m!r}; available: {ok}")
        if pn not in METHODS[m][0]:
            raise EstimateCommandError(f"--method {m} does not support --p {_p_text(pn)}")
    if time_limit is not None and not (time_limit > 0 and math.isfinite(time_limit)):
        raise EstimateCommandError("--time-limit must be a positive number of seconds")
    shape = _parse_shape(input_shape)
    model = resolve_model(model_path)
    if shape is None:
        shape = getattr(model, "input_shape", None)
    if shape is not None:
        try:
            with torch.no_grad():
                param = next(model.parameters(), None)
                model.eval()(torch.zeros((1, *shape), dtype=param.dtype if param is not None else None))
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or ["shape mismatch"])[0]
            raise EstimateCommandError(f"input shape {tuple(shape)} does not fit the model: "
                                       f"{first}") from None
    err = Console(stderr=True)
    rows: list[dict[str, Any]] = []
    low, low_kind = 0.0, "none"
    for k, m in enumerate(names):
        with err.status(f"[bold]{m}[/bold]: computing the bound (l{_p_text(pn)})...", spinner="dots") \
                if progress else _nullcontext():
            try:
                est = estimate(model, pn, m, time_limit, input_shape=shape, lower=lower and k == 0)
            except ValueError as exc:
                raise EstimateCommandError(str(exc)) from None
        if k == 0:
            low, low_kind = est.lower, est.details.get("lower_kind", "none")
        row = {"method": m, "used": est.method, "upper": est.upper, "lower": low,
               "ratio": est.upper / low if low > 0 else None, "seconds": est.seconds,
               "fallback": est.details.get("fallback")}
        if row["fallback"]:
            err.print(f"[yellow]note[/yellow]: {m}: {row['fallback']}", markup=True, highlight=False)
        rows.append(row)
    best = min(rows, key=lambda r: r["upper"])
    table = Table(title=f"{model_path}: l{_p_text(pn)} Lipschitz constant bracket")
    for col in ("method", "lower", "upper", "upper/lower", "seconds", "note"):
        table.add_column(col, justify="left" if col in ("method", "note") else "right")
    for r in rows:
        note = f"fell back to {r['used']}" if r["used"] != r["method"] else ("best" if r is best else "")
        table.add_row(r["method"], f"{r['lower']:.6g}", f"{r['upper']:.6g}",
                      f"{r['ratio']:.4f}" if r["ratio"] is not None else "-", f"{r['seconds']:.2f}", note)
    Console().print(table)
    record = {
        "model": str(model_path),
        "p": _p_text(pn),
        "input_shape": list(shape) if shape is not None else None,
        "lower": low,
        "lower_kind": low_kind,
        "best_upper": best["upper"],
        "best_method": best["used"],
        "results": rows,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if json_path is not None:
        try:
            Path(json_path).write_text(json.dumps(record, indent=2))
        except OSError as exc:
            raise EstimateCommandError(f"--json: cannot write {json_path}: {exc.strerror or exc}") from None
    return record


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None
