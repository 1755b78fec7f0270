"""`inca compare`: InCA against linear probing, fine-tuning, LoRA, StochCA and VQT, in one
harness, on the user's data.

Every method sees the same data, preprocessing, splits and selection rule (best on validation;
test once), and each runs as its own literature runs it. Fine-tuning methods (and VQT, which
needs the backbone every step) get an epoch budget and a small learning-rate sweep chosen on
validation. Frozen-feature methods (the linear probe, InCA) train from one activation cache
until validation stops improving: their epochs cost a few percent of a backbone pass, so a
fixed few epochs would under-train them. Both run by the main job's recipe (its plan, taps,
budget, halving, patience and selection): the ``inca`` rows are the main job's best adapter and
ensemble, the ``linear`` row its reference probe. Their reported cost includes building the
cache. Each method runs in its own process (its own peak memory) and writes
``<out>/<method>/result.json``: a finished method is never rerun while the options it was run
with are unchanged.

    inca compare --methods linear,inca,vqt,partial,lora,full,stochca --out runs/compare
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inca.errors import IncaError
from inca.methods import get_method
from inca.recipes.compare_options import CompareOptions
from inca.recipes.method_run import COMMON, method_options, plan_of, run_method
from inca.train.budget import PATIENCE_MAX_EPOCHS
from inca.utils.distributed import on_main, world
from inca.utils.io import write_json
from inca.utils.process import FreshProcessError, run_fresh
from inca.utils.run_lock import exclusive

if TYPE_CHECKING:
    from inca.backbones.base import TapInfo


def cache_taps(
    methods: list[str], options: CompareOptions, taps: Mapping[str, TapInfo]
) -> list[str]:
    """Every tap any frozen-feature method of the comparison reads: their one shared cache.
    ``taps``: the backbone's (name -> TapInfo; their widths resolve ``heads=D/64``)."""
    from inca.train.plan import parse_plan

    wanted = {t for m in methods if get_method(m).from_tokens
              for s in parse_plan(plan_of(m, options), taps) for t in s.taps}  # fmt: skip
    return [t for t in taps if t in wanted]


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for m in methods:
        get_method(m)  # an unknown name is an error naming the registered ones
    return methods


def compare(
    methods: list[str], options: CompareOptions, out: str | Path, in_process: bool = False
) -> dict[str, Any]:
    """Run each method (skipping finished ones), then write compare.json and the report."""
    out = Path(out)
    with exclusive(out, "comparison"):
        return _compare(methods, options, out, in_process)


def _compare(
    methods: list[str], options: CompareOptions, out: Path, in_process: bool
) -> dict[str, Any]:
    if options.image_size == "auto":  # one choice for every method, saved in options.json
        options = replace(options, image_size=options.resolved_image_size())
    saved = out / "options.json"
    if saved.exists():  # results made on other data or backbone must not be mixed in
        before = json.loads(saved.read_text())
        now = json.loads(json.dumps(options.to_dict()))
        diff = sorted(k for k in COMMON if before.get(k) != now.get(k))
        if diff:
            raise IncaError(
                f"{out} holds a comparison made with other options "
                f"({', '.join(diff)} differ); use the same options or another --out"
            )
    if options.cache_taps is None and any(get_method(m).from_tokens for m in methods):
        from inca.backbones import load_backbone

        taps = load_backbone(options.model, image_size=options.image_size).taps
        options = replace(options, cache_taps=tuple(cache_taps(methods, options, taps)))
    w = world()
    if w.is_main:
        write_json(saved, options.to_dict())
    for method in methods:
        result_file = out / method / "result.json"
        if on_main(lambda m=method: finished(m, options, out, saved)):  # rank 0 decides
            continue
        print(f"== {method} ==")
        if in_process or w.distributed:  # under torchrun every rank runs it, in step
            result = run_method(method, options, out / method)
            if w.is_main:
                write_json(result_file, result)
        else:  # its own process: its own peak memory
            try:
                run_fresh("inca.recipes.compare:method_in_child", method, str(saved),
                          str(out / method), stream=True)  # fmt: skip
            except FreshProcessError as e:
                raise IncaError(
                    f"method {method} failed (exit {e.returncode}); fix the error above and "
                    "rerun: finished methods are kept"
                ) from None
    if not w.is_main:
        return {}  # rank 0 writes the comparison
    rows = [r for m in methods for r in json.loads((out / m / "result.json").read_text())["rows"]]
    frozen = options.to_dict().get("frozen") or {}
    summary = {
        "options": options.to_dict(),
        "budget": (
            f"fine-tuning and VQT: {options.train.epochs} epochs; frozen-feature methods: "
            f"from the activation cache until {frozen.get('patience', 0)} optimizer steps (at "
            f"most {PATIENCE_MAX_EPOCHS} epochs) pass without a better validation "
            f"{frozen.get('metric', 'accuracy')} or a 1% lower validation loss (at most "
            f"{frozen.get('epochs', '?')} epochs, more on small sets: --min-steps)"
        ),
        "rows": rows,
    }
    write_json(out / "compare.json", summary)
    from inca.report.compare import write_compare_report

    write_compare_report(summary, out)
    return summary


def finished(method: str, options: CompareOptions, out: Path, saved: Path) -> bool:
    """Whether ``method`` finished before with these options (then it is not rerun); a result
    made with other options is moved aside, to be run again."""
    result_file = out / method / "result.json"
    if not result_file.exists():
        return False
    done = json.loads(result_file.read_text())
    made_with = done.get("options") or legacy_options(method, json.loads(saved.read_text()))
    now = method_options(method, options)
    if made_with == now or same_adapters(made_with, now, options):
        print(f"{method}: done before, not rerun ({result_file})")
        return True
    kept = out / f"{method}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / method).rename(kept)  # its run directory would refuse the new options
    print(f"{method}: done before with other options (kept in {kept}); running it again")
    return False


def same_adapters(before: dict[str, Any], now: dict[str, Any], options: CompareOptions) -> bool:
    """Whether two frozen-feature plans differing only in their text ask for the same adapters
    on this backbone: a result made with the old default ``heads=6,12`` stands for the new
    ``heads=D/64,D/32`` on a 384-wide backbone (both are heads 6 and 12 there)."""
    if {k for k in before.keys() | now.keys() if before.get(k) != now.get(k)} != {"plan"}:
        return False
    from inca.backbones import load_backbone
    from inca.train.plan import parse_plan

    taps = load_backbone(options.model, image_size=options.image_size).taps
    try:
        plans = [[s.to_dict() for s in parse_plan(o["plan"], taps)] for o in (before, now)]
    except IncaError:  # "legacy", or a plan this backbone cannot read
        return False
    return plans[0] == plans[1]


def legacy_options(method: str, saved: dict[str, Any]) -> dict[str, Any]:
    """What a result written before results recorded their options was made with: the old
    options.json, whose one "train" budget every method shared."""
    legacy = dict(saved)
    if get_method(method).from_tokens:
        legacy["frozen"] = saved.get("train")  # the old shared epoch budget
        legacy.pop("plans", None)
        return json.loads(json.dumps(method_options(method, legacy) | {"plan": "legacy"}))
    return method_options(method, legacy)


def method_in_child(method: str, options_file: str, out: str) -> None:
    """What a method's own process runs: the typed options read back from the options.json
    just saved, the method run, its result.json written."""
    options = CompareOptions.from_dict(json.loads(Path(options_file).read_text()))
    write_json(Path(out) / "result.json", run_method(method, options, Path(out)))
