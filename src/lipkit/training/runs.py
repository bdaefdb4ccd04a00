"""Run folders: the one reader and writer of ``runs/<name>/``.

A run folder holds ``config.json`` (the :class:`RunConfig`, flat keys; older folders load too) and
``weights.safetensors`` (the exported, plain-torch weights: ``nn.Linear`` layers where training used
parametrised ones, see :func:`lipkit.training.trainer.build_plain_model`), plus the reports
(:mod:`lipkit.training.report`) and ``checkpoints/`` (:mod:`lipkit.training.checkpoints`).

* :func:`save_run` writes the two files (atomically);
* :func:`load_run_model` rebuilds the exported model from them alone (sizes read from the weights; no
  data set is loaded): what ``lipkit estimate RUN_FOLDER`` estimates;
* :func:`load_run` also loads the run's data split: what ``lipkit certify`` / ``lipkit report`` use.

Nothing is unpickled: JSON for the config, safetensors for the weights.  Every problem raises
:class:`RunError` with one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from lipkit.training.checkpoints import atomic_write_bytes
from lipkit.training.config import ConfigError, RunConfig
from lipkit.training.data import Split, split_for_config

__all__ = ["RunError", "CONFIG_FILE", "WEIGHTS_FILE", "save_run", "save_weights", "read_run_config",
           "load_run_model", "load_run"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


class RunError(RuntimeError):
    """A run folder is missing, incomplete or does not hold what its config describes."""


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Atomically write a plain model's ``state_dict`` as safetensors."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(path), save(tensors))


def save_run(run_dir: str | Path, cfg: RunConfig, model: nn.Module) -> None:
    """Write ``weights.safetensors`` (the exported plain ``model``) and ``config.json`` into ``run_dir``."""
    run_dir = Path(run_dir)
    save_weights(model, run_dir / WEIGHTS_FILE)
    atomic_write_bytes(run_dir / CONFIG_FILE, cfg.to_json().encode())


def _check_folder(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise RunError(f"run folder {str(run_dir)!r} does not exist")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (run_dir / name).is_file():
            raise RunError(f"{str(run_dir)!r} is not a complete lipkit run folder: it has no {name}; "
                           "train it first (lipkit train / lipkit demo)")


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The validated :class:`RunConfig` of a run folder (flat or sectioned ``config.json``)."""
    run_dir = Path(run_dir)
    _check_folder(run_dir)
    path = run_dir / CONFIG_FILE
    try:
        return RunConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON: {exc}") from None
    except ConfigError as exc:
        raise RunError(f"{path}: {exc}") from None


def _read_weights(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunError(f"{path} is not a readable safetensors file: {exc}") from None


def _sizes(state: dict, path: Path) -> tuple[int, int]:
    """``(in_features, num_classes)`` from the first and last 2-D weight of a Sequential state dict."""
    weights = sorted((k for k in state if k.endswith(".weight") and state[k].dim() == 2),
                     key=lambda k: int(k.split(".")[0]) if k.split(".")[0].isdigit() else -1)
    if not weights:
        raise RunError(f"{path} holds no linear layer weights")
    return int(state[weights[0]].shape[1]), int(state[weights[-1]].shape[0])


def _build_and_load(cfg: RunConfig, state: dict, in_features: int, num_classes: int,
                    path: Path) -> nn.Sequential:
    from lipkit.training.trainer import build_plain_model

    model = build_plain_model(cfg, in_features, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{path} does not hold the weights of the run's config: {first}") from None
    return model.eval()


def load_run_model(run_dir: str | Path) -> nn.Sequential:
    """The exported plain model of a run folder, in eval mode, without loading any data set (except for a
    ``lipcnn`` run, whose image size is read from its data set).

    Returns a :class:`lipkit.estimation.load.LoadedSequential` (an ``nn.Sequential``) whose
    ``input_shape`` is ``(in_features,)``, read from the weights; ready for :mod:`lipkit.estimation`.
    """
    from lipkit.estimation.load import LoadedSequential

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if cfg.model == "monotonic-mlp":
        raise RunError(f"{str(run_dir)!r} is a monotonic run (g(x) + lam x C, not a chain of layers); its "
                       f"bound is the wrapper's own rule: lipkit certify {run_dir} prints it")
    path = run_dir / WEIGHTS_FILE
    state = _read_weights(path)
    if cfg.model == "lipcnn":  # the image size is not in the weights: read it from the data set
        split = split_for_config(cfg)
        in_features, num_classes = split.num_features, split.num_classes
    else:
        in_features, num_classes = _sizes(state, path)
    out = LoadedSequential(*_build_and_load(cfg, state, in_features, num_classes, path))
    out.input_shape = (in_features,)
    return out.eval()


def load_run(run_dir: str | Path) -> tuple[RunConfig, nn.Sequential, Split]:
    """``(config, exported plain model in eval mode, data split)`` of a run folder.

    The model is built for the split's sizes; weights of other sizes raise :class:`RunError`.  A
    ``monotonic-mlp`` run gives its exported :class:`lipkit.MonotonicNetwork` (``lam`` frozen to the saved
    value, checked against the body's bound) and its :class:`~lipkit.training.data.TabularSplit`."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    path = run_dir / WEIGHTS_FILE
    state = _read_weights(path)
    if cfg.model == "monotonic-mlp":  # the exported MonotonicNetwork, lam frozen (lipkit.training.monotonic)
        from lipkit.training.monotonic import load_tabular_run

        return (cfg, *load_tabular_run(run_dir, cfg, state))
    split = split_for_config(cfg)
    return cfg, _build_and_load(cfg, state, split.num_features, split.num_classes, path), split
