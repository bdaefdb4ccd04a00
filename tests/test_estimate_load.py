"""Loading models for estimation: torch modules, ONNX files; lipkit run folders through the training layer."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lipkit.estimation import ModelLoadError, estimate, load_model, naive_upper


def _export(model: nn.Module, x: torch.Tensor, path) -> None:
    """torch's TorchScript-based exporter (works offline, no onnxscript needed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def test_torch_mlp_roundtrip_through_onnx(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.LeakyReLU(0.2), nn.Linear(8, 7),
                        nn.Tanh(), nn.Linear(7, 3)).eval()
    path = tmp_path / "mlp.onnx"
    _export(net, torch.zeros(1, 6), path)
    loaded = load_model(path)
    assert loaded.input_shape == (6,)
    x = torch.randn(50, 6)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-6)
    for p in (2, math.inf):
        assert naive_upper(loaded, p) == naive_upper(net, p)
    est = estimate(loaded, 2, "lipsdp", lower_kwargs={"n_starts": 4, "steps": 10})
    ref = estimate(net, 2, "lipsdp", lower=False)
    assert est.method == "lipsdp" and est.upper == pytest.approx(ref.upper, rel=1e-4)
    assert 0 < est.lower <= est.upper
    assert load_model(net) is net


def test_torch_cnn_roundtrip_through_onnx(tmp_path):
    torch.manual_seed(1)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.Sigmoid(),
                        nn.AvgPool2d(2, count_include_pad=False), nn.Flatten(), nn.Linear(6, 5), nn.ELU(),
                        nn.Linear(5, 2))
    with torch.no_grad():
        cnn[1].running_mean.uniform_(-1, 1)
        cnn[1].running_var.uniform_(0.5, 2)
    cnn.eval()
    path = tmp_path / "cnn.onnx"
    _export(cnn, torch.zeros(1, 1, 8, 8), path)
    loaded = load_model(str(path))
    assert loaded.input_shape == (1, 8, 8)
    # (the exporter folds the eval-mode batch norm into the convolution)
    assert [type(m).__name__ for m in loaded][:5] == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "Sigmoid"]
    x = torch.randn(20, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), cnn(x), atol=1e-5)
    est = estimate(loaded, 2, "naive", lower_kwargs={"n_starts": 4, "steps": 10})  # input shape remembered
    assert est.upper == naive_upper(loaded, 2, input_shape=(1, 8, 8))
    assert est.upper <= naive_upper(cnn, 2, input_shape=(1, 8, 8)) * (1 + 1e-5)  # folded BN: one norm
    assert 0 < est.lower <= est.upper


def _graph_model(nodes, inits, in_shape, out_name="y", opset=13):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", "M"])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_hand_built_onnx_graph_matmul_add_gemm_reshape(tmp_path):
    rng = np.random.default_rng(0)
    W1 = rng.normal(size=(12, 5)).astype(np.float32)  # x @ W1 (MatMul layout)
    b1 = rng.normal(size=(5,)).astype(np.float32)
    W2 = rng.normal(size=(5, 3)).astype(np.float32)  # Gemm with transB=0, alpha, beta
    c2 = rng.normal(size=(3,)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["shape"],
                         value=numpy_helper.from_array(np.array([-1, 12], np.int64))),
        helper.make_node("Reshape", ["x", "shape"], ["h0"]),
        helper.make_node("MatMul", ["h0", "W1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h2"]),
        helper.make_node("Sigmoid", ["h2"], ["h3"]),
        helper.make_node("Gemm", ["h3", "W2", "c2"], ["y"], alpha=0.5, beta=2.0, transB=0),
    ]
    m = _graph_model(nodes, {"W1": W1, "b1": b1, "W2": W2, "c2": c2}, [3, 4])
    path = tmp_path / "hand.onnx"
    onnx.save(m, str(path))
    loaded = load_model(path)
    x = rng.normal(size=(7, 3, 4)).astype(np.float32)
    h = 1 / (1 + np.exp(-(x.reshape(7, 12) @ W1 + b1)))
    ref = 0.5 * h @ W2 + 2.0 * c2
    with torch.no_grad():
        out = loaded(torch.from_numpy(x)).numpy()
    assert np.allclose(out, ref, atol=1e-5)
    assert [type(l).__name__ for l in loaded] == ["Flatten", "Linear", "Sigmoid", "Linear"]


