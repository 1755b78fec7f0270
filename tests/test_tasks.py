"""Saved tasks give the same outputs after a reload; a multi-task pass == each task alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import inca
import inca.tasks.multi as multi_module
import inca.tasks.storage as storage
import inca.tasks.task as task_module
from inca.adapters import adapter_config, build_adapter
from inca.errors import IncaError
from inca.tasks import MultiTask, Task, load_task

CLASSES = ["ant", "bee", "cat"]


@pytest.fixture(scope="module")
def backbone() -> inca.Backbone:
    return inca.load_backbone("tiny-dinov2", precision="fp32", device="cpu")


def make_adapter(backbone, tap: str, kind: str, seed: int, **options):
    """An adapter with random (not initial) weights, so every parameter matters."""
    config = adapter_config(kind, options)
    width = backbone.taps[tap.split("+")[0]].dim
    adapter = build_adapter(config, width, len(CLASSES), backbone.num_prefix_tokens)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return adapter.eval()


def make_task(
    backbone, name: str, specs: list[tuple[str, str, str, dict]], seed: int = 0, weights=None
) -> Task:
    """specs: (member name, tap, kind, options)."""
    members = [
        (member, tap, make_adapter(backbone, tap, kind, seed + i, **options))
        for i, (member, tap, kind, options) in enumerate(specs)
    ]
    method = "ensemble" if len(members) > 1 else specs[0][2]
    return Task.from_adapters(
        name, method, backbone, CLASSES, members, metrics={"val_acc": 0.5}, weights=weights
    )


ENSEMBLE = [
    ("block.1/inca", "block.1", "inca", {"heads": 2}),
    ("final/linear", "final", "linear", {}),
    ("block.1/inca-q2", "block.1", "inca", {"queries": 2, "mlp_ratio": 1.0}),
]


def pixels(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def probs_of(task: Task, backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return task(backbone.forward_taps(x, task.taps))


MULTI_TAP = [
    ("pair", "block.1+final", "inca", {"heads": 2}),
    ("final/linear", "final", "linear", {}),
]


@pytest.mark.parametrize(
    "specs",
    [[("final/inca", "final", "inca", {})], ENSEMBLE, MULTI_TAP],
    ids=["single", "ensemble", "multi-tap"],
)
def test_save_load_gives_identical_probabilities(backbone, tmp_path, specs) -> None:
    task = make_task(backbone, "demo", specs)
    task.save(tmp_path / "demo")
    loaded = load_task(tmp_path / "demo")
    assert not loaded.training
    assert loaded.member_names == task.member_names == [s[0] for s in specs]
    assert loaded.taps == task.taps
    assert (loaded.name, loaded.method, loaded.class_names) == ("demo", task.method, CLASSES)
    assert (loaded.metrics, loaded.created) == ({"val_acc": 0.5}, task.created)
    x = pixels()
    expected = probs_of(task, backbone, x)
    torch.testing.assert_close(probs_of(loaded, backbone, x), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(expected.sum(-1), torch.ones(4))


def member_probs(task: Task, tokens: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each member's (B, C) probabilities, computed alone (a tap group's member on its taps'
    normalised tokens, joined along the token axis)."""
    normed = {t: inca.adapters.normalize_tokens(x) for t, x in tokens.items()}
    with torch.no_grad():
        return [
            task.member(m)(torch.cat([normed[t] for t in tap.split("+")], dim=1)).softmax(-1)
            for m, tap in task.member_taps.items()
        ]


def test_ensemble_is_the_mean_of_member_probabilities(backbone) -> None:
    task = make_task(backbone, "demo", ENSEMBLE)
    assert task.member_weights is None
    tokens = backbone.forward_taps(pixels(), task.taps)
    alone = member_probs(task, tokens)
    with torch.no_grad():
        torch.testing.assert_close(task(tokens), sum(alone) / 3, rtol=0, atol=1e-6)


