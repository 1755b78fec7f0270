"""A convolutional backbone end to end: its stages' maps are taps of different token counts
and widths (EfficientNet-Lite0 with random weights, 32 px: 16x16 tokens of 16 channels down to
1x1 of 320). The cache, one-to-many training from it, a task and the stacked serving path
must work on it unchanged, and give what each part gives alone."""

from __future__ import annotations

import pytest
import torch

import inca.backbones.efficientnet_lite as eff
from inca.adapters.base import stack_taps
from inca.adapters.tap_batch import TapBatch
from inca.cache import ActivationCache, build_cache
from inca.data import ImageTransform, make_splits
from inca.tasks import MultiTask, Task
from inca.train import TrainConfig, adapter_trainer, parse_plan
from inca.train.plan import DEFAULT_PLAN, default_plan_for

TAPS = ["block.1", "block.3", "block.4", "block.15"]  # 24, 40, 40 and 320 channels


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = eff.EfficientNetLite()
    for m in model.modules():  # random BatchNorm statistics: no layer is an identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    backbone = eff.efficientnet_backbone(model, image_size=32, device="cpu", precision="fp32")
    splits = make_splits("digits", train_size=80, val_size=40, test_size=40, seed=0)
    return backbone, splits


def test_a_cnns_cache_holds_its_online_tokens(setup, tmp_path) -> None:
    backbone, splits = setup
    shapes = {t: (backbone.taps[t].tokens, backbone.taps[t].dim) for t in TAPS}
    assert len(set(shapes.values())) == 4 - 1  # block.4 and block.5 share a shape
    directory = build_cache(backbone, splits.train, TAPS, tmp_path / "c", dtype="float32",
                            batch_size=32, workers=0, progress=False)  # fmt: skip
    cache = ActivationCache(directory)
    positions = torch.tensor([3, 0, 41])
    got = cache.read(positions, TAPS)
    assert isinstance(got, TapBatch) and got.shapes() == [shapes[t] for t in TAPS]
    transform = ImageTransform(backbone.preprocess)
    ds, idx = splits.train.dataset, splits.train.indices
    pixels = torch.stack([transform(ds.load(int(idx[p]))) for p in positions])
    online = stack_taps(backbone.forward_taps(pixels, TAPS), TAPS, normalize=True)
    for i in range(len(TAPS)):
        torch.testing.assert_close(got[i], online[i], rtol=0, atol=1e-5)


def test_the_default_grid_trains_from_a_cnns_cache_and_serves(setup, tmp_path) -> None:
    """The default plan, fitted to a map without a CLS token, trains one-to-many from the
    cache; a task of its adapters on three tap shapes serves as each alone."""
    backbone, splits = setup
    plan = default_plan_for(DEFAULT_PLAN, backbone.num_prefix_tokens).split(";")[0]
    plan = plan.replace("taps=block.*[1::2]", "taps=block.1,block.3,block.4")
    specs = parse_plan(plan, backbone.taps)  # block.3 and block.4: one shape, one grid
    specs += parse_plan("linear taps=block.4,block.15 pool=mean+max", backbone.taps)
    caches = {
        split: ActivationCache(build_cache(backbone, getattr(splits, split), TAPS, tmp_path / split,
                               dtype="float32", workers=0, progress=False))
        for split in ("train", "val")
    }  # fmt: skip
    cfg = TrainConfig(epochs=1, batch_size=40, workers=0, progress=False, augment=False)
    trainer = adapter_trainer(backbone, splits, specs, cfg, tmp_path / "run", {}, caches)
    trainer.fit()
    assert set(trainer.progress.best_acc) == {s.name for s in specs}
    pick = [("inca", "block.1"), ("inca", "block.4"), ("linear", "block.15")]
    names = [next(s.name for s in specs if (s.kind, s.tap) == p) for p in pick]
    members = [(n, trainer.members.specs[n].tap, trainer.members.export_adapter(n)) for n in names]
    task = Task.from_adapters("cnn", "ensemble", backbone, splits.class_names, members)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        alone = task(backbone.forward_taps(x, task.taps))
    assert len({(backbone.taps[t].tokens, backbone.taps[t].dim) for t in task.taps}) == 3
    served = MultiTask([task], backbone=backbone).predict_proba(x)["cnn"]
    torch.testing.assert_close(served, alone, rtol=1e-5, atol=1e-5)


def test_a_bf16_cnns_cost_is_counted() -> None:
    """``--image-size auto`` weighs each size by the backbone's FLOPs: a bf16 CNN counts too."""
    from inca.backbones.cost import gflops_per_image

    def at(size: int) -> float:
        model = eff.EfficientNetLite()
        return gflops_per_image(
            eff.efficientnet_backbone(model, image_size=size, device="cpu", precision="bf16")
        )

    assert 0 < at(32) < at(64)
