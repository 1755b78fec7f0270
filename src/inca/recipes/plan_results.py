"""The end of the main job: selection on validation, the test computed once, the results
record (``results.json``), the saved tasks and the report; and the summary over seeds."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from inca.adapters.tap_groups import depth_index
from inca.backbones import Backbone
from inca.data import Splits
from inca.data.splits import data_record
from inca.errors import IncaError
from inca.recipes.member_pool import save_member_pool
from inca.train.candidate import Candidate
from inca.train.metrics import balanced_accuracy, metrics_summary
from inca.train.select import accuracy, choose_ensemble, rank, score_all
from inca.train.trainer import Trainer
from inca.utils.io import write_json


def finish(
    backbone: Backbone,
    splits: Splits,
    members: dict[str, Candidate],
    trainer: Trainer | None,
    out: Path,
    max_ensemble: int,
    started: float,
    data_info: dict,
    cache_info: dict | None = None,
    metric: str = "accuracy",
    test_views: str = "none",
) -> dict[str, Any]:
    """Select on validation by ``metric``, compute test metrics once (accuracy and balanced
    accuracy of every member; recall per class and the confusion matrix of the picks), save
    tasks, results and report. ``test_views``: the view set every member's probabilities
    average over (saved with the tasks); the picks' accuracy on view 0 alone is recorded too."""
    if not members:
        raise IncaError("every member of the plan diverged: lower the learning rates")
    val_labels = torch.as_tensor(splits.val.labels, dtype=torch.long)  # split order, as the
    test_labels = torch.as_tensor(splits.test.labels, dtype=torch.long)  # probabilities' rows
    val_probs = {n: m.val_probs for n, m in members.items()}
    test_probs = {n: m.test_probs for n, m in members.items()}
    # Candidate.val_acc is the value of the metric that picked its best epoch: accuracy only when
    # that metric is accuracy, so under another it is computed again here
    val = {"acc": {n: m.val_acc for n, m in members.items()}}
    if metric != "accuracy":
        val["acc"] = score_all(val_probs, val_labels, "accuracy")
    val["bal"] = score_all(val_probs, val_labels, "balanced-accuracy")
    val["score"] = val["acc"] if metric == "accuracy" else score_all(val_probs, val_labels, metric)
    test = {
        "acc": {n: accuracy(p, test_labels) for n, p in test_probs.items()},
        "bal": {n: balanced_accuracy(p, test_labels) for n, p in test_probs.items()},
    }
    best = rank(val["score"])[0]
    ensemble = choose_ensemble(val_probs, val_labels, max_k=max_ensemble, metric=metric)
    names = list(splits.class_names)
    ens_test_probs = ensemble.probs(test_probs)  # (N_test, C)
    adapters = _adapter_records(members, val, test, list(backbone.taps))
    results = {
        "run": _run_record(backbone, trainer, data_info, cache_info, started, len(adapters)),
        "adapters": adapters,
        "classes": {
            "names": names,
            "test_counts": torch.bincount(test_labels, minlength=len(names)).tolist(),
        },
        "selection": {
            "metric": metric,
            "best": {"name": best, "val_acc": val["acc"][best], "test_acc": test["acc"][best],
                     "val_balanced_acc": val["bal"][best],
                     **_test_detail(metrics_summary(test_probs[best], test_labels, names))},
            "ensemble": {
                "members": ensemble.members, "weights": ensemble.weights,
                "method": ensemble.method, "k": ensemble.k, "val_acc": ensemble.val_acc,
                "test_acc": accuracy(ens_test_probs, test_labels),
                "val_balanced_acc": balanced_accuracy(ensemble.probs(val_probs), val_labels),
                **_test_detail(metrics_summary(ens_test_probs, test_labels, names)),
                "k_curve": ensemble.k_curve,
                "alternatives": ensemble.alternatives,  # each method's validation metric
            },
        },
    }  # fmt: skip
    if test_views != "none":
        results["selection"]["test_views"] = test_views
        _one_view_scores(results["selection"], members, ensemble, val_labels, test_labels)
    reference = _reference(adapters, val["score"], metric)
    if reference:
        results["reference"] = reference
    _save_tasks(backbone, splits, members, results, data_info, out, test_views)
    save_member_pool(backbone, splits, members, ensemble.members, _task_data(splits, data_info),
                     out, views=test_views)  # fmt: skip
    write_results(results, out)
    return results


