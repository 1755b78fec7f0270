"""Training plans: which adapters to train, on which taps, with which hyper-parameters.

A plan is a list of :class:`AdapterSpec`, each with a readable unique name that encodes kind, tap
and hyper-parameters (``inca.block.7.lr3e-4``). Plans are written as one line:

    "inca taps=block.* lr=1e-3,3e-4; linear taps=block.*[-3:]"

Entries are separated by ``;``. Each starts with an adapter kind, then ``key=value`` options;
comma-separated values are swept (every combination becomes an adapter). ``taps`` takes tap
names or globs, each optionally followed by a Python slice over its matches in depth order
(``block.*[-3:]`` = the last three blocks); default: every tap. Taps joined by ``+`` make one
multi-tap adapter reading all of them at once (``taps=block.5+block.8``,
``taps=block.*[-2:]+block.5``; attention adapters only). ``lr`` and ``wd`` set the optimiser;
every other key is an option of the adapter kind (``queries``, ``heads``, ``pool``...).

``heads`` may be relative to the width: ``heads=D/64,D/32`` resolves on each tap to the divisor
of its token width D (a group's common width; the entry's ``dim`` when it sets one) nearest
D/64 resp. D/32, at least 1; a value whose count an earlier value of the sweep already took
moves up to the next divisor (width 32: heads 1 and 2; 384: 6 and 12; 1024: 16 and 32). Names
carry the resolved count (``inca.block.5.lr1e-3.heads6``). A literal ``heads=6`` is kept as
written (and must divide the width).
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from inca.adapters import AdapterConfig, adapter_config
from inca.adapters.tap_groups import SEP, group_width, is_group, join_taps, tap_parts
from inca.errors import IncaError
from inca.methods.inca import DEFAULT_PLAN
from inca.methods.inca.adapter import nearest_divisor

if TYPE_CHECKING:
    from inca.backbones.base import TapInfo

_SLICE = re.compile(r"^(?P<glob>[^\[\]]+)\[(?P<slice>-?\d*(?::-?\d*){0,2})\]$")
_PER_WIDTH = re.compile(r"^D/(?P<per>\d+)$", re.IGNORECASE)  # heads=D/64: one per 64 channels


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter of a plan."""

    name: str
    kind: str
    tap: str  # one tap, or a group "block.5+block.8" (``inca.adapters.tap_groups``)
    config: AdapterConfig
    lr: float
    weight_decay: float

    @property
    def solved(self) -> bool:
        return self.config.solved

    @property
    def taps(self) -> list[str]:
        """The single taps this adapter reads (one, or a group's)."""
        return tap_parts(self.tap)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "tap": self.tap,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "config": self.config.to_dict(),
        }


def compact(value: Any) -> str:
    """Short text for a name: 0.0003 -> 3e-4, 1.5 -> 1.5, 4 -> 4, 'cls+mean' -> cls+mean."""
    if isinstance(value, float):
        mantissa, exponent = f"{value:e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        short = f"{mantissa}e{int(exponent)}"
        return short if len(short) < len(f"{value:g}") else f"{value:g}"
    return str(value)


