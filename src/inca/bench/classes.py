"""`inca bench-classes`: the class-incremental protocol of Open-InCA, measured.

Fashion-MNIST's 10 classes arrive in 5 steps of 2; each step trains on its own classes' images
only (``inca classes add``), or with up to ``replay`` training images of each old class. After
every step: accuracy over every class seen so far (with replay, after the new classes'
calibration, and before it), the first step's classes' accuracy, and forgetting (each earlier
class's best accuracy minus its final one, averaged: it can only come from new classes
competing, their parameters never change). Both projection options run without
replay ("new": a set per step, "shared": the first step's, frozen), so the default is chosen on
validation. Against: joint training of a plain InCA adapter on all 10 classes (the upper bound),
and two 5-class halves trained apart then merged, before and after calibration. Writes the JSON,
a Markdown report with the table, and a plot of accuracy per step.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from inca.recipes.data_options import DEFAULT_DATA, DEFAULT_MODEL, MEASURED_IMAGE_SIZE
from inca.report.format import markdown_table
from inca.utils.io import write_json

REPLAY_TARGET, NO_REPLAY_TARGET = 3.0, 8.0  # points below joint training, at most


def run_class_incremental(
    model: str = DEFAULT_MODEL,
    data: str = DEFAULT_DATA,
    image_size: int = MEASURED_IMAGE_SIZE,
    tap: str = "block.5",
    sizes: tuple[int, int, int] = (5000, 500, 2000),
    steps: int = 5,
    runs: tuple[tuple[int, str], ...] = ((0, "new"), (50, "new"), (0, "shared")),
    epochs: int = 10,
    joint_epochs: int = 20,
    out: str | Path = "benchmarks/results/class_incremental.json",
) -> dict[str, Any]:
    """The protocol of the module docstring, and its JSON, table and plot. Each incremental
    run and the merge of two halves are functions of their own (this was one body of 98
    lines); here the first step, the runs, joint training and the merge come together."""
    from inca.data import make_splits
    from inca.recipes.add_classes import new_classes_task, trained_config
    from inca.recipes.plan_run import run_plan
    from inca.recipes.run_options import RunOptions

    config = trained_config(epochs, 64, 0, False)
    names = make_splits(
        data, train_size=sizes[0], val_size=sizes[1], test_size=sizes[2]
    ).class_names
    per = len(names) // steps
    groups = [names[k * per : (k + 1) * per] for k in range(steps)]
    common = {"model": model, "tap": tap, "config": config, "image_size": image_size,
              "sizes": sizes}  # fmt: skip
    res: dict[str, Any] = {"setup": {"model": model, "data": data, "image_size": image_size,
                                     "tap": tap, "sizes": sizes, "epochs": epochs,
                                     "joint_epochs": joint_epochs, "steps": groups}}  # fmt: skip
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        first = new_classes_task(data, groups[0], out=root / "step1", cache=root / "c1", **common)
        print(f"step 1 {groups[0]}: {100 * first['test_acc']:.2f}%", flush=True)
        for replay, projections in runs:
            run = incremental_run(data, groups, first, replay, projections, config, sizes, root)
            res[run_key(replay, projections)] = run
        joint = run_plan(RunOptions(model=model, data=data, plan=f"inca taps={tap} lr=1e-3,3e-3",
                                 train_size=sizes[0], val_size=sizes[1], test_size=sizes[2],
                                 image_size=image_size, cache=str(root / "cj"),
                                 train=replace(config, epochs=joint_epochs)),
                      root / "joint")  # fmt: skip
        res["joint"] = joint["selection"]["best"]
        print(f"joint InCA on all classes: {100 * res['joint']['test_acc']:.2f}%", flush=True)
        res["merge"] = merged_halves(data, names, root, common)
        print(f"merged halves: test {100 * res['merge']['test_before']:.2f}% before, "
              f"{100 * res['merge']['test_after']:.2f}% after calibration", flush=True)  # fmt: skip
    res["gap_to_joint_points"] = {
        key: 100 * (res["joint"]["test_acc"] - res[key]["steps"][-1]["test_acc"])
        for key in (run_key(r, p) for r, p in runs)
    }
    out = Path(out)
    write_json(out, res)
    table = classes_table(res)
    plot_steps(res, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(
        "# Open-InCA: the class-incremental protocol\n\n" + table
        + f"\n\n![accuracy per step]({out.with_suffix('.png').name})\n"
    )  # fmt: skip
    print(table)
    return res


def incremental_run(data: str, groups: list[list[str]], first: dict[str, Any], replay: int,
                    projections: str, config: Any, sizes: tuple[int, int, int],
                    root: Path) -> dict[str, Any]:  # fmt: skip
    """One run of the protocol: a copy of the first step's task (under ``root``, whose record
    is ``first``) gets the other ``groups`` one step at a time, with ``replay`` images of each
    old class and ``projections``; its rows per step, forgetting and adapter size."""
    import shutil

    from inca.recipes.add_classes import add_classes
    from inca.tasks import load_task

    key = run_key(replay, projections)
    task = root / key
    shutil.copytree(root / "step1", task)
    rows = [{"step": 1, "classes": groups[0], "test_acc": first["test_acc"],
             "val_acc": first["val_acc"][first["selected"]],
             "first_classes_acc": _mean(first, groups[0]),
             "by_class": first["test_acc_by_class"]}]  # fmt: skip
    for k, group in enumerate(groups[1:], start=2):
        rec = add_classes(
            task,
            data,
            group,
            replay=replay,
            projections=projections,
            calibrate=replay > 0,  # measured both ways: before and after
            config=config,
            sizes=sizes,
            cache=root / f"c-r{replay}-s{k}",
        )  # fmt: skip (shared by both projections)
        cal = rec["calibration"] or {}
        rows.append({"step": k, "classes": group, "test_acc": rec["test_acc"],
                     "test_acc_uncalibrated": cal.get("test_acc_before", rec["test_acc"]),
                     "val_acc": rec["val_acc"][rec["selected"]],
                     "first_classes_acc": _mean(rec, groups[0]),
                     "by_class": rec["test_acc_by_class"]})  # fmt: skip
        print(f"{key}, step {k} {group}: {100 * rec['test_acc']:.2f}% over "
              f"{2 * k} classes", flush=True)  # fmt: skip
    return {"replay": replay, "projections": projections, "steps": rows,
            "forgetting": forgetting(rows), "adapter_params": _params(load_task(task))}  # fmt: skip


def merged_halves(data: str, names: list[str], root: Path, common: dict[str, Any]) -> dict:
    """Two tasks of half the classes each, trained apart (under ``root``), merged and
    calibrated on held-out validation tokens: validation and test accuracy before and after."""
    from inca.recipes.add_classes import new_classes_task
    from inca.tasks import load_task
    from inca.tasks.open_classes import calibrate, held_out_tokens, merge_tasks

    half, sizes = len(names) // 2, common["sizes"]
    for i, part in enumerate((names[:half], names[half:])):
        new_classes_task(data, part, out=root / f"half{i}", cache=root / f"ch{i}", **common)
    merged = merge_tasks(load_task(root / "half0"), load_task(root / "half1"), "merged")
    tokens, labels = held_out_tokens(merged, data, sizes[1])
    cal = calibrate(merged, tokens, labels)
    return {"val_before": cal["acc_before"], "val_after": cal["acc_after"],
            **_test_merged(merged, data, sizes)}  # fmt: skip


def run_key(replay: int, projections: str) -> str:
    return f"replay_{replay}" + ("" if projections == "new" else f"_{projections}")


def forgetting(rows: list[dict[str, Any]]) -> float:
    """Mean over the classes learned before the last step of (best accuracy at any step -
    accuracy after the last step)."""
    final = rows[-1]["by_class"]
    earlier = [c for r in rows[:-1] for c in r["classes"]]
    drops = [max(r["by_class"][c] for r in rows if c in r["by_class"]) - final[c]
             for c in earlier]  # fmt: skip
    return sum(drops) / len(drops)


def _params(task: Any) -> int:
    from inca.tasks.open_classes import open_member

    _, _, adapter = open_member(task)
    return sum(p.numel() for p in adapter.parameters())


def _mean(record: dict[str, Any], classes: list[str]) -> float:
    by = record["test_acc_by_class"]
    return sum(by[c] for c in classes) / len(classes)


def _test_merged(task: Any, data: str, sizes: tuple[int, int, int]) -> dict[str, float]:
    """Test accuracy of a merged task on ``data``'s test split, with and without its
    calibration (the held-out tokens of the test split, through the same code)."""

    from inca.methods.open_inca.classes import raw_logits
    from inca.tasks.open_classes import held_out_tokens, open_member

    tokens, labels = held_out_tokens(task, data, sizes[2], split="test")
    _, _, adapter = open_member(task)
    raw = raw_logits(adapter, tokens)
    calibrated = raw * adapter.calib_scale.cpu() + adapter.calib_shift.cpu()
    return {
        "test_before": (raw.argmax(-1) == labels).float().mean().item(),
        "test_after": (calibrated.argmax(-1) == labels).float().mean().item(),
        "test_images": len(labels),
    }


def classes_table(res: dict[str, Any]) -> str:
    """The protocol as Markdown: accuracy over every class seen (and the first step's classes)
    after each step, per run; then forgetting, the gap to joint training and the merge."""
    keys = [k for k in res if k.startswith("replay_")]
    name = {k: f"{'no replay' if not res[k]['replay'] else 'replay ' + str(res[k]['replay'])}, "
               f"{res[k]['projections']} projections" for k in keys}  # fmt: skip
    header = ["step", "classes", *(f"{name[k]}: all seen / first step's" for k in keys)]
    steps = [[row["step"], ", ".join(row["classes"]),
              *(f"{100 * res[k]['steps'][i]['test_acc']:.2f}% / "
                f"{100 * res[k]['steps'][i]['first_classes_acc']:.2f}%" for k in keys)]
             for i, row in enumerate(res[keys[0]]["steps"])]  # fmt: skip
    j, m = res["joint"], res["merge"]
    finals = []
    for k in keys:
        r = res[k]
        last = r["steps"][-1]
        raw = last.get("test_acc_uncalibrated", last["test_acc"])
        finals.append([name[k], f"{100 * last['test_acc']:.2f}%", f"{100 * raw:.2f}%",
                       f"{res['gap_to_joint_points'][k]:.2f}", f"{100 * r['forgetting']:.2f}",
                       f"{100 * last['val_acc']:.2f}%", f"{r['adapter_params']:,}"])  # fmt: skip
    lines = [
        markdown_table(header, steps),
        "",
        markdown_table(["run", "final, all 10 classes", "without the new classes' calibration",
                        "gap to joint (points)", "forgetting (points)",
                        "validation after the last step", "adapter parameters"], finals),
        "",
        f"Joint InCA on all classes (upper bound, {res['setup']['joint_epochs']} epochs): "
        f"{100 * j['test_acc']:.2f}% test.",
        f"Two 5-class halves trained apart, merged: {100 * m['test_before']:.2f}% test before "
        f"calibration, {100 * m['test_after']:.2f}% after (validation "
        f"{100 * m['val_before']:.2f}% -> {100 * m['val_after']:.2f}%).",
        "Targets (points below joint, at most): " + "; ".join(
            f"{name[k]}: {t} ({'met' if res['gap_to_joint_points'][k] <= t else 'NOT met'})"
            for k in keys if res[k]["projections"] == "new"
            for t in [REPLAY_TARGET if res[k]["replay"] else NO_REPLAY_TARGET]) + ".",
    ]  # fmt: skip
    return "\n".join(lines)


def plot_steps(res: dict[str, Any], path: Path) -> None:
    """Accuracy over every class seen so far, after each step, per run; joint and the
    calibrated merge as references."""
    from inca.report.plot import new_figure, save_png

    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    for k in (k for k in res if k.startswith("replay_")):
        steps = res[k]["steps"]
        label = f"replay {res[k]['replay']}, {res[k]['projections']} projections"
        ax.plot([r["step"] for r in steps], [100 * r["test_acc"] for r in steps], "o-",
                label=label)  # fmt: skip
    ax.axhline(100 * res["joint"]["test_acc"], color="k", ls="--", label="joint InCA, 10 classes")
    ax.plot(
        [len(res[k]["steps"]) for k in res if k.startswith("replay_")][:1],
        [100 * res["merge"]["test_after"]],
        "k*",
        ms=11,
        label="merged halves, calibrated",
    )
    ax.set_xlabel("step (2 new classes each)")
    ax.set_ylabel("test accuracy over every class seen (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    save_png(fig, path, dpi=110, bbox_inches="tight")
