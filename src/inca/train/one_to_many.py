"""One-to-many training of an adapter plan: one backbone pass (or cache read) feeds every adapter.

The plan's adapters become one :class:`~inca.train.bank.AdapterBank` (the trainer's members) fed
by a :class:`~inca.train.batch_sources.TokenSource` of the taps they read; the
:class:`~inca.train.trainer.Trainer` runs it like any other method: one summed loss, one
backward, one fused AdamW step with parameter groups per stack of adapters sharing a shape, lr
and weight decay (AdamW is element-wise, so each adapter trains exactly as it would alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inca.backbones.base import Backbone
from inca.cache import ActivationCache
from inca.data import Splits
from inca.train.bank import AdapterBank
from inca.train.batch_sources import TokenSource, token_dtype
from inca.train.config import TrainConfig
from inca.train.grid_shard import my_slice
from inca.train.plan import AdapterSpec
from inca.train.trainer import Trainer
from inca.utils.distributed import world


def adapter_trainer(
    backbone: Backbone,
    splits: Splits,
    specs: list[AdapterSpec],
    config: TrainConfig,
    out_dir: str | Path,
    signature: dict[str, Any],
    caches: Mapping[str, ActivationCache] | None = None,
    shard_adapters: bool = False,
) -> Trainer:
    """A trainer of every adapter of ``specs`` on ``splits``, from ``caches`` where given
    (``shard_adapters``: of this torchrun rank's slice of them, over whole splits)."""
    grid = shard_adapters and world().distributed
    if grid:
        mine = set(my_slice([s.name for s in specs]))
        specs = [s for s in specs if s.name in mine]
    bank = AdapterBank(
        specs,
        backbone.taps,
        len(splits.class_names),
        backbone.num_prefix_tokens,
        seed=config.seed,
        token_dtype=token_dtype(backbone),
    ).to(backbone.device)
    source = TokenSource(backbone, splits, bank.taps, config, caches, sharded=not grid)
    return Trainer(
        bank, source, config, len(splits.train), out_dir, signature, backbone.device,
        num_val=len(splits.val), shard_adapters=grid,
    )  # fmt: skip