def parse_value(text: str) -> Any:
    """'3' -> 3, '1e-3' -> 0.001, 'true' -> True, 'none' -> None, anything else: the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def select_taps(selector: str, taps: Sequence[str]) -> list[str]:
    """Taps (in depth order) matching comma-separated names/globs, each with an optional slice;
    an item of parts joined by ``+`` gives one tap group of all their matches."""
    chosen: list[str] = []
    for item in selector.split(","):
        item = item.strip()
        if SEP in item:
            parts = [t for part in item.split(SEP) for t in _match(part.strip(), taps)]
            found = [join_taps(parts, taps)]
            if len(set(parts)) < 2:
                raise IncaError(f"plan: tap group {item!r} names one tap; join two or more")
        else:
            found = _match(item, taps)
        chosen += [t for t in found if t not in chosen]
    return chosen


def _match(item: str, taps: Sequence[str]) -> list[str]:
    """The taps one name/glob with an optional slice matches, in depth order."""
    m = _SLICE.match(item)
    glob, sl = (m["glob"], m["slice"]) if m else (item, None)
    found = [t for t in taps if fnmatch.fnmatchcase(t, glob)]
    if sl is not None:
        parts = [int(p) if p else None for p in sl.split(":")]
        if len(parts) == 3 and parts[2] == 0:
            raise IncaError(f"plan: the slice of {item!r} has step 0; use a step of 1 or more")
        if ":" in sl:
            found = found[slice(*parts)]
        else:
            found = found[parts[0] : parts[0] + 1 or None]  # one index, as a slice
    if not found:
        raise IncaError(f"plan: taps {item!r} match no tap; taps: {', '.join(taps)}")
    return found


def numbers(text: str, key: str, entry: str, positive: bool) -> list[float]:
    """A swept optimiser value: finite numbers, > 0 (``positive``: a learning rate) or >= 0."""
    out = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise IncaError(f"plan: {key} takes numbers, got {item!r} in {entry!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "above 0" if positive else "0 or more"
            raise IncaError(
                f"plan: {key} must be a finite number {bound}, got {item!r} in {entry!r}"
            )
        out.append(value)
    return out


def _split_entry(entry: str) -> tuple[str, dict[str, list[str]]]:
    words = entry.split()
    kind, options = words[0], {}
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq or not value:
            raise IncaError(f"plan: expected key=value, got {word!r} in {entry!r}")
        if key in options:
            raise IncaError(f"plan: {key!r} given twice in {entry!r}")
        options[key] = value
    return kind, options


def width_heads(values: Sequence[Any], width: int) -> list[Any]:
    """A sweep's ``heads`` values on tokens of width ``width``: each ``D/k`` becomes the
    divisor of the width nearest width/k (at least 1), moved up to the next divisor while an
    earlier value of the sweep has its count; literals stay as written.
    ``["D/64", "D/32"]``: 32 -> [1, 2], 384 -> [6, 12], 1280 -> [20, 40]."""
    divisors = [k for k in range(1, width + 1) if width % k == 0]
    out: list[Any] = []
    for value in values:
        m = _PER_WIDTH.match(value) if isinstance(value, str) else None
        if m:
            i = divisors.index(nearest_divisor(width, width / int(m["per"])))
            while divisors[i] in out and i + 1 < len(divisors):
                i += 1
            value = divisors[i]
        out.append(value)
    return out


def _per_width(value: Any) -> bool:
    return isinstance(value, str) and _PER_WIDTH.match(value) is not None


def _check_per_width(swept: dict[str, list[Any]], entry: str) -> None:
    """``D/k`` only for ``heads``, with k >= 1."""
    for key, values in swept.items():
        for value in filter(_per_width, values):
            if key != "heads":
                raise IncaError(
                    f"plan: only heads takes a width-relative value (heads=D/64), got "
                    f"{key}={value} in {entry!r}"
                )
            if int(_PER_WIDTH.match(value)["per"]) < 1:
                raise IncaError(f"plan: heads={value} divides by 0 in {entry!r}; e.g. D/64")


def _resolve_heads(
    opts: dict[str, Any],
    swept: dict[str, list[Any]],
    tap: str,
    widths: Mapping[str, int] | None,
    entry: str,
) -> dict[str, Any]:
    """``opts`` with a width-relative ``heads`` resolved for ``tap`` (see ``width_heads``)."""
    if not _per_width(opts.get("heads")):
        return opts
    if widths is None:
        raise IncaError(
            f"plan: heads={opts['heads']} in {entry!r} is relative to the taps' widths; "
            "parse the plan with widths= (tap -> D), or give heads as numbers"
        )
    dim = opts.get("dim")
    width = dim if isinstance(dim, int) else group_width(tap, widths, "plan: ")
    counts = width_heads(swept["heads"], width)
    return opts | {"heads": counts[swept["heads"].index(opts["heads"])]}


POOL_ORDER = ("cls", "mean", "max")


def default_plan_for(plan: str, prefix_tokens: int) -> str:
    """``plan`` as it runs on a backbone with ``prefix_tokens`` prefix tokens. The default
    plans' linear probes read CLS features (``pool=cls+mean``), which a backbone without a CLS
    token (a CNN's maps) lacks: there a default plan's probes read the map's max instead
    (``mean+max``, the usual global pooling of a CNN). A plan a user wrote runs as written,
    and a CLS pool there is refused with what to use instead."""
    from inca.methods import list_methods

    defaults = {DEFAULT_PLAN} | {m.default_plan for m in list_methods() if m.default_plan}
    if prefix_tokens or plan not in defaults:
        return plan

    def without_cls(match: re.Match) -> str:
        pools = []
        for value in match.group(1).split(","):
            parts = {"max" if p == "cls" else p for p in value.split("+")}
            pools.append("+".join(p for p in POOL_ORDER if p in parts))
        return "pool=" + ",".join(dict.fromkeys(pools))

    return re.sub(r"pool=([\w+,]+)", without_cls, plan)


def parse_plan(
    text: str,
    taps: Sequence[str] | Mapping[str, TapInfo],
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    widths: Mapping[str, int] | None = None,
) -> list[AdapterSpec]:
    """The adapters a plan line asks for, over the backbone's ``taps`` (in depth order): tap
    names, or ``backbone.taps`` itself (name -> TapInfo), whose widths then resolve
    width-relative values (``heads=D/64``). ``widths``: tap -> token width D, for names."""
    if isinstance(taps, Mapping):
        widths = widths or {t: info.dim for t, info in taps.items()}
    taps = list(taps)
    specs: list[AdapterSpec] = []
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        kind, options = _split_entry(entry)
        wd_given = "wd" in options
        tap_list = select_taps(options.pop("taps", "*"), taps)
        lrs = numbers(options.pop("lr", str(lr)), "lr", entry, positive=True)
        wds = numbers(options.pop("wd", str(weight_decay)), "wd", entry, positive=False)
        swept = {k: [parse_value(v) for v in vs.split(",")] for k, vs in options.items()}
        _check_per_width(swept, entry)
        for tap, lr_, wd, combo in itertools.product(
            tap_list, lrs, wds, itertools.product(*swept.values())
        ):
            opts = dict(zip(swept, combo, strict=True))
            opts = _resolve_heads(opts, swept, tap, widths, entry)
            config = adapter_config(kind, opts)
            if is_group(tap) and not config.multi_tap:
                raise IncaError(
                    f"plan: {kind} adapters read one tap, not the group {tap!r}; tap groups "
                    "are for attention adapters (inca)"
                )
            solved = config.solved  # fitted by a solver: no lr or wd of its own
            name = ".".join(
                [kind, tap]
                + ([] if solved else [f"lr{compact(lr_)}"])
                + ([f"wd{compact(wd)}"] if wd_given and not solved else [])
                + [f"{k}{compact(v)}" for k, v in opts.items() if k != "solver"]
            )
            if solved and any(s.name == name for s in specs):
                continue  # an lr or wd sweep means nothing to a solver: one fit is enough
            specs.append(AdapterSpec(name, kind, tap, config, lr_, wd))
    if not specs:
        raise IncaError(f"plan {text!r} has no adapters; e.g. {DEFAULT_PLAN!r}")
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise IncaError(f"plan: adapter {s.name!r} appears twice; remove the duplicate")
        seen.add(s.name)
    return specs


@dataclass(frozen=True)
class SweepPlan:
    """The plan of a method trained from pixels, in the same grammar as adapter plans:
    ``full lr=2e-5,5e-5 layer_decay=0.75`` or ``vqt lr=1e-3,1e-2 queries=2``. ``lr`` is swept
    (default: the method's ``default_lrs``); every other key is a field of the method's config
    (``wd`` stands for ``weight_decay``, as in adapter plans), one value each."""

    method: str
    lrs: tuple[float, ...]
    options: dict[str, Any]  # the config fields the plan gives, besides lr
    lrs_given: bool = False  # False: ``lrs`` are the method's defaults

    def config(self) -> Any:
        """The method's config at the first rate (the sweep's base)."""
        from inca.methods.pixel_config import finetune_config

        return finetune_config(self.method, **self.options, lr=self.lrs[0])


def plan_method(text: str) -> str:
    """The registered method a plan's first entry names (its adapter kind, or a method trained
    from pixels)."""
    from inca.methods import get_method

    first = next((e.split()[0] for e in text.split(";") if e.strip()), "")
    return get_method(first).name if first else ""


def parse_sweep_plan(text: str) -> SweepPlan:
    """A pixel method's plan: one entry, only ``lr`` swept."""
    from inca.methods import get_method
    from inca.methods.pixel_config import finetune_config

    entries = [e.strip() for e in text.split(";") if e.strip()]
    if len(entries) != 1:
        raise IncaError(
            f"plan {text!r}: a method trained from pixels takes one entry, e.g. "
            '"full lr=2e-5,5e-5 layer_decay=0.75"; train adapter plans in their own run'
        )
    name, raw = _split_entry(entries[0])
    method = get_method(name)
    if method.from_tokens:
        raise IncaError(f"plan {text!r}: {name} reads frozen taps; it is an adapter plan")
    lrs = tuple(numbers(raw.pop("lr"), "lr", text, positive=True)) if "lr" in raw else ()
    texts = {f.name for f in fields(method.config) if f.type in ("str", str)}
    options = {}
    for key, value in raw.items():
        if "," in value and key not in texts:  # a text option may hold commas ("0:0,11:4")
            raise IncaError(
                f"plan {text!r}: only lr is swept for {name} (its rates share a run); give "
                f"{key} one value, and write other values as their own plans"
            )
        options["weight_decay" if key == "wd" else key] = (
            value if key in texts else parse_value(value)
        )
    plan = SweepPlan(name, lrs or tuple(method.default_lrs), options, lrs_given=bool(lrs))
    finetune_config(name, **options)  # unknown fields and bad values fail here, by name
    return plan