def _one_view_scores(selection: dict, members: dict[str, Candidate], ensemble: Any,
                     val_labels: torch.Tensor, test_labels: torch.Tensor) -> None:  # fmt: skip
    """Each pick's accuracy on the images as they are (view 0 alone), beside the test-view
    average it was selected with: what the views buy."""
    one = {s: {n: m.one_view[s] for n, m in members.items() if m.one_view} for s in ("val", "test")}
    best = selection["best"]["name"]
    if best in one["val"]:
        selection["best"]["one_view"] = {
            "val_acc": accuracy(one["val"][best], val_labels),
            "test_acc": accuracy(one["test"][best], test_labels),
        }
    if all(m in one["val"] for m in ensemble.members):
        selection["ensemble"]["one_view"] = {
            "val_acc": accuracy(ensemble.probs(one["val"]), val_labels),
            "test_acc": accuracy(ensemble.probs(one["test"]), test_labels),
        }  # fmt: skip


def _adapter_records(
    members: dict[str, Candidate], val: dict, test: dict, taps_order: list[str]
) -> list[dict[str, Any]]:
    """Every member's row of results.json: its spec, size, and validation and test scores."""
    return [
        m.spec.to_dict()
        | {
            "tap_index": depth_index(m.spec.tap, taps_order),
            "params": m.adapter.num_params(),
            "val_acc": val["acc"][n],
            "test_acc": test["acc"][n],
            "val_balanced_acc": val["bal"][n],
            "test_balanced_acc": test["bal"][n],
        }
        | {k: v for k, v in m.info.items() if v is not None}
        for n, m in members.items()
    ]


def _reference(adapters: list[dict], val_score: dict[str, float], metric: str) -> dict | None:
    """The reference row: the linear probe with the best validation ``metric``, if any."""
    linear = {a["name"]: a for a in adapters if a["kind"] == "linear"}
    if not linear:
        return None
    # ranked as the best member is (ties by name): a run of probes alone picks its best as this
    ref = linear[rank({n: val_score[n] for n in linear})[0]]
    keys = ("name", "val_acc", "test_acc", "val_balanced_acc", "test_balanced_acc")
    return {k: ref[k] for k in keys} | {
        "note": f"the linear probe with the best validation {metric.replace('-', ' ')}"
    }


def _run_record(
    backbone: Backbone,
    trainer: Trainer | None,
    data_info: dict,
    cache_info: dict | None,
    started: float,
    num_adapters: int,
) -> dict[str, Any]:
    """What the run was: backbone, data, budget, how long and how it ended, its cache."""
    run: dict[str, Any] = {
        "backbone": backbone.describe(),
        **data_info,
        "batch_size": trainer.config.batch_size if trainer else None,
        "precision": backbone.precision.name,
        "device": str(backbone.device),
        "wall_time_s": time.perf_counter() - started,
        "taps_order": list(backbone.taps),
        "num_adapters": num_adapters,
    }
    if trainer is not None:
        p, budget = trainer.progress, trainer.budget
        train_s = max(p.train_seconds, 1e-9)
        run |= {
            "epochs": p.epoch,
            "max_epochs": budget.max_epochs,
            "steps": p.step,
            "stopped": p.stopped or "epoch cap",
            "budget": budget.describe(),
            "augment": trainer.config.augment,
            "views": trainer.config.views,
            "test_views": trainer.config.test_views,
            "train_time_s": p.train_seconds,
            "val_time_s": p.val_seconds,
            "train_images_per_s": p.images_seen / train_s,
            "backbone_share_of_train_time": p.backbone_seconds / train_s,
            "curve": p.curve,
        }
        if p.diverged:
            run["diverged"] = p.diverged  # member -> epoch: left out of everything above
    if cache_info:
        run["cache"] = cache_info
    return run


