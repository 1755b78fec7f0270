"""Many tasks served as stacks (``inca.tasks.stacked``) answer exactly as each task alone."""

from __future__ import annotations

import pytest
import torch

import inca
from inca.adapters import adapter_config, build_adapter, normalize_tokens
from inca.methods.inca.adapter import InCAAdapter
from inca.tasks import MultiTask, Task
from inca.tasks.stacked import StackedTasks

CLASSES = ["ant", "bee", "cat"]
TAPS = ["block.0", "block.1", "final"]


@pytest.fixture(scope="module")
def backbone() -> inca.Backbone:
    return inca.load_backbone("tiny-dinov2", precision="fp32", device="cpu")


def random_task(backbone, name: str, seed: int, members: list[tuple[str, str, dict]],
                weights=None) -> Task:  # fmt: skip
    """members: (tap, kind, options); every parameter random, so all of them matter."""
    g = torch.Generator().manual_seed(seed)
    built = []
    for i, (tap, kind, options) in enumerate(members):
        width = backbone.taps[tap.split("+")[0]].dim
        adapter = build_adapter(adapter_config(kind, options), width, len(CLASSES),
                                backbone.num_prefix_tokens)  # fmt: skip
        with torch.no_grad():
            for p in adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        built.append((f"m{i}", tap, adapter.eval()))
    return Task.from_adapters(name, "inca", backbone, CLASSES, built, weights=weights)


def mixed_tasks(backbone, count: int) -> list[Task]:
    """``count`` tasks of every shape a server meets: folded and plain InCA on every tap, other
    head counts, linear probes, tap groups, weighted ensembles, Open-InCA (own buffers)."""
    kinds = [
        [("final", "inca", {"heads": 2})],
        [("block.0", "inca", {"heads": 2, "queries": 2})],
        [("block.1", "linear", {"pool": "cls+mean"})],
        [("block.1", "inca", {"heads": 2}), ("final", "linear", {})],
        [("block.0+final", "inca", {"heads": 2})],
        [("block.1", "inca", {"heads": 2, "path": "plain"})],
        [("final", "open-inca", {"heads": 2})],
        [("block.1", "inca", {"heads": 4, "mlp_ratio": 1.0})],
        [("block.0+block.1+final", "inca", {"heads": 2})],  # a longer group, same shape
    ]
    tasks = []
    for i in range(count):
        members = kinds[i % len(kinds)]
        weights = [1.0 + j for j in range(len(members))] if len(members) > 1 and i % 2 else None
        tasks.append(random_task(backbone, f"t{i:03d}", i, members, weights))
    return tasks


def normed_tokens(backbone, n: int = 5) -> dict[str, torch.Tensor]:
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return {t: normalize_tokens(v) for t, v in backbone.forward_taps(x, TAPS).items()}


def test_stacked_tasks_equal_each_task_alone_and_run_only_what_is_asked(
    backbone, monkeypatch
) -> None:
    tasks = mixed_tasks(backbone, 24)
    normed = normed_tokens(backbone)
    with torch.no_grad():
        alone = {t.name: t.forward_normalized(normed) for t in tasks}
    stacked = StackedTasks({t.name: t for t in tasks})
    # 6 shapes (both linear probes pool cls+mean; each tap group apart: 7), and the 3
    # 2 Open-InCA members each alone: 9 calls for 24 tasks' 26 members
    assert len(stacked.stacks) == 7 + 2
    out = stacked.forward_normalized(normed)
    assert list(out) == [t.name for t in tasks]
    for name, probs in out.items():
        torch.testing.assert_close(probs, alone[name], rtol=1e-5, atol=1e-5, msg=name)
    # a subset: only its tasks come back, and only their members' rows run
    rows: list[int] = []
    real = InCAAdapter.from_pooled

    def counted(self, P, pooled, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        rows.append(pooled.shape[0])
        return real(self, P, pooled, *args, **kw)

    monkeypatch.setattr(InCAAdapter, "from_pooled", counted)
    wanted = {"t000", "t003", "t009"}  # folded InCA (2 tasks) and an ensemble's InCA member
    out = stacked.forward_normalized(normed, wanted)
    assert set(out) == wanted and sum(rows) == 3
    for name in wanted:
        torch.testing.assert_close(out[name], alone[name], rtol=1e-5, atol=1e-5, msg=name)


def test_stacking_keeps_one_copy_of_the_weights(backbone) -> None:
    """Each member's parameters become views of its stack's rows: no second copy."""
    tasks = mixed_tasks(backbone, 8)
    stacked = StackedTasks({t.name: t for t in tasks})
    storages = {p.untyped_storage().data_ptr() for s in stacked.stacks for p in s.parameters()}
    for task in tasks:
        for member in task.member_names:
            adapter = task.member(member)
            if any(True for _ in adapter.buffers()):
                continue  # not stacked: its own weights
            for p in adapter.parameters():
                assert p.untyped_storage().data_ptr() in storages


def test_256_tasks_answer_as_each_alone(backbone) -> None:
    """The issue's case: 256 small tasks on one backbone pass, every answer as the task's own."""
    kinds = [("final", "inca", {"heads": 2}), ("block.1", "inca", {"heads": 2}),
             ("block.0", "linear", {})]  # fmt: skip
    tasks = [random_task(backbone, f"t{i:03d}", 1000 + i, [kinds[i % 3]]) for i in range(256)]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alone = {t.name: t(backbone.forward_taps(x, t.taps)) for t in tasks}
    served = MultiTask(tasks, backbone=backbone)
    assert len(served.stacked.stacks) == 2  # InCA on two taps (one stack), linear probes
    out = served.predict_proba(x)
    assert list(out) == [t.name for t in tasks]
    for name, probs in out.items():
        torch.testing.assert_close(probs, alone[name], rtol=1e-5, atol=1e-5, msg=name)


def test_taps_of_other_token_counts_are_stacked_apart(backbone) -> None:
    """A backbone whose taps differ in token count (CNN stages): members on each shape share
    their own pooling, and the answers stay each task's own."""
    tasks = mixed_tasks(backbone, 18)
    normed = normed_tokens(backbone)
    normed["final"] = normed["final"][:, :9]  # fewer tokens at one tap
    with torch.no_grad():
        alone = {t.name: t.forward_normalized(normed) for t in tasks}
    out = StackedTasks({t.name: t for t in tasks}).forward_normalized(normed)
    for name, probs in out.items():
        torch.testing.assert_close(probs, alone[name], rtol=1e-5, atol=1e-5, msg=name)


def test_stacks_whose_taps_interleave_keep_each_rows_answer(backbone) -> None:
    """Rows of a stack are pooled tap by tap, in an order another stack may set: each row's
    logits must still come back in the stack's row order (a review found two tasks swapped)."""
    tasks = [
        random_task(backbone, "t0", 0, [("final", "inca", {"heads": 2, "queries": 2})]),
        random_task(backbone, "t1", 1, [("block.1", "inca", {"heads": 2})]),
        random_task(backbone, "t2", 2, [("final", "inca", {"heads": 2})]),
    ]
    normed = normed_tokens(backbone)
    with torch.no_grad():
        alone = {t.name: t.forward_normalized(normed) for t in tasks}
    out = StackedTasks({t.name: t for t in tasks}).forward_normalized(normed)
    for name, probs in out.items():
        torch.testing.assert_close(probs, alone[name], rtol=1e-5, atol=1e-5, msg=name)
