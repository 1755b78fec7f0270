from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from inca.errors import IncaError
from inca.report.class_report import TABLE_CLASSES, imbalance_warning
from inca.report.results_view import best_per_tap
from inca.report.run import results_table, write_report
from inca.report.run_plots import plot_accuracy_by_layer, plot_confusion

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
    """An old run: no balanced accuracy, recall or confusion recorded, so none is shown."""
    md_path, png = write_report(make_results(), tmp_path / "out")
    assert md_path == tmp_path / "out" / "report.md" and png.name == "accuracy_by_layer.png"
    check_png(png)
    md = md_path.read_text()
    assert md.startswith("# inca: tiny-vit on fashion-mnist")
    assert "80.2 training images/s" in md and "112px" in md and "11m 40s" in md
    assert "(accuracy_by_layer.png)" in md
    assert "bal acc" not in md and "Recall per class" not in md and "Confusion" not in md
    assert "confusion.png" not in md and "flatters" not in md
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


# --------------------------------------------------------------------------- imbalanced classes
CLASSES = ["cat", "dog", "eel"]
BEST_CM = [[66, 2, 1], [14, 6, 1], [6, 1, 3]]  # 75 of 100 right; recall 95.7%, 28.6%, 30%
ENS_CM = [[67, 1, 1], [10, 10, 1], [4, 1, 5]]  # 82 of 100 right; recall 97.1%, 47.6%, 50%


def recall_of(cm: list[list[int]]) -> dict[str, float]:
    return {n: row[i] / sum(row) for i, (n, row) in enumerate(zip(CLASSES, cm, strict=True))}


def with_classes(metric: str = "accuracy") -> dict[str, Any]:
    """make_results as a run now records it: 69% of the test images are cats, and balanced
    accuracy is far below accuracy for the best adapter and the ensemble."""
    results = copy.deepcopy(make_results())
    for a in results["adapters"]:
        a["val_balanced_acc"], a["test_balanced_acc"] = a["val_acc"] - 0.2, a["test_acc"] - 0.25
    results["classes"] = {"names": CLASSES, "test_counts": [69, 21, 10]}
    selection = results["selection"]
    selection["metric"] = metric
    for record, cm in ((selection["best"], BEST_CM), (selection["ensemble"], ENS_CM)):
        recall = recall_of(cm)
        record |= {
            "test_acc": sum(row[i] for i, row in enumerate(cm)) / 100,
            "val_balanced_acc": 0.6,
            "test_balanced_acc": sum(recall.values()) / 3,
            "test_recall": recall,
            "test_confusion": cm,
        }
    selection["ensemble"] |= {"method": "greedy", "alternatives": {"top-k": 0.6, "greedy": 0.62}}
    return results


def summary_of(md: str) -> str:
    return md.split("## Summary")[1].split("## ")[0]


def test_summary_shows_balanced_accuracy_and_warns_plainly() -> None:
    md = results_table(with_classes(), every_adapter=False)
    summary = summary_of(md)
    assert "| val acc | test acc | val bal acc | test bal acc |" in summary
    best_row = next(line for line in summary.splitlines() if "best single adapter" in line)
    assert f"| {pct(0.75)} | {pct(0.6)} | {pct(sum(recall_of(BEST_CM).values()) / 3)} |" in best_row
    warning = imbalance_warning(with_classes())
    assert warning is not None and f"**{warning}**" in summary
    assert warning.startswith(
        "Accuracy flatters this imbalanced test set: the majority class (cat, 69% of test) "
        "dominates. Balanced accuracy 51.41% vs accuracy 75.00% for the best single adapter "
        "`inca.final.lr0.001`; balanced accuracy 64.91% vs accuracy 82.00% for the greedy "
        "ensemble of 3."
    )
    assert warning.endswith("Consider --metric balanced-accuracy.")
    assert "Ensembles tried (validation accuracy): top-k 60.00%, greedy 62.00%" in summary


def test_recall_and_confusion_tables_name_the_classes() -> None:
    md = results_table(with_classes(), every_adapter=False)
    recall = md.split("## Recall per class (test)")[1].split("## ")[0]
    assert "| class | test images | recall: best single adapter `inca.final.lr0.001` | " in recall
    assert "| dog | 21 | 28.57% | 47.62% |" in recall
    confusion = md.split("## Confusion matrices (test)")[1].split("## ")[0]
    assert confusion.count("| true \\ predicted | cat | dog | eel |") == 2
    assert "| **dog** | 14 | **6** | 1 |" in confusion  # the best adapter's row
    assert "| **dog** | 10 | **10** | 1 |" in confusion  # the ensemble's
    assert "greedy ensemble of 3:" in confusion
    assert "## Accuracy by layer" in md  # the sections after are still there


