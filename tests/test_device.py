from __future__ import annotations

import pytest
import torch

from inca.device import Precision, resolve_device, resolve_precision
from inca.errors import IncaError


def test_auto_device_and_precision() -> None:
    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_precision("auto", dev) in {"bf16", "fp32", "amp-fp16"}


def test_cpu_auto_precision_follows_the_hardware(monkeypatch) -> None:
    import inca.device as d

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