def test_weighted_task_is_the_weighted_mean(backbone) -> None:
    task = make_task(backbone, "demo", ENSEMBLE, weights=[3, 1, 1])  # greedy: 3 + 1 + 1 steps
    assert task.member_weights == pytest.approx(
        {"block.1/inca": 0.6, "final/linear": 0.2, "block.1/inca-q2": 0.2}
    )
    tokens = backbone.forward_taps(pixels(), task.taps)
    a, b, c = member_probs(task, tokens)
    with torch.no_grad():
        out = task(tokens)
    torch.testing.assert_close(out, 0.6 * a + 0.2 * b + 0.2 * c, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.sum(-1), torch.ones(4))
    # weights given as a mapping, e.g. another task's member_weights, mean the same
    again = make_task(backbone, "again", ENSEMBLE, weights=task.member_weights)
    assert again.member_weights == task.member_weights
    # MultiTask serves the weighted mean too
    served = MultiTask([task], backbone=backbone)
    torch.testing.assert_close(served.predict_proba(pixels())["demo"], out, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, 1.0], "3 members but 2 weights"),
        ([1.0, 0.0, 1.0], "'final/linear': weight 0.0 is not a finite number > 0"),
        ([1.0, 1.0, -2.0], "weight -2.0 is not"),
        ([1.0, float("nan"), 1.0], "weight nan is not"),
        ([float("inf"), 1.0, 1.0], "weight inf is not"),
        ([True, 1.0, 1.0], "weight True is not"),
        (["1", 1.0, 1.0], "weight '1' is not"),
        (0.5, "weights must be numbers"),
        ({"final/linear": 1.0}, "the weights name"),
    ],
    ids=["count", "zero", "negative", "nan", "inf", "bool", "str", "scalar", "mapping"],
)
def test_bad_weights_are_refused(backbone, weights, message) -> None:
    with pytest.raises(IncaError, match=message):
        make_task(backbone, "demo", ENSEMBLE, weights=weights)


def test_on_disk_format(backbone, tmp_path) -> None:
    task = make_task(backbone, "demo", ENSEMBLE)
    task.save(tmp_path / "demo")
    text = (tmp_path / "demo" / "task.json").read_text()
    record = json.loads(text)
    assert text == json.dumps(record, indent=2, sort_keys=True) + "\n"
    assert record["format"] == "inca-task" and record["version"] == 1
    assert record["backbone"] == {
        "name": "tiny-dinov2",
        "weights_hash": backbone.weights_hash,
        "preprocess": json.loads(json.dumps(backbone.preprocess.to_dict())),
        "num_prefix_tokens": 1,
    }
    assert [m["name"] for m in record["members"]] == [s[0] for s in ENSEMBLE]
    assert record["members"][1] == {
        "name": "final/linear",
        "kind": "linear",
        "tap": "final",
        "config": {"pool": "cls+mean", "solver": "adamw"},
        "in_dim": 32,
    }
    tensors = load_file(tmp_path / "demo" / "adapters.safetensors")
    assert set(tensors) >= {"final/linear/head.weight", "block.1/inca/queries"}
    assert {k.rpartition("/")[0] for k in tensors} == {s[0] for s in ENSEMBLE}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary leftovers


def test_weights_survive_save_and_load(backbone, tmp_path) -> None:
    task = make_task(backbone, "demo", ENSEMBLE, weights=[2, 1, 1])
    task.save(tmp_path / "demo")
    record = json.loads((tmp_path / "demo" / "task.json").read_text())
    assert [m["weight"] for m in record["members"]] == [0.5, 0.25, 0.25]
    loaded = load_task(tmp_path / "demo")
    assert loaded.member_weights == task.member_weights
    x = pixels()
    torch.testing.assert_close(
        probs_of(loaded, backbone, x), probs_of(task, backbone, x), rtol=0, atol=1e-6
    )