def _save_tasks(
    backbone: Backbone,
    splits: Splits,
    members: dict[str, Candidate],
    results: dict[str, Any],
    data_info: dict,
    out: Path,
    views: str = "none",
) -> None:
    """tasks/best and tasks/ensemble, each with the data record that rebuilds its splits."""
    task_data = _task_data(splits, data_info)
    best, ens = results["selection"]["best"], results["selection"]["ensemble"]
    scores = ("val_acc", "test_acc", "test_balanced_acc")
    _task(backbone, splits, members, f"{data_info['data']}-{best['name']}",
          members[best["name"]].spec.kind, [best["name"]], None,
          {k: best[k] for k in scores}, task_data, views).save(out / "tasks" / "best")  # fmt: skip
    _task(backbone, splits, members, f"{data_info['data']}-ensemble{ens['k']}", "ensemble",
          ens["members"], ens["weights"], {k: ens[k] for k in scores}, task_data, views,
          ).save(out / "tasks" / "ensemble")  # fmt: skip


def _task_data(splits: Splits, data_info: dict) -> dict[str, Any]:
    """The data record a saved task carries: what rebuilds its splits."""
    return data_record(data_info["data"], splits, data_info["seed"],
                       data_info.get("split_rule", 1))  # fmt: skip


# a confusion matrix of more classes is left out of results.json (K² counts; the recall per class
# stays): 1000 ImageNet classes would make two matrices of a million counts each
MAX_CONFUSION_CLASSES = 100


def _test_detail(summary: dict[str, Any]) -> dict[str, Any]:
    """The test record of a pick beyond its accuracy, from ``metrics_summary``."""
    detail = {"test_balanced_acc": summary["balanced_accuracy"], "test_recall": summary["recall"]}
    if len(summary["recall"]) <= MAX_CONFUSION_CLASSES:
        detail["test_confusion"] = summary["confusion"]
    return detail


def write_results(results: dict[str, Any], out: Path) -> None:
    """``results.json`` and the report made from it."""
    from inca.report.run import write_report

    write_json(out / "results.json", results)
    write_report(results, out)


def _task(
    backbone: Backbone,
    splits: Splits,
    members: dict[str, Candidate],
    name: str,
    method: str,
    chosen: list[str],
    weights: list[float] | None,
    metrics: dict,
    data: dict,
    views: str = "none",
):
    from inca.tasks import Task

    return Task.from_adapters(
        name,
        method,
        backbone,
        splits.class_names,
        [(m, members[m].spec.tap, members[m].adapter) for m in chosen],
        metrics=metrics,
        data=data,
        weights=weights,
        views=views,
    )


def seed_summary(runs: list[dict[str, Any]], first_seed: int) -> dict[str, Any]:
    """Mean ± std over seeds of what a user compares: the selected single member, the
    ensemble, and the best linear probe."""

    def stats(values: list[float]) -> dict[str, Any]:
        return {
            "values": values,
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        }

    out: dict[str, Any] = {"seeds": list(range(first_seed, first_seed + len(runs)))}
    for key, pick in (
        ("best", lambda r: r["selection"]["best"]),
        ("ensemble", lambda r: r["selection"]["ensemble"]),
        ("linear", lambda r: r.get("reference")),
    ):
        picked = [pick(r) for r in runs]
        if all(picked):
            out[key] = {
                "val_acc": stats([p["val_acc"] for p in picked]),
                "test_acc": stats([p["test_acc"] for p in picked]),
            }
            if all("test_balanced_acc" in p for p in picked):
                out[key]["test_balanced_acc"] = stats([p["test_balanced_acc"] for p in picked])
    return out
