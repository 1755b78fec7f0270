from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from inca.errors import IncaError
from inca.report import best_per_tap, plot_accuracy_by_layer, results_table, write_report

TAPS = ["embed", "block.0", "block.1", "block.2", "final"]
BACKBONE_PARAMS = 22_056_576


def adapter(kind: str, tap: str, lr: float, val: float, test: float, params: int) -> dict:
    return {
        "name": f"{kind}.{tap}.lr{lr}",
        "kind": kind,
        "tap": tap,
        "tap_index": TAPS.index(tap),
        "config": {"queries": 1} if kind == "inca" else {},
        "lr": lr,
        "weight_decay": 1e-4,
        "params": params,
        "best_epoch": 3,
        "val_acc": val,
        "test_acc": test,
    }


def make_results() -> dict[str, Any]:
    """2 kinds on 5 taps, inca at 2 learning rates. On block.1 the lr 0.01 inca adapter has the
    lower val but the higher test accuracy: the report must still show the lr 0.001 one."""
    adapters = []
    for i, tap in enumerate(TAPS):
        adapters.append(adapter("inca", tap, 0.001, 0.50 + 0.08 * i, 0.49 + 0.08 * i, 160_906))
        adapters.append(adapter("inca", tap, 0.01, 0.48 + 0.08 * i, 0.47 + 0.08 * i, 160_906))
        adapters.append(adapter("linear", tap, 0.001, 0.40 + 0.07 * i, 0.41 + 0.07 * i, 3_850))
    trap = next(a for a in adapters if a["name"] == "inca.block.1.lr0.01")
    trap["test_acc"] = 0.99
    best = max(adapters, key=lambda a: a["val_acc"])  # inca.final.lr0.001
    ranked = sorted(adapters, key=lambda a: -a["val_acc"])[:3]
    return {
        "run": {
            "backbone": {
                "name": "tiny-vit",
                "params": BACKBONE_PARAMS,
                "weights_hash": "abc",
                "preprocess": {"image_size": 112},
            },
            "data": "fashion-mnist",
            "sizes": {"train": 10000, "val": 2000, "test": 10000},
            "epochs": 4,
            "batch_size": 64,
            "seed": 0,
            "augment": True,
            "precision": "bf16",
            "device": "cpu",
            "wall_time_s": 700.1,
            "train_images_per_s": 80.2,
            "taps_order": TAPS,
        },
        "adapters": adapters,
        "selection": {
            "best": {k: best[k] for k in ("name", "val_acc", "test_acc")},
            "ensemble": {
                "members": [a["name"] for a in ranked],
                "k": 3,
                "val_acc": 0.85,
                "test_acc": 0.845,
                "k_curve": [{"k": 1, "val_acc": 0.82}, {"k": 2, "val_acc": 0.84}],
            },
        },
        "reference": {
            "name": "linear.final.lr0.001",
            "val_acc": 0.68,
            "test_acc": 0.69,
            "note": "linear probe on the deepest tap",
        },
    }


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def per_layer_rows(md: str) -> dict[str, list[str]]:
    """The per-layer table's cells, keyed by tap, with bold marks removed."""
    section = md.split("## Accuracy by layer")[1].split("## All adapters")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if cells and cells[0] in TAPS:
            rows[cells[0]] = cells[1:]
    return rows


def test_per_layer_table_shows_best_val_per_kind_and_tap() -> None:
    results = make_results()
    rows = per_layer_rows(results_table(results))
    assert list(rows) == TAPS
    for tap in TAPS:
        expected = []
        for kind in ("inca", "linear"):
            mine = [a for a in results["adapters"] if a["kind"] == kind and a["tap"] == tap]
            top = max(mine, key=lambda a: a["val_acc"])
            expected += [pct(top["val_acc"]), pct(top["test_acc"])]
        assert rows[tap] == expected, tap


def test_test_accuracy_never_decides_a_pick() -> None:
    results = make_results()
    assert best_per_tap(results)[("inca", "block.1")]["name"] == "inca.block.1.lr0.001"
    assert per_layer_rows(results_table(results))["block.1"][:2] == [pct(0.66), pct(0.65)]


def test_selected_best_is_bold_and_summary_is_complete() -> None:
    results = make_results()
    md = results_table(results)
    bold = re.findall(r"\| \*\*([^*]+)\*\*", md)
    assert bold == [pct(0.82), pct(0.81)]  # only the best's val and test cells
    summary = md.split("## Accuracy by layer")[0]
    assert "inca.final.lr0.001" in summary and "top-3 ensemble" in summary
    assert f"{3 * 160_906:,}" in summary  # ensemble params = sum of its members
    assert pct(0.69) in summary and f"{BACKBONE_PARAMS:,}" in summary
    assert "k=2 84.00%" in summary


def test_full_table_is_sorted_by_val() -> None:
    results = make_results()
    full = results_table(results).split("## All adapters")[1]
    vals = [float(v) for v in re.findall(r"\| (\d+\.\d\d)% \| [\d.]+% \|$", full, re.M)]
    assert len(vals) == len(results["adapters"])
    assert vals == sorted(vals, reverse=True)


def check_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert 900 <= w <= 2000 and 500 <= h <= 1200, im.size


def test_write_report_writes_markdown_and_png(tmp_path: Path) -> None:
    md_path, png = write_report(make_results(), tmp_path / "out")
    assert md_path == tmp_path / "out" / "report.md" and png.name == "accuracy_by_layer.png"
    check_png(png)
    md = md_path.read_text()
    assert md.startswith("# inca: tiny-vit on fashion-mnist")
    assert "80.2 training images/s" in md and "112px" in md and "11m 40s" in md
    assert "(accuracy_by_layer.png)" in md
    # atomic writes leave no temporary files behind
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"accuracy_by_layer.png", "report.md"}


def test_missing_optional_keys_are_tolerated(tmp_path: Path) -> None:
    results = make_results()
    del results["reference"], results["run"]["train_images_per_s"], results["run"]["taps_order"]
    del results["selection"]["ensemble"]["k_curve"]
    md_path, png = write_report(results, tmp_path)
    check_png(png)
    md = md_path.read_text()
    assert "images/s" not in md and "reference" not in md
    assert list(per_layer_rows(md)) == TAPS  # ordered by tap_index without taps_order


@pytest.mark.parametrize("kinds, taps", [(["inca"], TAPS), (["inca", "linear"], ["final"])])
def test_one_kind_or_one_tap_still_plots(tmp_path: Path, kinds: list[str], taps: list) -> None:
    results = copy.deepcopy(make_results())
    results["adapters"] = [
        a for a in results["adapters"] if a["kind"] in kinds and a["tap"] in taps
    ]
    results["run"]["taps_order"] = taps
    check_png(plot_accuracy_by_layer(results, tmp_path / "p.png"))
    assert len(per_layer_rows(results_table(results))) == len(taps)


def test_no_adapters_is_a_clear_error() -> None:
    results = make_results()
    results["adapters"] = []
    with pytest.raises(IncaError, match="no adapters"):
        results_table(results)