def test_task_json_without_weights_loads_uniform(backbone, tmp_path) -> None:
    """A task saved before weights existed has no "weight" field: it is a uniform mean."""
    make_task(backbone, "demo", ENSEMBLE, weights=[5, 1, 1]).save(tmp_path / "demo")
    edit_json(tmp_path / "demo", lambda r: [m.pop("weight") for m in r["members"]])
    loaded = load_task(tmp_path / "demo")
    assert loaded.member_weights is None
    uniform = make_task(backbone, "demo", ENSEMBLE)  # same seeds: same adapters
    x = pixels()
    torch.testing.assert_close(
        probs_of(loaded, backbone, x), probs_of(uniform, backbone, x), rtol=0, atol=1e-6
    )
    uniform.save(tmp_path / "uniform")  # and a uniform task still writes no weights
    record = json.loads((tmp_path / "uniform" / "task.json").read_text())
    assert all("weight" not in m for m in record["members"])


def test_member_names_need_not_be_module_names(backbone, tmp_path) -> None:
    """ModuleDict keys cannot hold "." or shadow attributes; real names survive anyway."""
    names = ["block.1", "block_1", "keys", "%2E", "a/b"]
    task = make_task(backbone, "demo", [(n, "block.1", "linear", {"pool": "cls"}) for n in names])
    assert len(set(task.members.keys())) == 5
    task.save(tmp_path / "t")
    loaded = load_task(tmp_path / "t")
    assert loaded.member_names == names
    for n in names:
        torch.testing.assert_close(loaded.member(n).head.weight, task.member(n).head.weight)


def test_each_tap_is_normalised_once(backbone, monkeypatch) -> None:
    calls: list[int] = []
    real = task_module.normalize_tokens
    monkeypatch.setattr(task_module, "normalize_tokens", lambda t: calls.append(1) or real(t))
    task = make_task(backbone, "demo", ENSEMBLE)
    probs_of(task, backbone, pixels())
    assert len(calls) == 2  # block.1 (two members) and final


def test_from_adapters_checks_its_inputs(backbone) -> None:
    a = make_adapter(backbone, "final", "linear", 0)
    with pytest.raises(IncaError, match="valid taps"):
        Task.from_adapters("t", "linear", backbone, CLASSES, [("m", "block.9", a)])
    with pytest.raises(IncaError, match="appears twice"):
        Task.from_adapters("t", "linear", backbone, CLASSES, [("m", "final", a), ("m", "final", a)])
    with pytest.raises(IncaError, match="3 classes but the task has 2 class names"):
        Task.from_adapters("t", "linear", backbone, ["x", "y"], [("m", "final", a)])
    with pytest.raises(IncaError, match="no members"):
        Task.from_adapters("t", "linear", backbone, CLASSES, [])
    wide = build_adapter(adapter_config("linear"), 64, 3)
    with pytest.raises(IncaError, match="width 64 but tap 'final'.* has width 32"):
        Task.from_adapters("t", "linear", backbone, CLASSES, [("m", "final", wide)])


# --------------------------------------------------------------------------- multi-task
def three_tasks(backbone) -> list[Task]:
    return [
        make_task(backbone, "a", [("final/inca", "final", "inca", {})], seed=1),
        make_task(backbone, "b", [("block.0/linear", "block.0", "linear", {"pool": "mean"})], 2),
        make_task(backbone, "c", ENSEMBLE, seed=3),
    ]


def test_multitask_equals_each_task_alone_in_one_pass(backbone, monkeypatch) -> None:
    tasks = three_tasks(backbone)
    x = pixels(5)
    alone = {t.name: probs_of(t, backbone, x) for t in tasks}
    served = MultiTask(tasks, backbone=backbone)
    assert served.task_names == ["a", "b", "c"]
    assert sorted(served.taps) == ["block.0", "block.1", "final"]
    calls: list[list[str]] = []
    real = backbone.forward_taps
    monkeypatch.setattr(
        backbone, "forward_taps", lambda p, taps: calls.append(taps) or real(p, taps)
    )
    normed: list[int] = []
    norm = multi_module.normalize_tokens
    monkeypatch.setattr(multi_module, "normalize_tokens", lambda t: normed.append(1) or norm(t))
    out = served.predict(x)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(served.taps)
    assert len(normed) == 3  # once per tap, across all tasks
    for name, (labels, probs) in out.items():
        torch.testing.assert_close(probs, alone[name], rtol=0, atol=1e-6)
        assert labels.dtype == torch.int64 and torch.equal(labels, probs.argmax(-1))


