"""The analytic head and the anchors: statistics accumulated in steps, in any class order, give
exactly the joint ridge; GCV is the textbook formula; descriptors pool what they say; and
through `inca classes new/add/remove/merge` on a tiny ViT the promises hold (added = joint,
removed = other rows bit-identical, merged = joint, refusals leave the files as they were)."""

from __future__ import annotations

import pytest
import torch

from inca.errors import IncaError
from inca.methods.analytic import (
    AnalyticConfig,
    AnalyticHead,
    ClassMeans,
    RandomFeatureRidge,
    RidgeStatistics,
    default_cells,
    descriptors,
)
from inca.methods.analytic.descriptors import descriptor_width


def problem(n: int = 300, f: int = 24, c: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, f, generator=g) * 2
    y = torch.randint(c, (n,), generator=g)
    return centres[y] + torch.randn(n, f, generator=g), y


def stepwise(x: torch.Tensor, y: torch.Tensor, order: list[int], per: int = 2) -> RidgeStatistics:
    """Statistics accumulated as classes arrive ``per`` at a time in ``order`` (labels renamed
    to the arrival order, as a task numbers them), in batches of 17."""
    rename = torch.empty(len(order), dtype=torch.long)
    rename[torch.tensor(order)] = torch.arange(len(order))
    stats = RidgeStatistics.empty(x.shape[1])
    for s in range(0, len(order), per):
        stats = stats.with_classes(per)
        rows = ((rename[y] >= s) & (rename[y] < s + per)).nonzero().flatten()
        for b in rows.split(17):
            stats.add(x[b], rename[y[b]])
    return stats


def test_statistics_in_steps_equal_the_joint_solve_in_every_order() -> None:
    x, y = problem()
    joint = RidgeStatistics.empty(x.shape[1], 6)
    joint.add(x, y)
    w_joint, lam = joint.solve()
    direct = torch.linalg.solve(
        x.double().T @ x.double() + lam * torch.eye(x.shape[1], dtype=torch.float64),
        x.double().T @ torch.nn.functional.one_hot(y, 6).double(),
    )
    torch.testing.assert_close(w_joint, direct, rtol=1e-5, atol=1e-8)  # the textbook ridge
    for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 4, 2], [2, 4, 0, 5, 1, 3]):
        stats = stepwise(x, y, order)
        w, step_lam = stats.solve()
        assert step_lam == pytest.approx(lam, rel=1e-9)  # GCV: the same statistics, the same λ
        torch.testing.assert_close(w[:, torch.argsort(torch.tensor(order))], w_joint,
                                   rtol=1e-5, atol=1e-8)  # fmt: skip


def test_gcv_is_the_textbook_score_from_the_hat_matrix() -> None:
    x, y = problem(n=80, f=10, c=3)
    stats = RidgeStatistics.empty(10, 3)
    stats.add(x, y)
    Y = torch.nn.functional.one_hot(y, 3).double()
    X = x.double()

    def gcv(lam: float) -> float:
        H = X @ torch.linalg.solve(X.T @ X + lam * torch.eye(10, dtype=torch.float64), X.T)
        rss = ((Y - H @ Y) ** 2).sum()
        return float(len(X) * rss / (len(X) - H.trace()) ** 2)

    lams = stats.candidate_lambdas()
    assert stats.solve()[1] == min(lams, key=gcv)


