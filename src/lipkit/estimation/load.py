"""Bring a network to the estimators: a torch module or an ONNX file of an MLP / CNN.

A lipkit run folder is the application's business (:func:`lipkit.training.runs.load_run_model`, or
``lipkit estimate RUN_FOLDER``): this layer does not import the trainer.  Nothing here unpickles a file:
ONNX files are read with the ``onnx`` package (protobuf).  A pickled ``.pt`` / ``.pth`` file is refused
with a message saying how to convert it.

ONNX support (opset-independent reading of the graph; the model must be a *chain*: every node consumes the
previous node's output plus constants):

=====================  ==========================================================================
ONNX operator          torch module
=====================  ==========================================================================
Gemm                   ``nn.Linear`` (``alpha``, ``beta``, ``transB``; ``transA = 0``)
MatMul (+ Add const)   ``nn.Linear`` (the following constant Add becomes its bias)
Conv                   ``nn.Conv1d`` / ``nn.Conv2d`` (symmetric pads, strides, dilations, group)
Relu, LeakyRelu, Elu   ``nn.ReLU``, ``nn.LeakyReLU(alpha)``, ``nn.ELU(alpha)``
Sigmoid, Tanh          ``nn.Sigmoid``, ``nn.Tanh``
Softplus               ``lipkit.SmoothSoftplus`` (``nn.Softplus`` jumps at its threshold)
Flatten, Reshape       ``nn.Flatten`` (to ``(batch, -1)``) / ``nn.Unflatten``
MaxPool, AveragePool   ``nn.MaxPool2d``, ``nn.AvgPool2d`` (``count_include_pad``)
GlobalAveragePool      ``nn.AdaptiveAvgPool2d(1)``
BatchNormalization     ``nn.BatchNorm1d/2d`` in eval mode
Identity, Dropout      dropped
=====================  ==========================================================================

Any other operator raises :class:`ModelLoadError` naming it; so does a malformed or truncated file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lipkit.nn.activations import SmoothSoftplus

__all__ = ["ModelLoadError", "LoadedSequential", "load_model", "onnx_to_torch", "SUPPORTED_ONNX_OPS"]


class ModelLoadError(ValueError):
    """The model file cannot be read as a supported network (the message says why)."""


class LoadedSequential(nn.Sequential):
    """An ``nn.Sequential`` that remembers the shape of one input (without batch) it was loaded with."""

    input_shape: tuple[int, ...] | None = None


SUPPORTED_ONNX_OPS = (
    "Gemm", "MatMul", "Add", "Conv", "Relu", "LeakyRelu", "Elu", "Sigmoid", "Tanh", "Softplus", "Flatten",
    "Reshape", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization", "Identity", "Dropout",
    "Constant",
)


def load_model(source: nn.Module | str | Path) -> nn.Module:
    """Return an ``nn.Module`` for ``source`` (eval mode).

    * an ``nn.Module``: returned as is;
    * a ``.onnx`` file: converted to a :class:`LoadedSequential` (see the module docstring).

    A folder (e.g. a lipkit run folder) is refused: load a run with
    :func:`lipkit.training.runs.load_run_model` or use ``lipkit estimate RUN_FOLDER``.

    Loaded models carry ``input_shape`` (one input, no batch) when it is known.
    Raises :class:`ModelLoadError` (a ``ValueError``) with one clear message for anything else.
    """
    if isinstance(source, nn.Module):
        return source
    if not isinstance(source, (str, Path)):
        raise ModelLoadError(f"cannot load a model from a {type(source).__name__}; "
                             "give a path or an nn.Module")
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"model path {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelLoadError(f"{str(path)!r} is a folder; load_model reads nn.Modules and .onnx files only: "
                             "load a lipkit run folder with lipkit.training.runs.load_run_model(path) or "
                             "run `lipkit estimate RUN_FOLDER`")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"):
        raise ModelLoadError(
            f"{path.name}: pickled torch files are not loaded (unpickling can run arbitrary code); export "
            "the model with torch.onnx.export(...) and pass the .onnx file, or pass the nn.Module in Python"
        )
    if suffix == ".onnx":
        return onnx_to_torch(path)
    raise ModelLoadError(f"{path.name}: unknown model format {suffix or '(no suffix)'!r}; "
                         "use an .onnx file (a lipkit run folder: lipkit.training.runs.load_run_model)")


# --------------------------------------------------------------------------- ONNX


def _attrs(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pair_list(v, n: int, name: str) -> tuple[int, ...]:
    v = tuple(int(x) for x in v)
    if len(v) != n:
        raise ModelLoadError(f"{name} {v} does not have {n} entries")
    return v


class _Builder:
    """Build the torch layers of a chain-shaped ONNX graph, tracking the running tensor's shape."""

    def __init__(self, input_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.layers: list[nn.Module] = []
        self.input_shape = input_shape
        self.shape: tuple[int, ...] = input_shape  # without batch

    def add(self, module: nn.Module, where: str) -> None:
        module.eval()
        try:
            with torch.no_grad():
                y = module(torch.zeros((1, *self.shape), dtype=self.dtype))
        except RuntimeError as exc:
            msg = str(exc).strip().splitlines()[0]
            raise ModelLoadError(f"{where}: does not apply to an input of shape {self.shape}: "
                                 f"{msg}") from None
        self.layers.append(module)
        self.shape = tuple(y.shape[1:])


def _tensor(t) -> np.ndarray:
    from onnx import numpy_helper

    return np.array(numpy_helper.to_array(t))


def _pads_sym(pads, n: int, where: str) -> tuple[int, ...]:
    if pads is None:
        return (0,) * n
    pads = [int(x) for x in pads]
    begin, end = pads[:n], pads[n:]
    if begin != end:
        raise ModelLoadError(f"{where}: asymmetric padding {pads} is not supported")
    return tuple(begin)


def _auto_pad(at: dict, where: str) -> None:
    ap = at.get("auto_pad", b"NOTSET")
    ap = ap.decode() if isinstance(ap, bytes) else str(ap)
    if ap not in ("NOTSET", "VALID", ""):
        raise ModelLoadError(f"{where}: auto_pad={ap} is not supported (export with explicit pads)")


def onnx_to_torch(path: str | Path) -> LoadedSequential:
    """Convert a chain-shaped ONNX MLP / CNN to a :class:`LoadedSequential` (float32, eval mode)."""
    try:
        import onnx
    except ImportError:
        raise ModelLoadError("reading ONNX files needs the onnx package: pip install onnx") from None
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, truncated files, ...
        raise ModelLoadError(f"{path.name} is not a valid ONNX file ({type(exc).__name__}: "
                             f"{str(exc).strip()[:200] or 'cannot parse'})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: {first[:300]}") from None
    g = model.graph
    consts: dict[str, np.ndarray] = {t.name: _tensor(t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise ModelLoadError(f"{path.name}: expected one input tensor, found {len(inputs)} "
                             f"({', '.join(i.name for i in inputs)})")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) < 2 or any(s is None or s <= 0 for s in shape[1:]):
        raise ModelLoadError(f"{path.name}: input {inputs[0].name!r} needs a static shape (batch, ...), "
                             f"got {shape}")
    # float64 files stay float64 (the bound is of the weights in the file, not of a rounded copy)
    dt = torch.float64 if any(v.dtype == np.float64 for v in consts.values()) else torch.float32
    b = _Builder(tuple(int(s) for s in shape[1:]), dt)
    current = inputs[0].name
    nodes = list(g.node)
    i = 0
    while i < len(nodes):
        node = nodes[i]
        op = node.op_type
        where = f"{path.name}: node {node.name or i} ({op})"
        if op == "Constant":
            at = _attrs(node)
            if "value" not in at:
                raise ModelLoadError(f"{where}: only tensor constants are supported")
            from onnx import numpy_helper

            consts[node.output[0]] = np.array(numpy_helper.to_array(at["value"]))
            i += 1
            continue
        data_in = [x for x in node.input if x and x not in consts]
        if data_in != [current]:
            raise ModelLoadError(f"{where}: the graph is not a chain of layers (node inputs "
                                 f"{list(node.input)}); only sequential MLPs / CNNs are supported")
        at = _attrs(node)
        nxt = nodes[i + 1] if i + 1 < len(nodes) else None
        consumed = 1
        if op == "Gemm":
            if int(at.get("transA", 0)) != 0:
                raise ModelLoadError(f"{where}: transA=1 is not supported")
            if len(b.shape) != 1:
                raise ModelLoadError(f"{where}: Gemm on an input of shape {b.shape} (flatten first)")
            B = consts.get(node.input[1])
            if B is None or B.ndim != 2:
                raise ModelLoadError(f"{where}: the weight must be a constant matrix")
            Bt = B.T if int(at.get("transB", 0)) else B  # (K, M)
            W = float(at.get("alpha", 1.0)) * Bt.T
            bias = None
            if len(node.input) > 2 and node.input[2]:
                C = consts.get(node.input[2])
                if C is None:
                    raise ModelLoadError(f"{where}: the bias must be a constant")
                bias = float(at.get("beta", 1.0)) * np.broadcast_to(C.reshape(-1) if C.size > 1 else C,
                                                                     (W.shape[0],))
            b.add(_linear(W, bias, dt), where)
        elif op == "MatMul":
            B = consts.get(node.input[1])
            if node.input[0] != current or B is None or B.ndim != 2:
                raise ModelLoadError(f"{where}: only x @ (constant matrix) is supported")
            if len(b.shape) != 1:
                raise ModelLoadError(f"{where}: MatMul on an input of shape {b.shape} (flatten first)")
            bias = None
            if nxt is not None and nxt.op_type == "Add" and node.output[0] in nxt.input:
                other = [x for x in nxt.input if x != node.output[0]]
                if len(other) == 1 and other[0] in consts and consts[other[0]].size in (1, B.shape[1]):
                    bias = np.broadcast_to(consts[other[0]].reshape(-1), (B.shape[1],))
                    consumed = 2
                    node = nxt
            b.add(_linear(B.T, bias, dt), where)
        elif op == "Conv":
            W = consts.get(node.input[1])
            if W is None:
                raise ModelLoadError(f"{where}: the kernel must be a constant")
            nd = W.ndim - 2
            if nd not in (1, 2):
                raise ModelLoadError(f"{where}: only 1-D and 2-D convolutions are supported")
            _auto_pad(at, where)
            bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            groups = int(at.get("group", 1))
            cls = nn.Conv2d if nd == 2 else nn.Conv1d
            conv = cls(W.shape[1] * groups, W.shape[0], tuple(W.shape[2:]),
                       stride=_pair_list(at.get("strides", [1] * nd), nd, "strides"),
                       padding=_pads_sym(at.get("pads"), nd, where),
                       dilation=_pair_list(at.get("dilations", [1] * nd), nd, "dilations"),
                       groups=groups, bias=bias is not None, dtype=dt)
            with torch.no_grad():
                conv.weight.copy_(_t(W, dt))
                if bias is not None:
                    conv.bias.copy_(_t(bias.reshape(-1), dt))
            b.add(conv, where)
        elif op in ("Relu", "Sigmoid", "Tanh", "Softplus"):
            acts = {"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Softplus": SmoothSoftplus}
            b.add(acts[op](), where)
        elif op == "LeakyRelu":
            b.add(nn.LeakyReLU(float(at.get("alpha", 0.01))), where)
        elif op == "Elu":
            b.add(nn.ELU(float(at.get("alpha", 1.0))), where)
        elif op in ("Identity", "Dropout"):
            pass
        elif op == "Flatten":
            axis = int(at.get("axis", 1))
            if axis not in (1, -len(b.shape)):
                raise ModelLoadError(f"{where}: only Flatten(axis=1) (keep the batch) is supported")
            b.add(nn.Flatten(), where)
        elif op == "Reshape":
            target = consts.get(node.input[1])
            if target is None:
                raise ModelLoadError(f"{where}: the target shape must be a constant")
            target = [int(t) for t in target.reshape(-1)]
            n = math.prod(b.shape)
            rest = [b.shape[j] if t == 0 and j < len(b.shape) else t for j, t in enumerate(target[1:])]
            if len(target) == 2 and target[1] in (-1, n):
                b.add(nn.Flatten(), where)
            elif target[0] in (0, 1, -1) and -1 not in rest and math.prod(rest) == n:
                if len(b.shape) != 1:
                    b.add(nn.Flatten(), where)
                if tuple(rest) != b.shape:
                    b.add(nn.Unflatten(1, tuple(rest)), where)
            else:
                raise ModelLoadError(f"{where}: reshape {b.shape} -> {target} is not supported")
        elif op in ("MaxPool", "AveragePool"):
            k = tuple(int(x) for x in at["kernel_shape"])
            if len(k) != 2:
                raise ModelLoadError(f"{where}: only 2-D pooling is supported")
            _auto_pad(at, where)
            st = _pair_list(at.get("strides", [1, 1]), 2, "strides")
            pad = _pads_sym(at.get("pads"), 2, where)
            ceil = bool(at.get("ceil_mode", 0))
            if op == "MaxPool":
                if len(node.output) > 1 and node.output[1]:
                    raise ModelLoadError(f"{where}: MaxPool with an indices output is not supported")
                dil = _pair_list(at.get("dilations", [1, 1]), 2, "dilations")
                b.add(nn.MaxPool2d(k, st, pad, dilation=dil, ceil_mode=ceil), where)
            else:
                b.add(nn.AvgPool2d(k, st, pad, ceil_mode=ceil,
                                   count_include_pad=bool(at.get("count_include_pad", 0))), where)
        elif op == "GlobalAveragePool":
            b.add(nn.AdaptiveAvgPool2d(1), where)
        elif op == "BatchNormalization":
            scale, bias, mean, var = (consts.get(x) for x in node.input[1:5])
            if any(v is None for v in (scale, bias, mean, var)):
                raise ModelLoadError(f"{where}: batch-norm parameters must be constants")
            cls = nn.BatchNorm2d if len(b.shape) == 3 else nn.BatchNorm1d
            bn = cls(scale.shape[0], eps=float(at.get("epsilon", 1e-5)), dtype=dt)
            with torch.no_grad():
                for name, v in (("weight", scale), ("bias", bias), ("running_mean", mean),
                                ("running_var", var)):
                    getattr(bn, name).copy_(_t(v, dt))
            b.add(bn, where)
        else:
            raise ModelLoadError(f"{where}: unsupported ONNX operator {op!r}; supported: "
                                 f"{', '.join(SUPPORTED_ONNX_OPS)}")
        current = node.output[0]
        i += consumed
    outs = [o.name for o in g.output]
    if outs != [current]:
        raise ModelLoadError(f"{path.name}: the graph output {outs} is not the end of the layer chain")
    if not b.layers:
        raise ModelLoadError(f"{path.name}: the graph has no layers")
    seq = LoadedSequential(*b.layers)
    seq.input_shape = b.input_shape
    return seq.eval()


def _t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64)).to(dtype)


def _linear(W: np.ndarray, bias: np.ndarray | None, dtype: torch.dtype) -> nn.Linear:
    lin = nn.Linear(W.shape[1], W.shape[0], bias=bias is not None, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(_t(W, dtype))
        if bias is not None:
            lin.bias.copy_(_t(bias, dtype))
    return lin
