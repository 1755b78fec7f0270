"""`inca bench-classes`: the class-incremental protocol of Open-InCA, measured.

Fashion-MNIST's 10 classes arrive in 5 steps of 2; each step trains on its own classes' images
only (``inca classes add``), or with up to ``replay`` training images of each old class. After
every step: accuracy over every class seen so far, and the first step's classes' accuracy
(forgetting, which can only come from new classes competing: their parameters never change).
Against: joint training of a plain InCA adapter on all 10 classes (the upper bound), and two
5-class halves trained apart then merged, before and after calibration.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from inca.io import write_json

REPLAY_TARGET, NO_REPLAY_TARGET = 3.0, 8.0  # points below joint training, at most


def run_class_incremental(
    model: str = "dinov2-small",
    data: str = "fashion-mnist",
    image_size: int = 112,
    tap: str = "block.5",
    sizes: tuple[int, int, int] = (5000, 500, 2000),
    steps: int = 5,
    replays: tuple[int, ...] = (0, 50),
    epochs: int = 10,
    out: str | Path = "benchmarks/results/class_incremental.json",
) -> dict[str, Any]:
    import shutil

    from inca.data import make_splits
    from inca.recipes.add_classes import add_classes, new_classes_task, trained_config
    from inca.recipes.plan_run import train
    from inca.recipes.run_options import RunOptions
    from inca.tasks import load_task
    from inca.tasks.open_classes import calibrate, held_out_tokens, merge_tasks

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
                                     "steps": groups}}  # fmt: skip
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        first = new_classes_task(data, groups[0], out=root / "step1", cache=root / "c1", **common)
        print(f"step 1 {groups[0]}: {100 * first['test_acc']:.2f}%", flush=True)
        for replay in replays:
            task = root / f"replay{replay}"
            shutil.copytree(root / "step1", task)
            rows = [{"step": 1, "classes": groups[0], "test_acc": first["test_acc"],
                     "first_classes_acc": _mean(first, groups[0])}]  # fmt: skip
            for k, group in enumerate(groups[1:], start=2):
                rec = add_classes(task, data, group, replay=replay, config=config,
                                  sizes=sizes, cache=root / f"c-r{replay}-s{k}")  # fmt: skip
                rows.append({"step": k, "classes": group, "test_acc": rec["test_acc"],
                             "first_classes_acc": _mean(rec, groups[0])})  # fmt: skip
                print(f"replay {replay}, step {k} {group}: {100 * rec['test_acc']:.2f}% over "
                      f"{2 * k} classes", flush=True)  # fmt: skip
            res[f"replay_{replay}"] = rows
        joint = train(RunOptions(model=model, data=data, plan=f"inca taps={tap} lr=1e-3,3e-3",
                                 train_size=sizes[0], val_size=sizes[1], test_size=sizes[2],
                                 image_size=image_size, train=config, cache=str(root / "cj")),
                      root / "joint")  # fmt: skip
        res["joint"] = joint["selection"]["best"]
        print(f"joint InCA on all classes: {100 * res['joint']['test_acc']:.2f}%", flush=True)
        half = len(names) // 2
        for i, part in enumerate((names[:half], names[half:])):
            new_classes_task(data, part, out=root / f"half{i}", cache=root / f"ch{i}", **common)
        merged = merge_tasks(load_task(root / "half0"), load_task(root / "half1"), "merged")
        tokens, labels = held_out_tokens(merged, data, sizes[1])
        cal = calibrate(merged, tokens, labels)
        res["merge"] = {"val_before": cal["acc_before"], "val_after": cal["acc_after"],
                        **_test_merged(merged, data, sizes)}  # fmt: skip
        print(f"merged halves: test {100 * res['merge']['test_before']:.2f}% before, "
              f"{100 * res['merge']['test_after']:.2f}% after calibration", flush=True)  # fmt: skip
    final = {r: res[f"replay_{r}"][-1]["test_acc"] for r in replays}
    res["gap_to_joint_points"] = {r: 100 * (res["joint"]["test_acc"] - a) for r, a in final.items()}
    write_json(Path(out), res)
    print(classes_table(res))
    return res


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
    replays = [k for k in res if k.startswith("replay_")]
    lines = ["| step | classes | " + " | ".join(
        f"all seen ({k.replace('_', ' ')}) | first step's ({k.replace('_', ' ')})"
        for k in replays) + " |", "|---|---|" + "---|---|" * len(replays)]  # fmt: skip
    for i, row in enumerate(res[replays[0]]):
        cells = []
        for k in replays:
            r = res[k][i]
            cells += [f"{100 * r['test_acc']:.2f}%", f"{100 * r['first_classes_acc']:.2f}%"]
        lines.append(f"| {row['step']} | {', '.join(row['classes'])} | " + " | ".join(cells) + " |")
    j, m = res["joint"], res["merge"]
    lines += [
        "",
        f"Joint InCA on all classes (upper bound): {100 * j['test_acc']:.2f}% test.",
        "Final gap to joint: " + ", ".join(
            f"replay {r}: {g:.2f} points" for r, g in res["gap_to_joint_points"].items()) + ".",
        f"Two 5-class halves trained apart, merged: {100 * m['test_before']:.2f}% test before "
        f"calibration, {100 * m['test_after']:.2f}% after (validation "
        f"{100 * m['val_before']:.2f}% -> {100 * m['val_after']:.2f}%).",
    ]  # fmt: skip
    return "\n".join(lines)
