"""Open-InCA: a query and an output unit per class; removing, adding and merging classes keeps
every other class's parameters bit-identical, and so its logits (to float rounding: a batched
matmul over a different number of queries may round differently); calibration fits only its
own numbers."""

from __future__ import annotations

import pytest
import torch

from inca.adapters import adapter_config, build_adapter
from inca.adapters.stack import AdapterStack
from inca.errors import IncaError
from inca.methods.open_inca.adapter import OpenInCAAdapter
from inca.methods.open_inca.classes import (
    fit_calibration,
    merged,
    raw_logits,
    with_new_classes,
    without_class,
)

D, T = 32, 9


def adapter(classes: int, seed: int, **options) -> OpenInCAAdapter:
    torch.manual_seed(seed)
    a = build_adapter(adapter_config("open-inca", {"heads": 2} | options), D, classes)
    with torch.no_grad():  # away from the initial values, as after training
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return a.eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    torch.manual_seed(7)
    return torch.nn.functional.layer_norm(torch.randn(6, T, D), (D,))


def test_each_class_owns_a_query_and_an_output_unit(tokens) -> None:
    a = adapter(5, 0)
    assert a(tokens).shape == (6, 5)
    per_class = {n: p.numel() // 5 for n, p in a.named_parameters() if p.shape[0] == 5}
    assert sum(per_class.values()) == a.class_params() == 2 * D + 1


def test_a_stack_computes_what_each_adapter_computes_alone(tokens) -> None:
    members = [adapter(4, s) for s in range(3)]
    stack = AdapterStack(members)
    together = stack(tokens.unsqueeze(0).expand(3, -1, -1, -1))
    for i, m in enumerate(members):
        torch.testing.assert_close(together[i], m(tokens))
        exported = stack.export(i)  # buffers come from the template: not trained
        torch.testing.assert_close(exported(tokens), m(tokens))


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_removing_a_class_leaves_the_others_unchanged(tokens) -> None:
    a = adapter(4, 1)
    before = a(tokens)
    smaller = without_class(a, 2)
    assert smaller.num_classes == 3
    for name in ("queries", "weight", "bias"):
        assert torch.equal(getattr(smaller, name), getattr(a, name)[[0, 1, 3]])
    same(smaller(tokens), before[:, [0, 1, 3]])
    with pytest.raises(IncaError, match="last class"):
        without_class(without_class(without_class(smaller, 0), 0), 0)


def test_new_classes_leave_the_old_unchanged(tokens) -> None:
    a = adapter(3, 2)
    grown = with_new_classes(a, 2, seed=5)
    assert grown.num_classes == 5 and grown.config.projection_sets == 1
    same(grown(tokens)[:, :3], a(tokens))
    for name in ("queries", "weight", "bias"):
        assert torch.equal(getattr(grown, name)[:3], getattr(a, name))


def test_new_classes_on_a_set_of_their_own_leave_the_old_unchanged(tokens) -> None:
    from inca.methods.open_inca.classes import with_token_means

    a = with_token_means(adapter(3, 2), torch.randn(3, T, D))
    grown = with_new_classes(a, 2, seed=5, new_set=True)
    assert grown.config.projection_sets == 2 and grown.class_set.tolist() == [0, 0, 0, 1, 1]
    same(grown(tokens)[:, :3], a(tokens))
    for name, p in a.state_dict().items():
        assert torch.equal(grown.state_dict()[name][: len(p)], p), name  # sets, rows, means
    assert grown.token_means.shape == (5, T, D)
    assert torch.equal(without_class(grown, 1).token_means, grown.token_means[[0, 2, 3, 4]])
    both = merged(grown, a)
    assert torch.equal(both.token_means, torch.cat([grown.token_means, a.token_means]))
    assert merged(grown, adapter(1, 3)).config.stat_tokens == 0  # one side keeps none


def test_pseudo_old_images_move_tokens_from_their_class_mean_to_an_old_ones() -> None:
    """x of class y becomes x - mean_y + mean_o for a random old class o, labelled o; the test
    split stays real; class weights make every class weigh the same."""
    from inca.methods.open_inca.pseudo import PseudoOldSource, balanced_weights, class_means

    torch.manual_seed(0)
    x = torch.randn(1, 6, T, D)
    y = torch.tensor([2, 3, 2, 3, -100, 2])

    class Source:
        backbone_seconds = 0.0

        def train(self, epoch):
            yield x, y

        def evaluate(self, split):
            yield x, y

    new = class_means(Source(), range(2, 4))
    torch.testing.assert_close(new[0], x[0, [0, 2, 5]].mean(0))
    with pytest.raises(IncaError, match=r"class\(es\) \[1\]"):
        class_means(Source(), range(1, 4))
    means = torch.cat([torch.randn(2, T, D), new])
    source = PseudoOldSource(Source(), means, old=2, seed=1)
    bx, by = next(source.train(0))
    assert bx.shape == (1, 11, T, D) and torch.equal(by[:6], y) and set(by[6:].tolist()) <= {0, 1}
    real = [0, 1, 2, 3, 5]  # the rows with a label
    for j, i in enumerate(real):
        want = x[0, i] - means[y[i]] + means[by[6 + j]]
        torch.testing.assert_close(bx[0, 6 + j], want)
    assert torch.equal(next(source.evaluate("val"))[1], next(source.evaluate("val"))[1])
    assert torch.equal(next(source.evaluate("test"))[0], x)
    w = balanced_weights(torch.tensor([10, 10, 100, 100]))
    assert torch.allclose(w[0] * 10, w[2] * 100) and torch.isclose(w.mean(), torch.tensor(1.0))


def test_merging_keeps_each_sides_logits_and_projections(tokens) -> None:
    a, b = adapter(3, 3), adapter(2, 4)
    both = merged(a, b)
    assert both.num_classes == 5 and both.config.projection_sets == 2
    out = both(tokens)
    same(out[:, :3], a(tokens))
    same(out[:, 3:], b(tokens))
    again = merged(both, adapter(1, 5))
    assert again.config.projection_sets == 3
    same(again(tokens)[:, :5], out)
    with pytest.raises(IncaError, match="same tap"):
        merged(a, build_adapter(adapter_config("open-inca", {"heads": 4}), D, 2))


def test_calibration_fits_only_its_scale_and_shift(tokens) -> None:
    """Two halves trained apart, one with logits 20x too large: calibration on held-out
    tokens puts them on one scale, changing nothing but calib_scale / calib_shift."""
    torch.manual_seed(0)
    held = torch.nn.functional.layer_norm(torch.randn(200, T, D), (D,))
    a, b = adapter(2, 6), adapter(2, 8)
    with torch.no_grad():
        b.weight.mul_(20.0)
        b.bias.add_(15.0)
    both = merged(a, b)
    truth = torch.cat([a(held) * 0.5, b(held) / 20.0 - 0.75], -1).argmax(-1)  # a fair scale
    params = {n: p.detach().clone() for n, p in both.named_parameters()}
    raw = raw_logits(both, held)
    result = fit_calibration(both, held, truth)
    assert result["acc_after"] > result["acc_before"] + 0.2
    for n, p in both.named_parameters():
        assert torch.equal(p, params[n]), n
    assert torch.equal(raw_logits(both, held), raw)  # the raw logits too
    assert not torch.equal(both.calib_scale, torch.ones(4))


def test_calibrating_some_classes_leaves_the_others_pairs_alone(tokens) -> None:
    """``only``: the new classes' scale and bias fit (here: put back on the old ones' scale);
    the old classes keep their own pair, bit for bit, and so their logits."""
    torch.manual_seed(0)
    held = torch.nn.functional.layer_norm(torch.randn(200, T, D), (D,))
    a, b = adapter(2, 6), adapter(2, 8)
    with torch.no_grad():
        a.calib_scale.copy_(torch.tensor([0.5, 2.0]))  # fitted earlier
        a.calib_shift.copy_(torch.tensor([0.25, -1.0]))
        b.weight.mul_(20.0)
    both = merged(a, b)
    truth = torch.cat([a(held), b(held) / 20.0], -1).argmax(-1)
    old = both(held)[:, :2]
    result = fit_calibration(both, held, truth, only=torch.tensor([2, 3]))
    assert result["acc_after"] > result["acc_before"]
    assert both.calib_scale[:2].tolist() == [0.5, 2.0]
    assert both.calib_shift[:2].tolist() == [0.25, -1.0]
    assert torch.equal(both(held)[:, :2], old)
    assert both.calib_scale[2:].max() < 0.5  # the loud side turned down


def test_an_open_inca_task_saves_and_loads_its_classes(tmp_path, tokens) -> None:
    import inca
    from inca.tasks import Task, load_task

    backbone = inca.load_backbone("tiny-vit", precision="fp32", device="cpu")
    a = merged(adapter(2, 9), adapter(3, 10))
    a.calib_scale.mul_(1.5)
    task = Task.from_adapters("parts", "open-inca", backbone, list("abcde"),
                              [("parts", "block.1", a)])  # fmt: skip
    task.save(tmp_path / "t")
    loaded = load_task(tmp_path / "t")
    member = loaded.member("parts")
    assert member.config.projection_sets == 2
    same(member(tokens), a(tokens))


def open_task(backbone, classes: list[str], tap: str, seed: int, name: str):
    from inca.tasks import Task

    a = build_adapter(adapter_config("open-inca", {"heads": 2}), backbone.taps[tap].dim,
                      len(classes))  # fmt: skip
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return Task.from_adapters(name, "open-inca", backbone, classes, [(name, tap, a)])


def snapshot(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_the_classes_command_removes_and_merges_and_refuses_bad_input(tmp_path, capsys) -> None:
    """inca classes remove / merge (calibrated on held-out digits); each refusal is one clear
    error and leaves every task on disk as it was."""
    import inca
    from inca.cli import main
    from inca.tasks import MultiTask, Task, load_task

    vit = inca.load_backbone("tiny-vit", image_size=32, precision="fp32", device="cpu")
    low, high = [str(i) for i in range(5)], [str(i) for i in range(5, 10)]
    open_task(vit, low, "block.1", 0, "low").save(tmp_path / "low")
    open_task(vit, high, "block.1", 1, "high").save(tmp_path / "high")
    open_task(vit, high, "block.0", 2, "other-tap").save(tmp_path / "other-tap")
    dino = inca.load_backbone("tiny-dinov2", image_size=32, precision="fp32", device="cpu")
    open_task(dino, high, "block.1", 3, "dino").save(tmp_path / "dino")
    plain = build_adapter(adapter_config("inca"), 32, 5)
    Task.from_adapters("plain", "inca", vit, low, [("plain", "block.1", plain)]).save(
        tmp_path / "plain"
    )
    before = {d: snapshot(tmp_path / d) for d in ("low", "high")}

    refused = [
        (["classes", "remove", str(tmp_path / "low"), "7"], "has no class '7'"),
        (["classes", "merge", str(tmp_path / "low"), str(tmp_path / "low"), "--out",
          str(tmp_path / "m")], "both have class(es)"),
        (["classes", "merge", str(tmp_path / "low"), str(tmp_path / "other-tap"), "--out",
          str(tmp_path / "m")], "reads block.1"),
        (["classes", "merge", str(tmp_path / "low"), str(tmp_path / "dino"), "--out",
          str(tmp_path / "m")], "different backbones"),
        (["classes", "remove", str(tmp_path / "plain"), "3"], "not an Open-InCA task"),
    ]  # fmt: skip
    for argv, says in refused:
        assert main(argv) == 2
        assert says in capsys.readouterr().err
    assert {d: snapshot(tmp_path / d) for d in ("low", "high")} == before
    assert not (tmp_path / "m").exists()

    one = load_task(tmp_path / "low")
    for name in low[:-1]:
        assert main(["classes", "remove", str(tmp_path / "low"), name]) == 0
    assert main(["classes", "remove", str(tmp_path / "low"), "4"]) == 2  # the last one
    assert "last class" in capsys.readouterr().err
    assert load_task(tmp_path / "low").class_names == ["4"]
    x = torch.nn.functional.layer_norm(torch.randn(3, 17, 32), (32,))
    same(load_task(tmp_path / "low").member("low")(x), one.member("low")(x)[:, 4:])

    merge = ["classes", "merge", str(tmp_path / "high"), str(tmp_path / "low"), "--out",
             str(tmp_path / "m"), "--calibrate-on", "digits", "--calib-size", "120"]  # fmt: skip
    assert main(merge) == 0
    said = capsys.readouterr().out
    assert "accuracy" in said and "before" in said and "after" in said
    m = load_task(tmp_path / "m")
    assert m.class_names == [*high, "4"] and m.member("m").config.projection_sets == 2
    assert m.metrics["calibration"]["images"] > 0
    served = MultiTask([m], backbone=vit).predict_proba(torch.randn(2, 3, 32, 32))
    assert served["m"].shape == (2, 6)


@pytest.mark.integration
def test_adding_classes_trains_only_theirs_and_refuses_bad_input(tmp_path, capsys) -> None:
    """inca classes add: digits 5 and 6 join a task of 0-4 from data holding only them (and,
    with --replay, a few old images); the old classes' parameters stay bit-identical."""
    from inca.cli import main
    from inca.tasks import load_task

    low = [str(i) for i in range(5)]
    common = ["--data", "digits", "--epochs", "3", "--batch-size", "16", "--train-size", "400",
              "--no-progress"]  # fmt: skip
    assert main(["classes", "new", *common, "--classes", ",".join(low), "--model", "tiny-vit",
                 "--image-size", "32", "--tap", "block.1", "--head", "queries", "--out",
                 str(tmp_path / "t"),
                 "--cache", str(tmp_path / "first")]) == 0  # fmt: skip
    assert "5 classes" in capsys.readouterr().out
    before = snapshot(tmp_path / "t")
    old = load_task(tmp_path / "t").member("t")
    common += ["--cache", str(tmp_path / "work")]
    for argv, says in [
        (["--classes", "3,5"], "has class(es) ['3'] already"),
        (["--classes", "5,cat"], "has no class(es) ['cat']"),
        (["--classes", "5,5"], "each new class once"),
        (["--classes", "5", "--calibrate"], "give --replay N"),
    ]:
        assert main(["classes", "add", str(tmp_path / "t"), *common, *argv]) == 2
        assert says in capsys.readouterr().err
    assert snapshot(tmp_path / "t") == before  # every refusal left the task as it was

    assert main(["classes", "add", str(tmp_path / "t"), *common, "--classes", "5,6",
                 "--replay", "10", "--calibrate", "--out", str(tmp_path / "t2")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "added 5, 6" in printed and "new classes calibrated on" in printed
    grown = load_task(tmp_path / "t2")
    assert grown.class_names == [*low, "5", "6"]
    new = grown.member("t")
    for name in ("queries", "weight", "bias"):
        assert torch.equal(getattr(new, name)[:5], getattr(old, name))  # bit-identical
        assert not torch.equal(getattr(new, name)[5:], getattr(new, name)[5:] * 0)
    assert new.config.projection_sets == 2  # the new classes' own set, the old one unchanged
    assert new.class_set.tolist() == [0] * 5 + [1] * 2
    for name, p in old.named_parameters():
        if p.shape[:1] != (5,):
            assert torch.equal(dict(new.named_parameters())[name][:1], p), name  # projections
    assert torch.equal(new.token_means[:5], old.token_means)  # the stored class means, too
    assert new.token_means.shape == (7, 17, 32) and new.token_means[5:].abs().sum() > 0
    x = torch.nn.functional.layer_norm(torch.randn(4, 17, 32), (32,))
    same(new(x)[:, :5], old(x))
    record = grown.metrics["added"][0]
    assert record["replay"] == 10 and 0 <= record["test_acc"] <= 1 and record["test_images"] > 0
    assert record["pseudo_old"] and record["projections"] == "new"
    # --calibrate: the new classes' scale and bias are fitted on every class's validation
    # images; the old classes' pairs are untouched
    assert record["calibration"]["images"] > 0
    assert torch.equal(new.calib_scale[:5], old.calib_scale)
    assert torch.equal(new.calib_shift[:5], old.calib_shift)
    assert not torch.equal(new.calib_shift[5:], torch.zeros(2))

    # --projections shared: the new classes read the first set, frozen; no set is added
    assert main(["classes", "add", str(tmp_path / "t2"), *common, "--classes", "7",
                 "--projections", "shared", "--cache", str(tmp_path / "w3"), "--out",
                 str(tmp_path / "t3")]) == 0  # fmt: skip
    shared = load_task(tmp_path / "t3").member("t")
    assert shared.config.projection_sets == 2 and shared.class_set.tolist()[-1] == 0
    assert load_task(tmp_path / "t3").metrics["added"][-1]["calibration"] is None  # no replay
    assert shared.calib_scale[-1] == 1 and shared.calib_shift[-1] == 0
    same(shared(x)[:, :7], new(x))


def test_an_empty_class_is_refused_and_the_task_left_as_it_was(tmp_path, capsys) -> None:
    """A class the new data names but holds no training images of (only test images) is
    refused by `classes add`, naming the class; the task on disk is unchanged."""
    import numpy as np
    from PIL import Image

    from inca.cli import main

    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    for label, n_train in (("a", 12), ("b", 12), ("c", 0)):
        for i in range(n_train + 4):
            name = f"{label}{i}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
            rows.append(f"{name},{label},{'train' if i < n_train else 'test'}")
    (tmp_path / "ab.csv").write_text("\n".join(r for r in rows if ",c," not in r) + "\n")
    (tmp_path / "abc.csv").write_text("\n".join(rows) + "\n")
    common = ["--epochs", "1", "--batch-size", "8", "--no-progress"]
    task = tmp_path / "t"
    assert main(["classes", "new", "--data", f"csv:{tmp_path / 'ab.csv'}", *common, "--classes",
                 "a", "--model", "tiny-vit", "--image-size", "32", "--tap", "block.1", "--out",
                 str(task)]) == 0  # fmt: skip
    capsys.readouterr()
    before = snapshot(task)
    assert main(["classes", "add", str(task), "--data", f"csv:{tmp_path / 'abc.csv'}", *common,
                 "--classes", "b,c"]) == 2  # fmt: skip
    said = capsys.readouterr().err
    assert "['c']" in said and "have no training image" in said
    assert snapshot(task) == before
