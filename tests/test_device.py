from __future__ import annotations

import pytest
import torch

from inca.errors import IncaError
from inca.utils.device import Precision, resolve_device, resolve_precision


def test_auto_device_and_precision(monkeypatch) -> None:
    import inca.utils.device as d

    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) == "amp-fp16"  # older GPUs
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(d, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision(None, torch.device("cpu")) == "fp32"


def test_cpu_auto_precision_follows_the_hardware(monkeypatch) -> None:
    import inca.utils.device as d

    monkeypatch.setattr(d, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(d, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_precision_dtypes() -> None:
    cpu = torch.device("cpu")
    p = Precision.resolve("amp-bf16", cpu)
    assert p.weight_dtype == torch.float32 and p.autocast_dtype == torch.bfloat16
    with p.autocast():
        assert torch.is_autocast_enabled("cpu")
    assert Precision.resolve("bf16", cpu).weight_dtype == torch.bfloat16


def test_bad_precision_and_device() -> None:
    with pytest.raises(IncaError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(IncaError, match="needs a CUDA device"):
        resolve_precision("amp-fp16", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(IncaError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    "precision, compute",
    [("fp32", torch.float32), ("bf16", torch.bfloat16), ("amp-bf16", torch.bfloat16)],
)
def test_fine_tuning_trains_and_serves_at_the_users_precision(monkeypatch, precision, compute):
    """Autocast is Precision's decision alone: on bf16 hardware ``--precision fp32`` fine-tunes
    in fp32 (it used to train under bf16 autocast whatever the user asked), and the saved task
    serves in the dtype it trained in."""
    import inca
    import inca.utils.device as d
    from inca.methods.pixel_config import build_model, finetune_config
    from inca.tasks.finetuned import FineTunedTask
    from inca.train.pixel_members import ModelMembers

    monkeypatch.setattr(d, "cpu_has_native_bf16", lambda: True)  # bf16 hardware
    backbone = inca.load_backbone("tiny-vit", precision=precision, device="cpu")
    model = build_model(backbone, 3, finetune_config(method="full"))
    members = ModelMembers(model, ["m"], backbone.precision)
    seen = []
    linear = next(m for m in model.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    pixels = torch.randn(2, 3, 32, 32)
    members.train().forward_batch(pixels)["m"].sum().backward()
    task = FineTunedTask("t", "full", backbone.identity(), list("abc"), model.config,
                         model.changed_state())  # fmt: skip
    task._model = model  # serve this very model
    task.predict_pixels(pixels, backbone)
    assert seen == [compute, compute]  # training step, then serving