def test_hand_built_onnx_conv_batchnorm_global_pool(tmp_path):
    rng = np.random.default_rng(1)
    K = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    sc, bi = rng.uniform(0.5, 2, 3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    mu, var = rng.normal(size=3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
    W = rng.normal(size=(4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c", "sc", "bi", "mu", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Elu", ["bn"], ["e"], alpha=0.5),
        helper.make_node("GlobalAveragePool", ["e"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "W"], ["y"], transB=1),
    ]
    m = _graph_model(nodes, {"K": K, "sc": sc, "bi": bi, "mu": mu, "var": var, "W": W}, [2, 5, 5])
    onnx.save(m, str(tmp_path / "bn.onnx"))
    loaded = load_model(tmp_path / "bn.onnx")
    assert [type(l).__name__ for l in loaded] == ["Conv2d", "BatchNorm2d", "ELU", "AdaptiveAvgPool2d",
                                                  "Flatten", "Linear"]
    x = torch.from_numpy(rng.normal(size=(6, 2, 5, 5)).astype(np.float32))
    c = torch.nn.functional.conv2d(x, torch.from_numpy(K), padding=1)
    bn = (c - torch.from_numpy(mu)[:, None, None]) / torch.sqrt(torch.from_numpy(var)[:, None, None] + 1e-3)
    bn = bn * torch.from_numpy(sc)[:, None, None] + torch.from_numpy(bi)[:, None, None]
    ref = torch.nn.functional.elu(bn, 0.5).mean(dim=(2, 3)) @ torch.from_numpy(W).T
    with torch.no_grad():
        assert torch.allclose(loaded(x), ref, atol=1e-5)


def test_onnx_errors_are_clear(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf \xff\xfe" * 10)
    with pytest.raises(ModelLoadError, match="garbage.onnx is not a valid ONNX"):
        load_model(bad)
    torch.manual_seed(0)
    good = tmp_path / "good.onnx"
    _export(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)), torch.zeros(1, 3), good)
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ModelLoadError, match="trunc.onnx is not a valid ONNX"):
        load_model(trunc)
    # an unsupported operator is named
    W = np.ones((3, 2), np.float32)
    m = _graph_model([helper.make_node("MatMul", ["x", "W"], ["h"]),
                      helper.make_node("Softmax", ["h"], ["y"])], {"W": W}, [3])
    onnx.save(m, str(tmp_path / "softmax.onnx"))
    with pytest.raises(ModelLoadError, match="unsupported ONNX operator 'Softmax'"):
        load_model(tmp_path / "softmax.onnx")
    # a residual connection is not a chain
    m = _graph_model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                      helper.make_node("Add", ["h", "r"], ["y"])], {"W": np.ones((3, 3), np.float32)}, [3])
    onnx.save(m, str(tmp_path / "res.onnx"))
    with pytest.raises(ModelLoadError, match="not a chain"):
        load_model(tmp_path / "res.onnx")
    (tmp_path / "model.pt").write_bytes(b"anything")
    with pytest.raises(ModelLoadError, match="pickled torch files are not loaded"):
        load_model(tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")
    # a folder is the training layer's business: the error names the function to use
    with pytest.raises(ModelLoadError, match=r"is a folder.*lipkit\.training\.runs\.load_run_model"):
        load_model(tmp_path)


def _write_run(tmp_path, **cfg_keys):
    from lipkit.training.config import RunConfig
    from lipkit.training.runs import save_run
    from lipkit.training.trainer import build_plain_model

    cfg = RunConfig.from_dict({"name": "r", "dataset": "digits", "widths": [8, 6], "activation": "maxmin",
                               **cfg_keys})
    torch.manual_seed(3)
    model = build_plain_model(cfg, 64, 10).eval()
    run = tmp_path / "r"
    run.mkdir()
    save_run(run, cfg, model)
    return run, model


def test_run_folder_through_the_training_layer(tmp_path):
    from lipkit.training.runs import RunError, load_run, load_run_model

    run, model = _write_run(tmp_path)
    with pytest.raises(ModelLoadError, match="is a folder"):
        load_model(run)  # estimation does not read run folders (it would import the trainer)
    loaded = load_run_model(run)
    assert loaded.input_shape == (64,)
    x = torch.randn(9, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert load_model(loaded) is loaded  # a module passes through
    est = estimate(loaded, 2, "lipsdp", lower_kwargs={"n_starts": 4, "steps": 10})
    # MaxMin is lowered to comparators (ReLU + identity neurons): LipSDP runs and beats the product of norms
    assert est.method == "lipsdp", est.details
    assert 0 < est.lower <= est.upper <= naive_upper(model, 2)
    # load_run: the same weights, plus the data split the config names
    cfg, same, split = load_run(run)
    assert cfg.widths == [8, 6] and split.num_features == 64
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    (run / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(RunError, match="not a readable safetensors"):
        load_run_model(run)
    (run / "config.json").write_text("{")
    with pytest.raises(RunError, match="not valid JSON"):
        load_run_model(run)
    (run / "config.json").unlink()
    with pytest.raises(RunError, match="has no config.json"):
        load_run_model(run)
    with pytest.raises(RunError, match="does not exist"):
        load_run_model(tmp_path / "missing")


def test_run_folder_of_another_config_is_refused(tmp_path):
    from lipkit.training.config import RunConfig
    from lipkit.training.runs import RunError, load_run_model

    run, _ = _write_run(tmp_path)
    (run / "config.json").write_text(RunConfig(widths=[16, 6]).to_json())
    with pytest.raises(RunError, match="does not hold the weights of the run's config"):
        load_run_model(run)