def test_statistics_round_trip_and_damage_is_refused() -> None:
    x, y = problem(f=7)
    stats = RidgeStatistics.empty(7, 6)
    stats.add(x, y)
    back = RidgeStatistics.from_tensors(stats.tensors(), "t")
    assert torch.equal(back.gram, stats.gram) and torch.equal(back.targets, stats.targets)
    assert torch.equal(back.counts, stats.counts) and back.images == stats.images
    broken = stats.tensors() | {"counts": torch.zeros(5, dtype=torch.float64)}
    with pytest.raises(IncaError, match="inconsistent shapes"):
        RidgeStatistics.from_tensors(broken, "t")
    with pytest.raises(IncaError, match="not the statistics"):
        RidgeStatistics.from_tensors({"targets": stats.targets}, "t")
    with pytest.raises(IncaError, match="width 3"):
        stats.add(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_removing_a_class_drops_its_column_and_merging_is_the_joint_statistics() -> None:
    x, y = problem()
    low, high = y < 3, y >= 3
    a, b = RidgeStatistics.empty(24, 3), RidgeStatistics.empty(24, 3)
    a.add(x[low], y[low])
    b.add(x[high], y[high] - 3)
    joint = RidgeStatistics.empty(24, 6)
    joint.add(x, y)
    both = a.merged(b)
    torch.testing.assert_close(both.gram, joint.gram)
    torch.testing.assert_close(both.solve()[0], joint.solve()[0], rtol=1e-5, atol=1e-8)
    less = joint.without_class(2)
    w, lam = joint.solve()
    torch.testing.assert_close(less.solve(lam)[0], w[:, [0, 1, 3, 4, 5]], rtol=1e-9, atol=1e-12)
    assert less.images == joint.images and less.counts.sum() < joint.counts.sum()


def test_descriptors_are_cls_mean_and_cell_means() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1 + 16, 5)  # CLS + a 4 x 4 patch grid
    d = descriptors(x, 1, 2)
    assert d.shape == (2, descriptor_width(5, 2, 1)) == (2, 6 * 5)
    grid = x[:, 1:].view(2, 4, 4, 5)
    torch.testing.assert_close(d[:, :5], x[:, 0])
    torch.testing.assert_close(d[:, 5:10], x[:, 1:].mean(1))
    torch.testing.assert_close(d[:, 10:15], grid[:, :2, :2].mean((1, 2)))  # top-left cell
    torch.testing.assert_close(d[:, 25:30], grid[:, 2:, 2:].mean((1, 2)))  # bottom-right
    runs = descriptors(torch.randn(2, 10, 5), 0, 1)  # no CLS, a sequence that is no square
    assert runs.shape == (2, 2 * 5)
    assert default_cells(384, 64) == 4 and default_cells(1024, 256) == 2
    assert default_cells(32, 16) == 4 and default_cells(8192, 64) == 1


def test_the_head_computes_the_solution_and_removal_keeps_other_rows() -> None:
    torch.manual_seed(0)
    tokens = torch.nn.functional.layer_norm(torch.randn(40, 17, 8), (8,))
    y = torch.randint(4, (40,))
    head = AnalyticHead(AnalyticConfig(), 8, 4, 1, patch_tokens=16)
    assert head.config.cells == 4  # resolved from the width and the grid, and saved
    stats = RidgeStatistics.empty(head.features, 4)
    stats.add(head.features_of(tokens), y)
    solved = head.set_solution(*stats.solve())
    expect = head.features_of(tokens).double() @ stats.solve()[0]
    torch.testing.assert_close(solved(tokens).double(), expect, rtol=1e-4, atol=1e-4)
    less = solved.without_class(1)
    assert torch.equal(less.weight, solved.weight[[0, 2, 3]])
    from inca.adapters.stack import AdapterStack

    other = solved.without_class(0).without_class(0).set_solution(torch.randn(head.features, 4), 1)
    stacked = AdapterStack([solved, other])(tokens.unsqueeze(0).expand(2, -1, -1, -1))
    torch.testing.assert_close(stacked[0], solved(tokens))
    torch.testing.assert_close(stacked[1], other(tokens))


def test_the_anchors_are_order_free_and_fit_on_validation() -> None:
    x, y = problem(n=400)
    means_a, means_b = ClassMeans(24), ClassMeans(24)
    means_a.add(x, y)
    for c in (5, 2, 0, 3, 1, 4):
        means_b.add(x[y == c], y[y == c])
    torch.testing.assert_close(means_a.logits(x), means_b.logits(x))
    assert (means_a.logits(x).argmax(1) == y).double().mean() > 0.9
    ridge = RandomFeatureRidge(24, width=200)
    ridge.add(x[:300], y[:300])
    weight, lam = ridge.fit(x[300:], y[300:])
    assert lam in ridge.stats.candidate_lambdas()
    assert (ridge.logits(x[300:], weight).argmax(1) == y[300:]).double().mean() > 0.9


