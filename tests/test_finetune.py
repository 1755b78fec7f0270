"""Fine-tuning configs: bad options are refused; configs of older inca load. (What training
changes, saved tasks and MultiTask are checked on the runs of tests/test_method_matrix.py.)"""

from __future__ import annotations

import pytest
import torch

import inca
from inca.errors import IncaError
from inca.methods.pixel_config import finetune_config


def test_bad_configs() -> None:
    with pytest.raises(IncaError, match="unknown fine-tuning method"):
        finetune_config(method="prompt")
    with pytest.raises(IncaError, match=r"full: unknown option\(s\) \['lora_r'\]"):
        finetune_config(method="full", lora_r=4)  # each method has only its own fields
    with pytest.raises(IncaError, match="layer_decay"):
        finetune_config(layer_decay=1.5)
    generic = inca.load_backbone(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), taps=["0"], image_size=8, precision="fp32"
    )
    from inca.methods.full.model import FineTuneModel

    with pytest.raises(IncaError, match="needs a Hugging Face transformer"):
        FineTuneModel(generic, 3, finetune_config())
    from inca.methods.vqt.model import VQTModel

    with pytest.raises(IncaError, match="VQT needs a Hugging Face transformer"):
        VQTModel(generic, 3, finetune_config(method="vqt"))
    with pytest.raises(IncaError, match="grad_checkpointing"):
        finetune_config(method="stochca", grad_checkpointing=True)
    with pytest.raises(IncaError, match="probability"):
        finetune_config(method="stochca", stochca_p=1.5)


def test_configs_of_older_inca_load_with_their_methods_fields() -> None:
    """task.json of inca before per-method configs stored every method's 17 fields."""
    from inca.methods.pixel_config import config_from_dict

    old = {"method": "lora", "lr": 1e-3, "head_lr": 1e-3, "weight_decay": 0.05,
           "layer_decay": 1.0, "blocks": 2, "lora_r": 4, "lora_alpha": 16.0, "lora_dropout": 0.0,
           "grad_checkpointing": False, "stochca_p": 0.1, "stochca_per_sample": False,
           "queries": 1, "layer_queries": "", "vqt_naive": False, "lasso_keep": 1.0,
           "lasso_strength": 1e-3}  # fmt: skip
    config = config_from_dict(old)
    assert config == finetune_config("lora", lr=1e-3, lora_r=4)
    assert "queries" not in config.to_dict() and config.to_dict()["method"] == "lora"
    assert config_from_dict(config.to_dict()) == config
