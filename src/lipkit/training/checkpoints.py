"""Atomic, verified checkpoints of a training run (moved out of :mod:`lipkit.training.trainer`).

Checkpoints live in ``<run_dir>/checkpoints/``: for every finished epoch ``e`` the trainer writes
``epoch_XXXX.safetensors`` (model state, optimiser state tensors, RNG state) and then
``epoch_XXXX.json`` (config, epoch, metrics, scheduler state, non-tensor optimiser state and the
SHA-256 of the tensor file).  Each file is written to a temporary name and moved into place with
:func:`os.replace`, and the JSON is written last, so a kill at any moment leaves either the
previous complete checkpoint or the new one.  A corrupt or incomplete checkpoint raises
:class:`CheckpointError` and nothing on disk is deleted or overwritten.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipkit.training.config import RunConfig

__all__ = [
    "CKPT_DIR",
    "CheckpointError",
    "atomic_write_bytes",
    "latest_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_model_state",
    "optimizer_to_flat",
    "optimizer_from_flat",
]

CKPT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or does not match the run's config."""



def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's state into tensors (for safetensors) and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Load the state written by :func:`optimizer_to_flat` into ``opt``."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


_MODEL = "model."  # checkpoint tensor keys of the model's state dict (optimiser: "optim.", RNG: "rng.")


def _ckpt_paths(run_dir: Path, epoch: int) -> tuple[Path, Path]:
    d = Path(run_dir) / CKPT_DIR
    return d / f"epoch_{epoch:04d}.safetensors", d / f"epoch_{epoch:04d}.json"


def latest_checkpoint(run_dir: str | Path) -> int | None:
    """The newest epoch with a committed (JSON-written) checkpoint, or ``None``."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return None
    epochs = []
    for p in d.glob("epoch_*.json"):
        try:
            epochs.append(int(p.stem.split("_", 1)[1]))
        except ValueError:
            continue
    return max(epochs) if epochs else None


def save_checkpoint(run_dir: Path, epoch: int, cfg: RunConfig, model: nn.Module,
                    opt: torch.optim.Optimizer, sched: Any, metrics: dict[str, Any], keep: int = 2) -> None:
    """Write checkpoint ``epoch`` (weights, optimiser, scheduler, RNG, config, metrics) atomically and keep
    only the ``keep`` newest ones."""
    from safetensors.torch import save

    tensors = {f"{_MODEL}{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_to_flat(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state().clone()
    blob = save(tensors)
    st_path, js_path = _ckpt_paths(run_dir, epoch)
    atomic_write_bytes(st_path, blob)
    meta = {
        "format": "lipkit-checkpoint-1",
        "epoch": epoch,
        "config": cfg.to_dict(),
        "metrics": metrics,
        "optimizer": opt_meta,
        "scheduler": sched.state_dict() if sched is not None else None,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "rng_torch_b64": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    atomic_write_bytes(js_path, json.dumps(meta, indent=1).encode())
    # prune old checkpoints (only ones strictly older than the `keep` newest committed ones)
    d = Path(run_dir) / CKPT_DIR
    old = sorted(int(p.stem.split("_", 1)[1]) for p in d.glob("epoch_*.json"))[:-keep]
    for e in old:
        for p in _ckpt_paths(run_dir, e)[::-1]:
            p.unlink(missing_ok=True)


def checkpoint_model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` inside the tensors of :func:`load_checkpoint`."""
    return {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}


def load_checkpoint(run_dir: Path, epoch: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify checkpoint ``epoch``; raise :class:`CheckpointError` (deleting nothing)."""
    from safetensors.torch import load

    st_path, js_path = _ckpt_paths(run_dir, epoch)
    try:
        meta = json.loads(js_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != "lipkit-checkpoint-1":
            raise ValueError("unknown format")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {js_path} is corrupt or unreadable ({exc}); "
                              "remove it (or the run folder) to restart") from None
    if not st_path.is_file():
        raise CheckpointError(f"checkpoint {js_path} has no weights file {st_path.name}; "
                              "remove the checkpoint (or the run folder) to restart")
    blob = st_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint weights {st_path} do not match their checksum (corrupt file); "
                              "remove the checkpoint (or the run folder) to restart")
    try:
        tensors = load(blob)
    except Exception as exc:
        raise CheckpointError(f"checkpoint weights {st_path} cannot be read: {exc}") from None
    return meta, tensors

