"""`inca compare` on a tiny model: every method through one harness; finished methods are kept."""

from __future__ import annotations

import json

import pytest

from inca.cli import main
from tests.conftest import compare_in_process

pytestmark = pytest.mark.integration  # trains end to end: the full tier

ARGS = ["--model", "tiny-dinov2", "--data", "digits", "--image-size", "32", "--train-size", "80",
        "--val-size", "40", "--test-size", "40", "--epochs", "1", "--batch-size", "20",
        "--workers", "0", "--no-progress", "--precision", "fp32", "--min-steps", "0",
        "--halving-epochs", "0",
        "--plans", "inca:inca taps=block.1,block.2 lr=3e-3 heads=2,4 | "
                   "linear taps=block.* pool=cls,cls+mean solver=lbfgs | partial lr=1e-3 "
                   "layer_decay=0.8 | lora lr=1e-3,3e-3 lora_r=4 | full lr=1e-4 layer_decay=0.8 "
                   "| stochca lr=1e-4 | vqt lr=1e-2"]  # fmt: skip


def test_compare_runs_every_method_and_resumes(tmp_path, capsys, monkeypatch) -> None:
    """Every method in this process; the one rerun at the end in a process of its own, as
    `inca compare` runs each method."""
    out = tmp_path / "cmp"
    compare_in_process(monkeypatch)
    assert main(["compare", *ARGS, "--out", str(out)]) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["options"]["plans"]["lora"] == "lora lr=1e-3,3e-3 lora_r=4"
    task = json.loads((out / "lora" / "task" / "task.json").read_text())
    assert task["finetune"]["lora_r"] == 4
    methods = [r["method"] for r in summary["rows"]]
    assert methods == [
        "linear", "inca", "inca-ensemble", "vqt", "partial", "lora", "full", "stochca"
    ]  # fmt: skip
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["lora"]["trainable_params"] < rows["full"]["trainable_params"]
    assert [s["lr"] for s in rows["lora"]["sweep"]] == [1e-3, 3e-3]
    assert rows["lora"]["task_bytes"] < rows["full"]["task_bytes"]
    assert rows["vqt"]["trainable_params"] < rows["lora"]["trainable_params"]
    assert rows["vqt"]["task_bytes"] < rows["stochca"]["task_bytes"]
    # each method's wall time covers what its own log timed: the fine-tuning sweeps' epochs,
    # the frozen-feature methods' epochs plus the activation cache they train from
    build = json.loads((out / "cache" / "build.json").read_text())["seconds"]
    for m, r in rows.items():
        floor = r["curve"][-1]["seconds"] if r.get("curve") else 0.0
        assert r["train_time_s"] >= floor and r["train_time_s"] > 0, m
        if m in ("linear", "inca"):
            assert r["train_time_s"] >= build > 0
    # frozen-feature methods: trained from one shared cache, its build counted in their time
    for m in ("linear", "inca"):
        assert "activation cache built in" in rows[m]["note"]
    assert rows["inca"]["curve"] and rows["inca"]["epochs"] >= 1
    assert rows["lora"]["curve"][-1]["seconds"] > 0  # fine-tuning logs time per epoch now
    assert (out / "cache" / "build.json").is_file()
    assert (out / "compare.md").is_file() and (out / "accuracy_vs_cost.png").is_file()
    # the saved tasks predict, adapter and fine-tuned alike
    assert main(["eval", str(out / "lora" / "task"), "--no-progress"]) == 0
    assert main(["eval", str(out / "inca"), "--no-progress"]) == 0
    assert main(["eval", str(out / "vqt" / "task"), "--no-progress"]) == 0
    capsys.readouterr()
    # a finished method is not rerun
    assert main(["compare", *ARGS, "--out", str(out), "--methods", "lora,linear"]) == 0
    assert "lora: done before, not rerun" in capsys.readouterr().out
    # another frozen-feature budget reruns only the frozen-feature methods (in its own process)
    monkeypatch.undo()
    assert main(["compare", *ARGS, "--out", str(out), "--methods", "lora,inca",
                 "--patience", "5"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "lora: done before, not rerun" in printed and "inca: done before with other" in printed


def test_other_options_are_refused(tmp_path, capsys) -> None:
    from inca.recipes.compare import compare
    from inca.recipes.compare_options import CompareOptions

    (tmp_path / "options.json").write_text('{"model": "other"}')
    import pytest

    from inca.errors import IncaError

    with pytest.raises(IncaError, match="other options"):
        compare(["linear"], CompareOptions(model="tiny-vit"), tmp_path)


def test_train_runs_one_method(tmp_path, capsys) -> None:
    out = tmp_path / "vqt"
    args = ["train", *ARGS[: ARGS.index("--plans")], "--out", str(out),
            "--plan", "vqt lr=1e-2,3e-2 queries=2 layer_queries=0:0"]  # fmt: skip
    assert main(args) == 0
    row = json.loads((out / "result.json").read_text())["rows"][0]
    assert [s["lr"] for s in row["sweep"]] == [1e-2, 3e-2]
    assert row["runs"] == 1 and "one backbone pass" in row["note"]  # VQT's sweep shares a pass
    assert (out / "lr0.01+0.03" / "log.jsonl").is_file()
    task = json.loads((out / "task" / "task.json").read_text())
    assert task["method"] == "vqt" and task["finetune"]["layer_queries"] == "0:0"
    assert "saved task" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0
    assert "not rerun" in capsys.readouterr().out
    assert main(["eval", str(out / "task"), "--no-progress"]) == 0


def test_results_made_before_options_were_recorded_are_kept_or_rerun() -> None:
    """A comparison directory from before this change (one shared "train" budget, results with
    no options): fine-tuning results stay valid while their budget is unchanged; frozen-feature
    results were made with that epoch budget, so they are rerun."""
    from inca.recipes.compare import legacy_options
    from inca.recipes.compare_options import CompareOptions
    from inca.recipes.method_run import method_options
    from inca.train import FROZEN_DEFAULTS, TrainConfig

    ft = TrainConfig(progress=False)
    now = CompareOptions("m", "d", 112, 10_000, 2_000, None, train=ft,
                         frozen=TrainConfig(**FROZEN_DEFAULTS)).to_dict()  # fmt: skip
    saved = {k: v for k, v in now.items() if k != "frozen"}  # the old options.json
    assert legacy_options("full", saved) == method_options("full", now)
    assert legacy_options("inca", saved) != method_options("inca", now)
    assert now["train"] == {"epochs": 4, "batch_size": 64, "eval_batch_size": 128, "warmup": 0.1,
                            "label_smoothing": 0.0, "augment": True, "seed": 0, "workers": None,
                            "progress": False}  # fmt: skip  # keys as old options.json has them


def test_wall_times_from_other_machines_are_not_compared() -> None:
    from inca.report.compare import compare_table

    def row(method, seconds, cpu, bf16):
        machine = {"cpu": cpu, "cores": 2, "native_bf16": bf16}
        return {"method": method, "test_acc": 0.9, "val_acc": 0.9, "train_time_s": seconds,
                "peak_rss_mib": 1.0, "trainable_params": 1, "task_bytes": 1, "selected": "x",
                "sweep": [], "machine": machine}  # fmt: skip

    summary = {"budget": "b", "rows": [row("full", 1000, "A", True), row("lora", 500, "A", True),
                                       row("inca", 100, "B", False)]}  # fmt: skip
    lines = {line.split("|")[1].strip(): line for line in compare_table(summary).splitlines()
             if line.startswith("| ") and "method" not in line}  # fmt: skip
    assert "| 50% |" in lines["lora"] and "| 10% |" not in lines["inca"]
    assert "other machine" in lines["inca"] and "B, 2 cores, no native bf16" in lines["inca"]
    one = {"budget": "b", "rows": summary["rows"][:2]}
    assert "Measured on one machine: A, 2 cores, AVX512-BF16" in compare_table(one)


def _row(method, val, test, seconds, machine="A", **more):
    return {"method": method, "val_acc": val, "test_acc": test, "train_time_s": seconds,
            "peak_rss_mib": 1.0, "trainable_params": 1, "task_bytes": 1, "selected": "x",
            "sweep": [], "machine": {"cpu": machine, "cores": 2, "native_bf16": True},
            **more}  # fmt: skip


def test_decision_is_the_best_on_validation_and_the_cheapest_within_half_a_point() -> None:
    from inca.report.compare import compare_table, decision

    full, inca = _row("full", 0.911, 0.909, 4308), _row("inca-ensemble", 0.929, 0.909, 640)
    lora, linear = _row("lora", 0.907, 0.903, 3298), _row("linear", 0.925, 0.87, 400)
    far = _row("vqt", 0.9286, 0.95, 10, machine="B")  # close and cheap, but timed elsewhere
    # the best on validation; the cheapest within 0.5 points (its test score decides nothing)
    assert decision([full, inca, lora, linear, far]) == (inca, linear)
    slow = _row("linear", 0.9239, 0.99, 100)  # 0.51 points below: not as good
    assert decision([full, inca, slow]) == (inca, inca)
    text = compare_table({"budget": "b", "rows": [full, inca, linear]})
    assert text.splitlines()[-1] == (
        "Decision (accuracy): the best on validation is **inca-ensemble** (validation 92.90%, "
        "test 90.90%, 640 s); the cheapest within 0.5 points of it is **linear** (validation "
        "92.50%, test 87.00%, 400 s), 0.62x its time."
    )
    assert compare_table({"budget": "b", "rows": [full, inca]}).endswith(
        "no method within 0.5 points costs less."
    )


def test_imbalanced_rows_are_judged_by_balanced_accuracy() -> None:
    from inca.report.compare import compare_table, decision

    # the majority class flatters "full": more accurate, fewer classes recalled
    full = _row("full", 0.95, 0.94, 1000, val_balanced_acc=0.70, test_balanced_acc=0.71)
    inca = _row("inca", 0.90, 0.90, 100, val_balanced_acc=0.85, test_balanced_acc=0.86)
    assert decision([full, inca]) == (inca, inca)
    text = compare_table({"budget": "b", "rows": [full, inca]})
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert header.startswith("| method | test bal. acc | val bal. acc | test acc |")
    body = [line for line in text.splitlines() if line.startswith("| inca") or
            line.startswith("| full")]  # fmt: skip
    assert body[0].startswith("| inca | 86.00% | 85.00% | 90.00%")  # ranked by balanced
    assert "+15.00 pp" in body[0] and "Decision (balanced accuracy)" in text
    even = [_row("full", 0.95, 0.94, 1000, test_balanced_acc=0.9395), _row("lora", 0.9, 0.9, 1)]
    assert "bal. acc" not in compare_table({"budget": "b", "rows": even})


def test_compare_rows_are_the_main_jobs_to_the_digit(tmp_path, monkeypatch) -> None:
    """No plans given: compare's inca, inca-ensemble and linear rows are the main job's best
    member, ensemble and reference probe, from the same taps."""
    base = ARGS[: ARGS.index("--plans")]
    base[base.index("--epochs") + 1] = "2"  # the default halving after epoch 2, then one more
    base = base[: base.index("--halving-epochs")]
    assert main(["train", *base, "--out", str(tmp_path / "train")]) == 0
    results = json.loads((tmp_path / "train" / "results.json").read_text())
    compare_in_process(monkeypatch)
    out = tmp_path / "cmp"
    assert main(["compare", *base, "--methods", "linear,inca", "--out", str(out)]) == 0
    summary = json.loads((out / "compare.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    sel = results["selection"]
    picks = {"inca": sel["best"], "inca-ensemble": sel["ensemble"], "linear": results["reference"]}
    for method, pick in picks.items():
        for key in ("val_acc", "test_acc", "val_balanced_acc", "test_balanced_acc"):
            assert rows[method][key] == pick[key], (method, key)
    assert rows["inca"]["selected"] == sel["best"]["name"]
    assert rows["linear"]["selected"] == results["reference"]["name"]
    ens = sel["ensemble"]
    assert rows["inca-ensemble"]["selected"] == f"{ens['method']} {ens['k']}"
    taps = {a["tap"] for a in results["adapters"]}  # what the main job read, and cached
    cached = summary["options"]["cache_taps"]
    assert cached == [t for t in results["run"]["taps_order"] if t in taps]
    # the linear probes the inca plan fits too are the linear row's cost, unless a pick uses one
    kind = {a["name"]: a["kind"] for a in results["adapters"]}
    for method, members in (("inca", [sel["best"]["name"]]),
                            ("inca-ensemble", sel["ensemble"]["members"])):  # fmt: skip
        uses_probe = any(kind[m] == "linear" for m in members)
        assert rows[method]["probes_time_s"] > 0
        assert ("linear row's cost" in rows[method]["note"]) != uses_probe, method
    assert "Decision (accuracy)" in (out / "compare.md").read_text()