def test_multitask_loads_the_tasks_backbone(backbone, tmp_path) -> None:
    tasks = three_tasks(backbone)
    for t in tasks:
        t.save(tmp_path / t.name)
    served = MultiTask([tmp_path / "a", load_task(tmp_path / "c")], device="cpu", precision="fp32")
    assert served.backbone is not backbone and served.backbone.weights_hash == backbone.weights_hash
    x = pixels(2)
    out = served.predict_proba(x)
    torch.testing.assert_close(out["c"], probs_of(tasks[2], backbone, x), rtol=0, atol=1e-6)


def test_tasks_on_different_backbones_are_refused(backbone) -> None:
    vit = inca.load_backbone("tiny-vit", precision="fp32", device="cpu")
    big = inca.load_backbone("tiny-dinov2", image_size=48, precision="fp32", device="cpu")
    spec = [("final/linear", "final", "linear", {})]
    here, on_vit, at_48 = (
        make_task(b, n, spec) for b, n in ((backbone, "x"), (vit, "v"), (big, "b"))
    )
    message = r"tasks 'x' and 'v'.*name 'tiny-dinov2' vs 'tiny-vit'.*separate MultiTask"
    with pytest.raises(IncaError, match=message):
        MultiTask([here, on_vit], backbone=backbone)
    with pytest.raises(IncaError, match=r"tasks 'x' and 'b'.*image size 32 vs 48.*separate"):
        MultiTask([here, at_48], backbone=backbone)
    with pytest.raises(IncaError, match=r"given backbone is not the one.*image size 32 vs 48"):
        MultiTask([here], backbone=big)
    with pytest.raises(IncaError, match=r"given backbone.*name 'tiny-dinov2' vs 'tiny-vit'"):
        MultiTask([here], backbone=vit)


def test_changed_weights_and_duplicate_names_are_refused(backbone) -> None:
    task = make_task(backbone, "a", [("final/linear", "final", "linear", {})])
    task.backbone_info["weights_hash"] = "0123456789abcdef"
    with pytest.raises(IncaError, match="weights of backbone 'tiny-dinov2' have changed"):
        MultiTask([task], device="cpu", precision="fp32")
    twins = [make_task(backbone, "a", [("final/linear", "final", "linear", {})]) for _ in "12"]
    with pytest.raises(IncaError, match="both named 'a'"):
        MultiTask(twins, backbone=backbone)


# --------------------------------------------------------------------------- broken files
@pytest.fixture
def saved(backbone, tmp_path) -> Path:
    path = tmp_path / "task"
    make_task(backbone, "demo", ENSEMBLE).save(path)
    return path


def edit_json(path: Path, change) -> None:
    file = path / "task.json"
    record = json.loads(file.read_text())
    change(record)
    file.write_text(json.dumps(record))


