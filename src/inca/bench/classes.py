"""`inca bench-classes`: classes that arrive over time, measured against the known baselines.

The protocol: a data set's classes arrive in 5 steps of 2; each step sees its own classes'
training images only (no replay); after every step, test accuracy over every class seen so far.
It runs in 3 class orders (order 0: the data set's; 1 and 2: seeded permutations) and every row
is reported as mean ± std over them, so one lucky order decides nothing. Rows, all from one
activation cache of the tap:

- Open-InCA, analytic head (the default): a ridge head over pooled descriptors (CLS, mean,
  k × k cells) solved from accumulated statistics, λ by GCV from the statistics alone;
- Open-InCA, trained queries (the design it replaced; the product's ``classes new/add`` path,
  pseudo old-class samples, no replay) where asked for;
- random features + ridge (RanPAC-style): CLS + mean pooled, a fixed random ReLU projection of
  M = 5,000, accumulated statistics, λ on the validation images of the classes seen so far;
- class means, cosine (SimpleCIL-style), on CLS + mean.

References: the joint ridge on all classes at once (the analytic head's final step must equal
it, in every order: reported as the largest weight difference), two halves made apart and
merged through the product's ``classes merge`` (the joint solve again), and joint InCA training
of a cross-attention adapter on all classes. A second protocol on digits shows the ordering of
the methods is not one data set's. Writes the JSON, a Markdown report and a plot.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from inca.recipes.data_options import DEFAULT_DATA, DEFAULT_MODEL, MEASURED_IMAGE_SIZE
from inca.utils.io import write_json

RANDOM_FEATURES = 5000  # RanPAC's M
Features = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # split -> (φ, pooled, y)


def run_class_incremental(
    model: str = DEFAULT_MODEL,
    data: str = DEFAULT_DATA,
    image_size: int = MEASURED_IMAGE_SIZE,
    tap: str = "block.5",
    sizes: tuple[int | None, int | None, int | None] = (5000, 500, 2000),
    steps: int = 5,
    orders: int = 3,
    epochs: int = 10,
    joint_epochs: int = 20,
    queries: bool = True,
    second: str | None = "digits",
    out: str | Path = "benchmarks/results/class_incremental.json",
) -> dict[str, Any]:
    """The protocols of the module docstring on ``data`` (and ``second``, anchors and analytic
    head only), their JSON, table and plot. ``epochs``: the trained queries' budget per step;
    ``joint_epochs``: joint InCA's (0: not run)."""
    from inca.backbones import load_backbone
    from inca.bench.classes_report import classes_report, plot_steps
    from inca.recipes.add_classes import trained_config

    config = trained_config(epochs, 64, 0, False)
    backbone = load_backbone(model, image_size=image_size)
    setup = {"model": model, "image_size": image_size, "tap": tap, "steps": steps,
             "orders": orders, "epochs": epochs, "joint_epochs": joint_epochs,
             "random_features": RANDOM_FEATURES}  # fmt: skip
    res: dict[str, Any] = {"setup": setup, "protocols": {}}
    common = {"model": model, "tap": tap, "config": config, "image_size": image_size}
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        res["protocols"][data] = protocol(backbone, data, tap, sizes, steps, orders, root / "a",
                                          common, queries, joint_epochs, merge=True)  # fmt: skip
        if second and second != data:
            res["protocols"][second] = protocol(backbone, second, tap, (None, None, None),
                                                steps, orders, root / "b", common, False, 0,
                                                False)  # fmt: skip
    out = Path(out)
    write_json(out, res)
    report = classes_report(res)
    plot_steps(res, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(
        "# Classes over time: Open-InCA and the analytic baselines\n\n" + report
        + f"\n\n![accuracy per step]({out.with_suffix('.png').name})\n"
    )  # fmt: skip
    print(report)
    return res


def protocol(backbone: Any, data: str, tap: str, sizes: tuple, steps: int, orders: int,
             root: Path, common: dict[str, Any], queries: bool, joint_epochs: int,
             merge: bool) -> dict[str, Any]:  # fmt: skip
    """One data set's protocol in ``orders`` class orders, and its references."""
    from inca.bench.classes_queries import queries_run
    from inca.data import make_splits

    t0 = time.perf_counter()
    splits = make_splits(data, train_size=sizes[0], val_size=sizes[1], test_size=sizes[2])
    names = splits.class_names
    feats = features(backbone, splits, tap, root / "cache", common["config"])
    per = len(names) // steps
    counts = [len(splits.train), len(splits.val), len(splits.test)]
    out: dict[str, Any] = {"classes": names, "runs": [], "sizes": counts}
    finals = []
    for k in range(orders):
        order = class_order(len(names), k)
        groups = [order[i * per : (i + 1) * per] for i in range(steps)]
        run, final = incremental(feats, groups)
        run["order"] = [names[i] for i in order]
        finals.append(final[:, torch.argsort(torch.tensor(order))])  # columns by data set class
        if queries:
            named = [[names[i] for i in g] for g in groups]
            qc = common | {"sizes": sizes}
            run["queries"] = [r["test_acc"] for r in queries_run(data, named, qc, root, f"q{k}")]
        out["runs"].append(run)
        print(f"{data}, order {k}: " + ", ".join(f"{100 * s['analytic']:.2f}"
                                                 for s in run["steps"]), flush=True)  # fmt: skip
    out["joint_ridge"] = joint_ridge(feats, finals)
    if merge:
        out["merge"] = merged_halves(data, names, feats, out["joint_ridge"]["weight"],
                                     root, common | {"sizes": sizes})  # fmt: skip
    out["joint_ridge"].pop("weight")
    if joint_epochs:
        out["joint_inca"] = joint_inca(data, tap, sizes, joint_epochs, root, common)
    out["seconds"] = time.perf_counter() - t0
    return out


def class_order(classes: int, k: int) -> list[int]:
    """Order 0: the data set's; order k > 0: a permutation seeded by k."""
    if k == 0:
        return list(range(classes))
    return torch.randperm(classes, generator=torch.Generator().manual_seed(k)).tolist()


def features(backbone: Any, splits: Any, tap: str, work: Path, config: Any) -> Features:
    """Per split: the analytic head's descriptors φ (with its constant), the CLS + mean pooling
    the baselines read, and labels; from one activation cache of ``tap``."""
    from inca.cache.split_caches import open_caches
    from inca.methods.analytic import AnalyticConfig, AnalyticHead, pooled_cls_mean
    from inca.train.batch_sources import TokenSource

    info, prefix = backbone.taps[tap], backbone.num_prefix_tokens
    head = AnalyticHead(AnalyticConfig(), info.dim, 1, prefix, patch_tokens=info.tokens - prefix)
    caches = open_caches(backbone, splits, [tap], work, 1, "auto", config.eval_batch_size, 0,
                         config.workers, False)  # fmt: skip
    source = TokenSource(backbone, splits, [tap], config, caches)
    out = {}
    for split in ("train", "val", "test"):
        phi, pooled, labels = [], [], []
        for x, y in source.evaluate(split):
            phi.append(head.features_of(x[0]).cpu())
            pooled.append(pooled_cls_mean(x[0], prefix).cpu())
            labels.append(y.cpu())
        out[split] = (torch.cat(phi), torch.cat(pooled), torch.cat(labels))
    return out


def incremental(feats: Features, groups: list[list[int]]) -> tuple[dict[str, Any], torch.Tensor]:
    """Every row of the protocol, step by step, in the order of ``groups`` (data set class
    indices; class c is called order.index(c) here, as a task would); the analytic head's
    final weights (F, C) in that order."""
    from inca.methods.analytic import ClassMeans, RandomFeatureRidge, RidgeStatistics

    order = [c for g in groups for c in g]
    rename = torch.full((len(order),), -1, dtype=torch.long)
    rename[torch.tensor(order)] = torch.arange(len(order))
    (phi, pooled, y), (vphi, vpool, vy), (tphi, tpool, ty) = (
        (a, b, rename[c]) for a, b, c in (feats[s] for s in ("train", "val", "test"))
    )
    means, ranpac = ClassMeans(pooled.shape[1]), RandomFeatureRidge(pooled.shape[1],
                                                                    RANDOM_FEATURES)  # fmt: skip
    stats, rows, seen = RidgeStatistics.empty(phi.shape[1]), [], 0
    for g in groups:
        seen += len(g)
        new = (y >= seen - len(g)) & (y < seen)
        means.add(pooled[new], y[new])
        ranpac.add(pooled[new], y[new])
        stats = stats.with_classes(len(g))
        stats.add(phi[new], y[new])
        v, t = vy < seen, ty < seen
        weight, lam = stats.solve()
        r_weight, r_lam = ranpac.fit(vpool[v], vy[v])
        rows.append({
            "classes": seen,
            "analytic": _acc(tphi[t].double() @ weight, ty[t]), "analytic_lam": lam,
            "random_ridge": _acc(ranpac.logits(tpool[t], r_weight), ty[t]),
            "random_ridge_lam": r_lam,
            "class_means": _acc(means.logits(tpool[t]), ty[t]),
        })  # fmt: skip
    return {"steps": rows}, weight


def joint_ridge(feats: Features, finals: list[torch.Tensor]) -> dict[str, Any]:
    """The ridge on every training image at once, its test accuracy, and how far each order's
    final analytic head is from it (largest |ΔW| over max |W|)."""
    from inca.methods.analytic import RidgeStatistics

    phi, _, y = feats["train"]
    stats = RidgeStatistics.empty(phi.shape[1], int(y.max()) + 1)
    stats.add(phi, y)
    weight, lam = stats.solve()
    tphi, _, ty = feats["test"]
    scale = float(weight.abs().max())
    return {"test_acc": _acc(tphi.double() @ weight, ty), "lam": lam, "weight": weight,
            "max_relative_difference": max(float((f - weight).abs().max()) / scale
                                           for f in finals)}  # fmt: skip


def merged_halves(data: str, names: list[str], feats: Features, joint: torch.Tensor, root: Path,
                  common: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Two analytic tasks of half the classes each, made apart by the product's ``classes
    new``, merged by ``classes merge``: test accuracy and distance from the joint head."""
    from inca.recipes.analytic_classes import load_statistics, new_analytic_task
    from inca.tasks import load_task
    from inca.tasks.open_classes import merge_tasks

    half = len(names) // 2
    parts = (names[:half], names[half:])
    for i, part in enumerate(parts):
        new_analytic_task(data, part, out=root / f"half{i}", cache=root / f"ch{i}", **common)
    a, b = load_task(root / "half0"), load_task(root / "half1")
    merged = merge_tasks(a, b, "merged", load_statistics(root / "half0"),
                         load_statistics(root / "half1"))  # fmt: skip
    weight = merged.member("merged").weight.detach().double().T  # (F, C), data set order
    tphi, _, ty = feats["test"]
    return {"test_acc": _acc(tphi.double() @ weight, ty),
            "max_relative_difference": float((weight - joint).abs().max())
            / float(joint.abs().max())}  # fmt: skip


def joint_inca(data: str, tap: str, sizes: tuple, epochs: int, root: Path,
               common: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """A cross-attention InCA adapter trained on every class at once (the main job's adapter
    at this tap): its best member's validation and test accuracy."""
    from inca.recipes.plan_run import run_plan
    from inca.recipes.run_options import RunOptions

    ran = run_plan(RunOptions(model=common["model"], data=data,
                              plan=f"inca taps={tap} lr=1e-3,3e-3", train_size=sizes[0],
                              val_size=sizes[1], test_size=sizes[2],
                              image_size=common["image_size"], cache=str(root / "cj"),
                              train=replace(common["config"], epochs=epochs)),
                   root / "joint")  # fmt: skip
    best = ran["selection"]["best"]
    print(f"joint InCA on all classes: {100 * best['test_acc']:.2f}%", flush=True)
    return {"test_acc": best["test_acc"], "val_acc": best.get("val_acc")}


def _acc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    from inca.train.select import accuracy

    return accuracy(scores, labels)
