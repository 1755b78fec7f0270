"""What the main job is run with, typed: ``RunOptions``, saved resolved as ``run.json`` in the
run directory, so a run says exactly how it was made (and ``inca train`` and the comparison
hand the recipe one checked object, not eighteen keyword arguments)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from inca.errors import IncaError
from inca.recipes.data_options import DataOptions
from inca.train.config import TrainConfig
from inca.train.plan import DEFAULT_PLAN

SHARDS = ("data", "adapters")  # what torchrun ranks split: every batch, or the grid


@dataclass(frozen=True)
class RunOptions(DataOptions):
    """The main job: the shared ``DataOptions`` (backbone, data, sizes), and plan: the
    adapters (``inca.train.plan``); lr, weight_decay: for plan entries without their
    own; max_ensemble: the largest top-k tried; train: budget and schedule; cache: the
    activation-cache root (None: online, a backbone pass per epoch); cache_views: augmented
    views per training image; cache_dtype: auto, float16, bfloat16 or float32; seeds: repeats
    of the plan with other training seeds; cache_taps: taps cached beyond the plan's; shard:
    how torchrun ranks split the work, ``data`` (every batch) or ``adapters`` (the grid, each
    rank training its slice over the whole cache)."""

    plan: str = DEFAULT_PLAN
    lr: float = 1e-3
    weight_decay: float = 0.05
    max_ensemble: int = 10
    train: TrainConfig = field(default_factory=TrainConfig)
    cache: str | None = None
    cache_views: int = 1
    cache_dtype: str = "auto"
    seeds: int = 1
    cache_taps: tuple[str, ...] | None = None
    shard: str = "data"

    def __post_init__(self) -> None:
        if self.shard not in SHARDS:
            raise IncaError(f"shard must be one of {SHARDS}, got {self.shard!r}")
        if self.shard == "adapters" and self.cache is None:
            raise IncaError(
                "--shard adapters trains every rank's slice of the grid over the whole "
                "activation cache; give --cache DIR (or shard the data: leave --shard out)"
            )
        if self.seeds < 1:
            raise IncaError(f"seeds must be at least 1, got {self.seeds}")
        if self.cache_views < 1:
            raise IncaError(f"cache_views must be at least 1, got {self.cache_views}")
        if self.max_ensemble < 1:
            raise IncaError(f"max_ensemble must be at least 1, got {self.max_ensemble}")

    def to_dict(self) -> dict[str, Any]:
        """As JSON can hold it (what ``run.json`` stores)."""
        out = asdict(self)
        out["train"] = asdict(self.train)
        out["cache_taps"] = list(self.cache_taps) if self.cache_taps is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise IncaError(f"run options: unknown field(s) {unknown}; valid: {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("train"), dict):
            data["train"] = TrainConfig(**data["train"])
        if data.get("cache_taps") is not None:
            data["cache_taps"] = tuple(data["cache_taps"])
        return cls(**data)