# ---------------------------------------------------------------------- through the CLI
@pytest.mark.integration
def test_classes_added_over_time_equal_the_joint_head_through_the_cli(tmp_path, capsys) -> None:
    """new 0-4, add 5-6, add 7-9 == new 0-9 (the same images, one step); remove keeps the
    other rows bit for bit; merging two tasks made apart is the joint head again; refusals
    (--replay, --calibrate, a trained task in a merge) leave the files as they were."""
    import inca
    from inca.cli import main
    from inca.recipes.analytic_classes import STATISTICS, load_statistics
    from inca.tasks import MultiTask, load_task

    def new(classes: str, out: str) -> list[str]:
        return ["classes", "new", "--data", "digits", "--classes", classes, "--model",
                "tiny-vit", "--image-size", "32", "--tap", "block.1", "--train-size", "300",
                "--no-progress", "--out", str(tmp_path / out), "--cache",
                str(tmp_path / f"c-{out}")]  # fmt: skip

    def add(task: str, classes: str, *extra: str) -> list[str]:
        return ["classes", "add", str(tmp_path / task), "--data", "digits", "--classes",
                classes, "--train-size", "300", "--no-progress", "--cache",
                str(tmp_path / f"c-{task}-{classes}"), *extra]  # fmt: skip

    assert main(new("0,1,2,3,4", "t")) == 0
    assert main(add("t", "5,6")) == 0
    assert main(add("t", "7,8,9")) == 0
    assert main(new(",".join(map(str, range(10))), "joint")) == 0
    assert "refit" in capsys.readouterr().out
    grown, joint = load_task(tmp_path / "t"), load_task(tmp_path / "joint")
    assert grown.class_names == joint.class_names == [str(i) for i in range(10)]
    torch.testing.assert_close(grown.member("t").weight, joint.member("joint").weight,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert grown.metrics["added"][-1]["refit"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "t").iterdir()}
    for argv, says in [(add("t", "5"), "already"), (add("t", "x", "--replay", "5"), "count twice"),
                       (add("t", "x", "--calibrate"), "drop --calibrate")]:  # fmt: skip
        assert main(argv) == 2
        assert says in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "t").iterdir()} == before

    assert main(["classes", "remove", str(tmp_path / "t"), "3", "--out", str(tmp_path / "r")]) == 0
    removed = load_task(tmp_path / "r").member("t")
    keep = [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert torch.equal(removed.weight, grown.member("t").weight[keep])  # bit for bit
    assert load_statistics(tmp_path / "r").num_classes == 9

    assert main(new("5,6,7,8,9", "high")) == 0 and main(new("0,1,2,3,4", "low")) == 0
    merge = ["classes", "merge", str(tmp_path / "low"), str(tmp_path / "high"), "--out",
             str(tmp_path / "m")]  # fmt: skip
    assert main(merge) == 0 and "nothing to calibrate" in capsys.readouterr().out
    merged = load_task(tmp_path / "m")
    torch.testing.assert_close(merged.member("m").weight, joint.member("joint").weight,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    vit = inca.load_backbone("tiny-vit", image_size=32, precision="fp32", device="cpu")
    assert MultiTask([merged], backbone=vit).predict_proba(torch.randn(2, 3, 32, 32))["m"].shape \
        == (2, 10)  # fmt: skip

    from .test_open_inca import open_task

    open_task(vit, ["a", "b"], "block.1", 0, "trained").save(tmp_path / "trained")
    assert main(["classes", "merge", str(tmp_path / "low"), str(tmp_path / "trained"), "--out",
                 str(tmp_path / "m2")]) == 2  # fmt: skip
    assert "different heads" in capsys.readouterr().err and not (tmp_path / "m2").exists()

    (tmp_path / "m" / STATISTICS).write_bytes(b"broken")
    assert main(add("m", "x")) == 2
    assert "statistics.safetensors" in capsys.readouterr().err
