"""What a comparison is run with, typed: ``CompareOptions``, saved resolved as ``options.json``
in the comparison's directory and handed, as that JSON, to each method's process.

Its JSON keeps the shape comparisons have always saved (the fine-tuning budget under
``"train"``, the frozen-feature budget under ``"frozen"``), so a comparison made before this
class existed still resumes, and its finished methods are reused."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

from inca.errors import IncaError
from inca.recipes.data_options import DATA_FIELDS, DataOptions
from inca.train.config import TrainConfig
from inca.train.plan import SweepPlan, parse_sweep_plan


@dataclass(frozen=True)
class CompareOptions(DataOptions):
    """The shared ``DataOptions`` (backbone, data, sizes: what every method shares), and
    train: the fine-tuning methods' budget; frozen: the frozen-feature methods' (from the
    cache, to patience); plans: a plan per method replacing its default ({"full": "full
    lr=1e-5,3e-5 layer_decay=0.8", "inca": "inca taps=block.5"}); cache: the shared activation
    cache (None: beside the methods); cache_taps: what it holds (None: what the plans read)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    frozen: TrainConfig | None = None
    plans: dict[str, str] = field(default_factory=dict)
    cache: str | None = None
    cache_taps: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Every plan of a method trained from pixels is parsed here (a bad field or value
        fails before any work); methods then read ``sweep_plan``, not the text."""
        for method in self.plans:
            self.sweep_plan(method)

    def sweep_plan(self, method: str) -> SweepPlan | None:
        """The parsed plan of ``method`` when it trains from pixels (the one given, else its
        defaults); None for a method reading frozen taps (its plan needs the backbone's taps).
        Each plan text is parsed once per process."""
        from inca.methods import get_method

        if get_method(method).from_tokens:
            return None
        return _parsed(self.plans.get(method) or method)

    def to_dict(self) -> dict[str, Any]:
        """The options.json form (keys that are empty are left out, as before)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in DATA_FIELDS[:6]}
        out["train"] = self.train.to_options()
        if self.frozen is not None:
            out["frozen"] = self.frozen.to_options()
        out |= {"precision": self.precision, "device": self.device}
        if self.plans:
            out["plans"] = dict(self.plans)
        if self.cache is not None:
            out["cache"] = self.cache
        if self.cache_taps is not None:
            out["cache_taps"] = list(self.cache_taps)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareOptions:
        """From options.json (or a method process's argument). Comparisons saved before plans
        covered every method kept ``lrs`` and ``finetune`` apart: they become plans."""
        data = dict(data)
        plans = dict(data.pop("plans", None) or {})
        plans |= legacy_plans(data.pop("lrs", None) or {}, data.pop("finetune", None) or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise IncaError(
                f"comparison options: unknown field(s) {unknown}; valid: {sorted(known)}"
            )
        for key in ("train", "frozen"):
            if isinstance(data.get(key), dict):
                data[key] = TrainConfig(**data[key])
        if data.get("cache_taps") is not None:
            data["cache_taps"] = tuple(data["cache_taps"])
        return cls(**data, plans=plans)


@lru_cache(maxsize=64)
def _parsed(text: str) -> SweepPlan:
    return parse_sweep_plan(text)


def legacy_plans(lrs: dict[str, list[float]], finetune: dict[str, Any]) -> dict[str, str]:
    """--lrs "full=1e-5,3e-5" and --finetune "layer_decay=0.8 lora_r=4" (shared by every
    method, each taking the fields it has), as one plan per method."""
    from inca.methods import list_methods
    from inca.methods.pixel_config import field_names

    plans = {}
    for method in list_methods("pixels"):
        own = {k: v for k, v in finetune.items() if k in field_names(method.config)}
        rates = lrs.get(method.name)
        if own or rates:
            words = [method.name] + ([f"lr={','.join(f'{r:g}' for r in rates)}"] if rates else [])
            plans[method.name] = " ".join(words + [f"{k}={v}" for k, v in own.items()])
    return plans