def test_no_warning_when_balanced_accuracy_is_close_or_classes_balanced() -> None:
    results = with_classes()
    for record in results["selection"].values():
        if isinstance(record, dict):
            record["test_balanced_acc"] = record["test_acc"] - 0.01
    assert imbalance_warning(results) is None
    results = with_classes()
    results["classes"]["test_counts"] = [34, 33, 33]  # a large gap, but no majority class
    assert imbalance_warning(results) is None
    assert "flatters" not in results_table(results)


def test_chosen_by_balanced_accuracy_says_so() -> None:
    md = results_table(with_classes("balanced-accuracy"))
    summary = summary_of(md)
    assert "chosen by validation balanced accuracy" in summary
    assert "Ensembles tried (validation balanced accuracy)" in summary
    assert "--metric balanced-accuracy" not in summary  # already chosen so
    assert "Selection already ranks by balanced accuracy" in summary
    full = md.split("## All adapters")[1]
    assert "| val acc | test acc | test bal acc |" in full


def test_write_report_writes_the_confusion_png(tmp_path: Path) -> None:
    md_path, _ = write_report(with_classes(), tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"accuracy_by_layer.png", "confusion.png", "report.md"}
    with Image.open(tmp_path / "confusion.png") as im:
        im.verify()
    with Image.open(tmp_path / "confusion.png") as im:
        w, h = im.size
        assert im.format == "PNG" and w > 1.5 * h and 400 <= h <= 1200, im.size  # two panels
    md = md_path.read_text()
    assert "(confusion.png)" in md and "flatters" in md and "| **cat** | **66** | 2 | 1 |" in md


def test_old_results_do_not_plot_confusion_and_a_lone_pick_does(tmp_path: Path) -> None:
    assert plot_confusion(make_results(), tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()
    results = with_classes()
    del results["selection"]["ensemble"]
    del results["classes"]  # names from the recall, counts from the confusion matrix
    assert plot_confusion(results, tmp_path / "c.png") == tmp_path / "c.png"
    assert "the majority class (cat, 69% of test)" in (imbalance_warning(results) or "")


def test_many_classes_point_to_the_plot_instead_of_a_table(tmp_path: Path) -> None:
    k = TABLE_CLASSES + 20
    names = [f"class{i}" for i in range(k)]
    cm = [[10 if i == j else (1 if j == (i + 1) % k else 0) for j in range(k)] for i in range(k)]
    results = with_classes()
    results["classes"] = {"names": names, "test_counts": [11] * k}
    for key in ("best", "ensemble"):
        record = results["selection"][key]
        record["test_confusion"] = cm
        record["test_recall"] = {n: 10 / 11 for n in names}
    md = results_table(results)
    assert f"{k} classes are too many for a table" in md
    assert len(md.split("## Recall per class (test)")[1].split("## ")[0].splitlines()) < k
    assert plot_confusion(results, tmp_path / "c.png") is not None


def test_seeds_table_shows_balanced_accuracy_when_recorded() -> None:
    results = with_classes()
    stats = {"mean": 0.7, "std": 0.01, "values": [0.69, 0.71]}
    results["seeds"] = {
        "seeds": [0, 1],
        "best": {"val_acc": stats, "test_acc": stats, "test_balanced_acc": stats},
        "ensemble": {"val_acc": stats, "test_acc": stats},
    }
    md = results_table(results)
    assert "|  | val acc | test acc | test bal acc |" in md
    assert "| ensemble | 70.00 ± 1.00% | 70.00 ± 1.00% | — |" in md


def test_the_summary_says_what_test_time_views_buy() -> None:
    results = make_results()
    sel = results["selection"]
    sel["test_views"] = "dihedral"
    sel["best"]["one_view"] = {"val_acc": sel["best"]["val_acc"] - 0.05, "test_acc": 0.70}
    sel["ensemble"]["one_view"] = {"val_acc": 0.80, "test_acc": 0.80}
    summary = summary_of(results_table(results, every_adapter=False))
    gain = (sel["best"]["test_acc"] - 0.70) * 100
    assert "Test-time views (dihedral)" in summary
    assert f"best single adapter: test {pct(sel['best']['test_acc'])} with them, 70.00% without " \
           f"({gain:+.2f} points" in summary  # fmt: skip
    assert "ensemble: test 84.50% with them, 80.00% without (+4.50 points" in summary
    assert "Test-time views" not in summary_of(results_table(make_results(), every_adapter=False))
