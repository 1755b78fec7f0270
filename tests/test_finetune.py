"""Fine-tuning baselines: only the intended weights change; saved tasks reload to the same
outputs; MultiTask serves them beside adapter tasks (on their own pass)."""

from __future__ import annotations

import pytest
import torch

import inca
from inca.adapters import adapter_config, build_adapter
from inca.errors import IncaError
from inca.methods.pixel_config import finetune_config
from inca.tasks import MultiTask, Task, load_task
from inca.tasks.finetuned import FineTunedTask
from tests.conftest import fine_tune_tiny

pytestmark = pytest.mark.integration  # trains end to end: the full tier


@pytest.fixture(scope="module")
def setup(tiny_setup):
    return tiny_setup


def train(setup, tmp_path, **options):
    return fine_tune_tiny(setup, tmp_path, **options)


def changed(model, backbone) -> set[str]:
    """Backbone weights the fine-tuned copy no longer shares with the frozen original."""
    frozen = backbone.model.state_dict()
    tuned = {
        k.replace(".base_layer", ""): v
        for k, v in model.base().state_dict().items()
        if "lora_" not in k
    }  # peft keeps the wrapped weight as <module>.base_layer
    return {k for k, v in frozen.items() if not torch.equal(tuned[k].float(), v.float())}


def test_full_changes_every_used_weight(setup, tmp_path) -> None:
    model, record = train(setup, tmp_path, method="full")
    names = changed(model, setup[0])
    assert "encoder.layer.0.attention.q_proj.weight" in names and "layernorm.weight" in names
    assert record["trainable_params"] == setup[0].num_params + model.head.weight.numel() + 10


def test_partial_changes_only_the_last_blocks(setup, tmp_path) -> None:
    model, _ = train(setup, tmp_path, method="partial", blocks=2)
    names = changed(model, setup[0])
    assert names and all(k.startswith(("encoder.layer.2.", "encoder.layer.3.", "layernorm."))
                         for k in names)  # fmt: skip
    assert any(k.startswith("encoder.layer.2.") for k in names)


def test_lora_changes_no_backbone_weight(setup, tmp_path) -> None:
    model, record = train(setup, tmp_path, method="lora", lora_r=2)
    assert changed(model, setup[0]) == set()
    lora = {k: v for k, v in model.changed_state().items() if "lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values())  # B starts at zero
    assert record["trainable_params"] < setup[0].num_params / 4


@pytest.mark.parametrize("method", ["full", "partial", "lora", "stochca", "vqt"])
def test_saved_task_reloads_to_the_same_outputs(setup, tmp_path, method) -> None:
    backbone, splits = setup
    model, record = train(setup, tmp_path / "train", method=method)
    task = FineTunedTask(
        "digits-" + method,
        method,
        backbone.identity(),
        splits.class_names,
        model.config,
        model.changed_state(),
        metrics=record,
    )
    task.save(tmp_path / "task")
    loaded = load_task(tmp_path / "task")
    assert isinstance(loaded, FineTunedTask) and loaded.config == model.config
    pixels = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        expected = model(pixels).softmax(-1)
    torch.testing.assert_close(loaded.predict_pixels(pixels, backbone), expected)
    stored = sum(v.numel() for v in loaded.state.values())
    if method in ("lora", "vqt"):
        assert stored < backbone.num_params / 4  # the LoRA matrices / queries, and the head
    assert loaded.changes_backbone == (method != "vqt")


def test_multitask_runs_fine_tuned_tasks_on_their_own_pass(setup, tmp_path, capsys) -> None:
    backbone, splits = setup
    model, _ = train(setup, tmp_path / "ft", method="lora")
    tuned = FineTunedTask(
        "tuned",
        "lora",
        backbone.identity(),
        splits.class_names,
        model.config,
        model.changed_state(),
    )
    adapter = build_adapter(adapter_config("linear"), 32, len(splits.class_names))
    plain = Task.from_adapters(
        "probe", "linear", backbone, splits.class_names, [("probe", "final", adapter)]
    )
    vqt, _ = train(setup, tmp_path / "vqt", method="vqt")
    queries = FineTunedTask(
        "vqt", "vqt", backbone.identity(), splits.class_names, vqt.config, vqt.changed_state()
    )
    multi = MultiTask([plain, tuned, queries], backbone=backbone)
    said = capsys.readouterr().out
    assert "'tuned' changes the backbone" in said
    assert "'vqt' reads its query tokens inside every block: it runs its own pass" in said
    pixels = torch.randn(2, 3, 32, 32)
    out = multi.predict_proba(pixels)
    torch.testing.assert_close(out["tuned"], tuned.predict_pixels(pixels, backbone))
    torch.testing.assert_close(out["vqt"], queries.predict_pixels(pixels, backbone))
    alone = MultiTask([plain], backbone=backbone).predict_proba(pixels)
    torch.testing.assert_close(out["probe"], alone["probe"])


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
