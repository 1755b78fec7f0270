"""One ensemble over the members of several runs, on one or more backbones: ``inca ensemble``.

Every run keeps its members and their validation and test probabilities (``members/``, see
``inca.recipes.member_pool``). Selection here is the run's own, over the union: the better on
validation of top-k and greedy forward selection with replacement (``choose_ensemble``); the
test split is scored once, for the choice and for each run's own ensemble chosen the same way
from its own members alone, so the table compares like with like. No backbone runs: the runs
must have validated and tested on the very same images (same data, sizes, seed), which is
checked through their labels and data fingerprints.

The chosen members are grouped by backbone, one part per backbone (runs on one backbone share
a part), and saved as a ``CombinedTask``; when every chosen member reads one backbone, as an
ordinary ``Task``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from inca.errors import IncaError
from inca.recipes.member_pool import MemberPool, load_member_pool
from inca.tasks.combined import CombinedTask
from inca.tasks.multi import backbone_differences
from inca.tasks.task import Task
from inca.train.metrics import balanced_accuracy
from inca.train.select import EnsembleChoice, accuracy, choose_ensemble

DATA_KEYS = ("sizes", "seed", "fingerprint", "test_fingerprint", "split_rule")


def ensemble_runs(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    name: str | None = None,
    max_ensemble: int = 10,
    metric: str = "accuracy",
) -> dict[str, Any]:
    """Select one ensemble over the union of ``runs``' members, save it to ``out``; returns
    {"rows": one per run alone and one for the union, "task": out, "parts": ...}."""
    if len(runs) < 2:
        raise IncaError("give two or more run directories to ensemble across")
    pools = [load_member_pool(r) for r in runs]
    _check_same_images(pools)
    labels = {split: pools[0].labels[split] for split in ("val", "test")}
    keys = _labels(pools)  # a short label per run
    probs = {
        split: {f"{k}:{m}": p for k, pool in zip(keys, pools, strict=True)
                for m, p in pool.probs[split].items()}
        for split in ("val", "test")
    }  # fmt: skip
    rows = []
    for key, pool in zip(keys, pools, strict=True):
        alone = choose_ensemble(pool.probs["val"], labels["val"], max_k=max_ensemble, metric=metric)
        rows.append(_row(key, alone, pool.probs, labels, {key: alone.k}))
    choice = choose_ensemble(probs["val"], labels["val"], max_k=max_ensemble, metric=metric)
    by_run = _split_by_run(choice, keys)
    rows.append(_row("all", choice, probs, labels, {k: len(v) for k, v in by_run.items()}))
    task = _build(name or _default_name(pools), pools, keys, by_run, rows[-1])
    task.save(out)
    return {"rows": rows, "task": str(out), "kind": type(task).__name__,
            "metric": metric, "runs": [str(p.run) for p in pools]}  # fmt: skip


def _check_same_images(pools: list[MemberPool]) -> None:
    first = pools[0]
    for pool in pools[1:]:
        diff = [k for k in DATA_KEYS if first.task.data.get(k) != pool.task.data.get(k)]
        same = all(torch.equal(first.labels[s], pool.labels[s]) for s in ("val", "test"))
        if diff or not same:
            what = ", ".join(diff) if diff else "labels"
            raise IncaError(
                f"runs {first.run} and {pool.run} did not validate and test on the same images "
                f"(their {what} differ); train both on the same --data with the same sizes and "
                "--seed to ensemble them"
            )
        if pool.task.class_names != first.task.class_names:
            raise IncaError(
                f"runs {first.run} and {pool.run} name their classes differently; they must be "
                "the same classes in the same order"
            )


def _labels(pools: list[MemberPool]) -> list[str]:
    """Each run's label: its backbone's name, or the run directory's where two share one."""
    names = [p.backbone for p in pools]
    labels = [n if names.count(n) == 1 else p.run.name for n, p in zip(names, pools, strict=True)]
    if len(set(labels)) != len(labels):
        labels = [str(p.run) for p in pools]
    if len(set(labels)) != len(labels):
        raise IncaError("a run is given twice; give each run directory once")
    return labels


def _split_by_run(choice: EnsembleChoice, keys: list[str]) -> dict[str, dict[str, float]]:
    """{run label: {member: weight}} of the chosen members (weights sum to 1 over all)."""
    weights = choice.weights or [1 / choice.k] * choice.k
    out: dict[str, dict[str, float]] = {}
    for member, w in zip(choice.members, weights, strict=True):
        key, _, name = member.partition(":")
        out.setdefault(key, {})[name] = w
    return {k: out[k] for k in keys if k in out}


def _row(label: str, choice: EnsembleChoice, probs: dict, labels: dict, members: dict
         ) -> dict[str, Any]:  # fmt: skip
    test = choice.probs(probs["test"])
    return {
        "members_of": label, "method": choice.method, "k": choice.k, "by_run": members,
        "val_acc": choice.val_acc, "test_acc": accuracy(test, labels["test"]),
        "test_balanced_acc": balanced_accuracy(test, labels["test"]),
    }  # fmt: skip


def _build(
    name: str,
    pools: list[MemberPool],
    keys: list[str],
    by_run: dict[str, dict[str, float]],
    row: dict[str, Any],
) -> Task | CombinedTask:
    """The chosen members as a task: one part per backbone (runs on one backbone merged)."""
    groups: list[list[int]] = []  # run indices per backbone
    for i, pool in enumerate(pools):
        if keys[i] not in by_run:
            continue
        for g in groups:
            if not backbone_differences(pools[g[0]].task.backbone_info, pool.task.backbone_info):
                g.append(i)
                break
        else:
            groups.append([i])
    metrics = {k: row[k] for k in ("val_acc", "test_acc", "test_balanced_acc")}
    metrics["members_by_run"] = row["by_run"]
    data = pools[0].task.data
    parts, weights = [], []
    for g in groups:
        merged = len(g) > 1  # members of several runs in one part: names carry their run
        members, member_weights = [], []
        for i in g:
            pool = pools[i]
            for m, w in by_run[keys[i]].items():
                member = f"{keys[i]}:{m}" if merged else m
                members.append((member, pool.task.member_taps[m], pool.task.member(m)))
                member_weights.append(w)
        first = pools[g[0]].task
        views = {pools[i].task.views for i in g}
        if len(views) > 1:
            raise IncaError(
                f"runs {[str(pools[i].run) for i in g]} read one backbone with other test-time "
                f"views ({sorted(views)}); a part averages over one set: ensemble runs trained "
                "with the same --views and --test-views"
            )
        label = keys[g[0]] if not merged else first.backbone_info["name"]
        part_name = name if len(groups) == 1 else f"{name}-{label}"
        own = metrics if len(groups) == 1 else None  # a part's score is the whole's, not its own
        parts.append(Task(part_name, "ensemble", first.backbone_info, first.class_names, members,
                          metrics=own, data=data, weights=member_weights,
                          views=first.views))  # fmt: skip
        weights.append(sum(member_weights))
    if len(parts) == 1:
        return parts[0]
    return CombinedTask(name, parts, weights, metrics=metrics, data=data)


def _default_name(pools: list[MemberPool]) -> str:
    data = pools[0].task.data.get("data", "task")
    return f"{Path(str(data)).name}-" + "+".join(dict.fromkeys(p.backbone for p in pools))