def test_missing_and_corrupt_files_are_named(saved, tmp_path) -> None:
    with pytest.raises(IncaError, match="task directory .*nowhere does not exist"):
        load_task(tmp_path / "nowhere")
    (saved / "adapters.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(IncaError, match="adapters.safetensors is not a readable safetensors"):
        load_task(saved)
    (saved / "adapters.safetensors").unlink()
    with pytest.raises(IncaError, match="adapters.safetensors is missing"):
        load_task(saved)
    (saved / "task.json").write_text("{not json")
    with pytest.raises(IncaError, match="task.json is not readable JSON"):
        load_task(saved)
    (saved / "task.json").unlink()
    with pytest.raises(IncaError, match="task.json is missing.*not a saved inca task"):
        load_task(saved)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(format="other"), "not an inca task file"),
        (lambda r: r.update(version=2), "version 2; this inca reads version 1"),
        (lambda r: r.pop("class_names"), "field class_names is missing"),
        (lambda r: r["members"][0].pop("tap"), r"field members\[0\].tap is missing"),
        (lambda r: r["members"][1]["config"].update(pool="cls"), "'final/linear'.*do not fit"),
        (
            lambda r: r["members"][0].update(kind="nope"),
            "'block.1/inca'.*unknown adapter kind 'nope'",
        ),
        (lambda r: r["members"].pop(2), "tensors of no member"),
        (lambda r: r["members"][0].update(weight=1.0), r"members\[1\] has no weight"),
        (
            lambda r: [m.update(weight=w) for m, w in zip(r["members"], [1, -1, 1], strict=True)],
            r"members\[1\].weight is -1, not a finite number > 0",
        ),
        (
            lambda r: [m.update(weight="1") for m in r["members"]],
            r"members\[0\].weight is '1'",
        ),
    ],
    ids=[
        "format",
        "version",
        "field",
        "member-field",
        "state-dict",
        "kind",
        "extra-tensors",
        "partial-weights",
        "negative-weight",
        "string-weight",
    ],
)
def test_inconsistent_task_json_is_refused(saved, change, message) -> None:
    edit_json(saved, change)
    with pytest.raises(IncaError, match=message) as err:
        load_task(saved)
    assert "task.json" in str(err.value) or "adapters.safetensors" in str(err.value)


def test_interrupted_save_keeps_the_previous_task(backbone, saved, monkeypatch) -> None:
    before = probs_of(load_task(saved), backbone, pixels())
    newer = make_task(backbone, "demo", ENSEMBLE, seed=7)

    def crash(path, data):
        Path(path).write_text('{"half": ')
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        newer.save(saved)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["task"]  # nothing left behind
    torch.testing.assert_close(probs_of(load_task(saved), backbone, pixels()), before)
    monkeypatch.undo()
    newer.save(saved)  # a save that completes replaces it
    torch.testing.assert_close(
        probs_of(load_task(saved), backbone, pixels()), probs_of(newer, backbone, pixels())
    )
    assert sorted(p.name for p in saved.parent.iterdir()) == ["task"]


def test_failed_rename_puts_the_previous_task_back(backbone, saved, monkeypatch) -> None:
    before = probs_of(load_task(saved), backbone, pixels())
    real = os.replace

    def replace(src, dst):
        if str(src).endswith(".tmp"):  # the new task's rename into place
            raise OSError("disk trouble")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk trouble"):
        make_task(backbone, "demo", ENSEMBLE, seed=7).save(saved)
    monkeypatch.undo()
    assert sorted(p.name for p in saved.parent.iterdir()) == ["task"]
    torch.testing.assert_close(probs_of(load_task(saved), backbone, pixels()), before)


def test_a_save_killed_between_renames_is_explained(saved) -> None:
    aside = saved.with_name(".task.old-0123abcd")  # where a killed save leaves the old task
    saved.rename(aside)
    with pytest.raises(IncaError, match=r"interrupted save left the previous version at .*old"):
        load_task(saved)


def test_save_never_replaces_other_files(backbone, tmp_path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    task = make_task(backbone, "demo", [("final/linear", "final", "linear", {})])
    with pytest.raises(IncaError, match="not a saved task, so inca will not replace it"):
        task.save(tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.jpg").exists()


def test_loaded_task_moves_to_a_device(saved) -> None:
    task = load_task(saved).to("cpu")
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in task.parameters())


def test_a_multi_tap_member_reads_its_taps_joined(backbone) -> None:
    task = make_task(backbone, "pair", MULTI_TAP)
    assert task.taps == ["block.1", "final"]
    x = pixels()
    tokens = backbone.forward_taps(x, task.taps)
    expected = torch.stack(member_probs(task, tokens)).mean(0)
    torch.testing.assert_close(probs_of(task, backbone, x), expected, rtol=0, atol=1e-6)
    linear = make_adapter(backbone, "final", "linear", 0)
    with pytest.raises(IncaError, match="reads one tap, not the group"):
        Task.from_adapters("bad", "linear", backbone, CLASSES, [("m", "block.1+final", linear)])
