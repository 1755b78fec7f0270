"""Every registered method passes the same checks (a new method gets them by registering):

- only the method's own parameters change (the frozen backbone never does);
- a saved task reloads to the same probabilities;
- a run killed after its first epoch and resumed ends where an uninterrupted one does (a
  one-pass sweep too) and logs each epoch once; no run resumes with other options;
- ``MultiTask`` gives each task what it gives alone;
- a sweep of G learning rates trained in one run equals G separate runs.

Each run is trained once per module (``runs``) and read by every test that only reads it; the
method-specific checks at the end read the same runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import inca
from inca.errors import IncaError
from inca.methods import get_method
from inca.methods.pixel_config import finetune_config
from inca.tasks import MultiTask, Task, load_task
from inca.tasks.finetuned import FineTunedTask
from inca.train import TrainConfig, adapter_trainer, parse_plan
from inca.train.pixel_sweep import fine_tune_sweep
from tests.conftest import killed_after_first_epoch

pytestmark = pytest.mark.integration  # trains end to end: the full tier

METHODS = [m.name for m in inca.list_methods()]
PIXEL_METHODS = [m for m in METHODS if not get_method(m).from_tokens]
ONE_PASS = [m for m in METHODS if get_method(m).one_pass]
PIXELS = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
SWEEP = (1e-2, 3e-3)
# options beyond a method's defaults: VQT with two queries a block and none in block 1 (its
# per-block counts and a block without queries, in every check)
OPTIONS = {"vqt": {"queries": 2, "layer_queries": "1:0"}}


@dataclass
class Run:
    """What training ``method`` made: per member its task and learned state; for methods
    trained from pixels also the trained model and its record."""

    out: Path
    tasks: dict[str, Any]
    states: dict[str, dict[str, torch.Tensor]]
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


def run(setup, name: str, out, lrs=(1e-2,), epochs: int = 1, resume: bool = False) -> Run:
    """Train ``name`` at ``lrs`` on the tiny setup."""
    backbone, splits = setup
    cfg = TrainConfig(epochs=epochs, batch_size=20, workers=0, progress=False, warmup=0.0)
    classes = splits.class_names
    if get_method(name).from_tokens:
        plan = f"{name} taps=block.1 lr={','.join(str(lr) for lr in lrs)}"
        specs = parse_plan(plan, list(backbone.taps))
        trainer = adapter_trainer(backbone, splits, specs, cfg, out, {"plan": plan})
        trainer.fit(resume=resume)
        trainer.load_best()
        bank = trainer.members
        tasks = {
            n: Task.from_adapters(n, name, backbone, classes,
                                  [(n, bank.specs[n].tap, bank.export_adapter(n))])
            for n in bank.names
        }  # fmt: skip
        return Run(out, tasks, {n: bank.member_state(n) for n in bank.names})
    ft = finetune_config(name, **OPTIONS.get(name, {}))
    trained = fine_tune_sweep(backbone, splits, ft, list(lrs), cfg, out, resume)
    result = Run(out, {}, {})
    for model, record in trained:
        n = f"lr{record['config']['lr']:g}"
        result.tasks[n] = FineTunedTask(n, name, backbone.identity(), classes, model.config,
                                        model.changed_state())  # fmt: skip
        result.states[n] = model.changed_state()
        result.models[n], result.records[n] = model, record
    return result


class Runs:
    """Runs trained once for the module: ``get`` one run, ``resumed`` an interrupted one."""

    def __init__(self, setup, root: Path) -> None:
        self.setup, self.root, self.done = setup, root, {}
        # the frozen backbone before anything in this module trained
        self.frozen = {k: v.clone() for k, v in setup[0].model.state_dict().items()}

    def get(self, name: str, lrs=(1e-2,), epochs: int = 1) -> Run:
        key = (name, tuple(lrs), epochs)
        if key not in self.done:
            out = self.root / f"{name}-{'+'.join(f'{lr:g}' for lr in lrs)}-{epochs}"
            self.done[key] = run(self.setup, name, out, lrs, epochs)
        return self.done[key]

    def resumed(self, name: str, lrs=(1e-2,)) -> tuple[Run, Run]:
        """(2 epochs straight, 2 epochs killed after the first and resumed)."""
        key = ("resumed", name, tuple(lrs))
        if key not in self.done:
            straight = self.get(name, lrs, epochs=2)
            cut = self.root / f"{name}-{'+'.join(f'{lr:g}' for lr in lrs)}-cut"
            with pytest.MonkeyPatch.context() as mp, killed_after_first_epoch(mp):
                run(self.setup, name, cut, lrs, epochs=2)
            self.done[key] = straight, run(self.setup, name, cut, lrs, epochs=2, resume=True)
        return self.done[key]


@pytest.fixture(scope="module")
def setup(tiny_setup):
    return tiny_setup


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory) -> Runs:
    return Runs(setup, tmp_path_factory.mktemp("runs"))


def only_task(run_: Run) -> Any:
    """The task of a one-rate run's one member."""
    (task,) = run_.tasks.values()
    return task


def trained_model(run_: Run) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The one model of a one-rate run of a method trained from pixels, and its record."""
    ((model, record),) = zip(run_.models.values(), run_.records.values(), strict=True)
    return model, record


def probs(task, backbone) -> torch.Tensor:
    with torch.no_grad():
        return MultiTask([task], backbone=backbone).predict_proba(PIXELS)[task.name]


def assert_states_equal(a: dict, b: dict, exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for member in a:
        assert a[member].keys() == b[member].keys()
        for key in a[member]:
            # not exact: a sweep batches its members' queries (float sums differ in the last
            # bits), and AdamW's m/sqrt(v) lifts that to ~1e-5 relative in a few steps
            tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-4, "atol": 1e-5}
            torch.testing.assert_close(a[member][key], b[member][key], **tol, msg=key)


@pytest.mark.parametrize("name", METHODS)
def test_only_the_methods_parameters_change(setup, runs, tmp_path, name) -> None:
    backbone, _ = setup
    initial = run(setup, name, tmp_path / "init", lrs=(1e-12,)).states  # a step of ~nothing
    trained = runs.get(name).states
    assert all(torch.equal(runs.frozen[k], v) for k, v in backbone.model.state_dict().items())
    assert not backbone.model.training  # the frozen backbone stays in evaluation mode
    learned, start = next(iter(trained.values())), next(iter(initial.values()))
    moved = [k for k in learned if not torch.allclose(learned[k].float(), start[k].float())]
    assert moved, f"{name}: training changed none of its parameters"


@pytest.mark.parametrize("name", METHODS)
def test_a_saved_task_reloads_to_the_same_probabilities(setup, runs, tmp_path, name) -> None:
    backbone, _ = setup
    task = only_task(runs.get(name))
    task.save(tmp_path / "task")
    loaded = load_task(tmp_path / "task")
    torch.testing.assert_close(probs(loaded, backbone), probs(task, backbone), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(runs, name) -> None:
    straight, resumed = runs.resumed(name)
    assert_states_equal(resumed.states, straight.states)


@pytest.mark.parametrize("name", ONE_PASS)
def test_a_resumed_sweep_ends_where_an_uninterrupted_one_does(runs, name) -> None:
    """Every member of a one-pass sweep: weights, moments and best states all resume."""
    straight, resumed = runs.resumed(name, SWEEP)
    assert_states_equal(resumed.states, straight.states)
    for member, record in straight.records.items():  # methods trained from pixels
        for key in ("val_acc", "best_epoch"):
            assert record[key] == resumed.records[member][key], key


def log_of(name: str, run_: Run) -> Path:
    return run_.out / ("log.jsonl" if get_method(name).from_tokens else "lr0.01/log.jsonl")


@pytest.mark.parametrize("name", METHODS)
def test_a_resumed_run_logs_and_records_what_an_uninterrupted_one_does(runs, name) -> None:
    straight, resumed = runs.resumed(name)
    assert len(log_of(name, resumed).read_text().splitlines()) == 2  # each epoch once
    for member, record in straight.records.items():  # methods trained from pixels
        for key in ("val_acc", "best_epoch", "trainable_params"):
            assert record[key] == resumed.records[member][key], key


@pytest.mark.parametrize("name", METHODS)
def test_a_run_refuses_to_resume_with_other_options(setup, runs, name) -> None:
    _, resumed = runs.resumed(name)
    before = log_of(name, resumed).read_text()
    if get_method(name).from_tokens:  # another plan in the same directory
        other = "linear" if name != "linear" else "inca"
    else:  # another method at the same rate, so in the same directory
        other = "full" if name != "full" else "lora"
    with pytest.raises(IncaError, match="cannot resume .*other options"):
        run(setup, other, resumed.out, epochs=2, resume=True)
    assert log_of(name, resumed).read_text() == before  # refused before anything is written


@pytest.mark.parametrize("name", METHODS)
def test_multitask_gives_each_task_what_it_gives_alone(setup, runs, name) -> None:
    backbone, _ = setup
    ours = only_task(runs.get(name))
    other = only_task(runs.get("linear" if name != "linear" else "inca"))
    tasks = [ours, copy.copy(other)]  # the cached task keeps its name
    tasks[1].name = "other"
    together = MultiTask(tasks, backbone=backbone).predict_proba(PIXELS)
    for task in tasks:
        torch.testing.assert_close(together[task.name], probs(task, backbone))


@pytest.mark.parametrize("name", METHODS)
def test_a_sweep_in_one_run_equals_separate_runs(runs, name) -> None:
    if not get_method(name).one_pass:
        pytest.skip(f"{name} trains one learning rate per run: its sweep is separate runs")
    together = runs.get(name, SWEEP).states
    alone = {}
    for lr in SWEEP:
        alone |= runs.get(name, (lr,)).states
    assert_states_equal(together, alone, exact=False)


# ------------------------------------------------ method-specific checks, on the same runs
def changed(model, backbone) -> set[str]:
    """Backbone weights the fine-tuned copy no longer shares with the frozen original."""
    frozen = backbone.model.state_dict()
    tuned = {
        k.replace(".base_layer", ""): v
        for k, v in model.base().state_dict().items()
        if "lora_" not in k
    }  # peft keeps the wrapped weight as <module>.base_layer
    return {k for k, v in frozen.items() if not torch.equal(tuned[k].float(), v.float())}


def test_full_changes_every_used_weight(setup, runs) -> None:
    backbone, _ = setup
    model, record = trained_model(runs.get("full"))
    names = changed(model, backbone)
    assert "encoder.layer.0.attention.q_proj.weight" in names and "layernorm.weight" in names
    assert record["trainable_params"] == backbone.num_params + model.head.weight.numel() + 10


def test_partial_changes_only_the_last_blocks(setup, runs) -> None:
    model, _ = trained_model(runs.get("partial"))
    assert model.config.blocks == 2
    names = changed(model, setup[0])
    assert names and all(k.startswith(("encoder.layer.2.", "encoder.layer.3.", "layernorm."))
                         for k in names)  # fmt: skip
    assert any(k.startswith("encoder.layer.2.") for k in names)


def test_lora_changes_no_backbone_weight(setup, runs) -> None:
    model, record = trained_model(runs.get("lora"))
    assert changed(model, setup[0]) == set()
    lora = {k: v for k, v in model.changed_state().items() if "lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values())  # B starts at zero
    assert record["trainable_params"] < setup[0].num_params / 4


@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_a_fine_tuned_task_predicts_what_its_model_did(setup, runs, tmp_path, name) -> None:
    """The saved task of a method trained from pixels is its model: the same config and
    probabilities, only the changed weights stored."""
    backbone, _ = setup
    task = only_task(runs.get(name))
    model, _ = trained_model(runs.get(name))
    task.save(tmp_path / "task")
    loaded = load_task(tmp_path / "task")
    assert isinstance(loaded, FineTunedTask) and loaded.config == model.config
    model.eval()
    with torch.no_grad():
        expected = model(PIXELS).softmax(-1)
    torch.testing.assert_close(loaded.predict_pixels(PIXELS, backbone), expected)
    if name in ("lora", "vqt"):  # the LoRA matrices / queries, and the head
        assert sum(v.numel() for v in loaded.state.values()) < backbone.num_params / 4
    assert loaded.changes_backbone == (name != "vqt")


def test_multitask_runs_tasks_trained_through_the_backbone_on_their_own_pass(
    setup, runs, capsys
) -> None:
    backbone, _ = setup
    roles = {"probe": "linear", "tuned": "lora", "queries": "vqt"}
    tasks = {name: copy.copy(only_task(runs.get(method))) for name, method in roles.items()}
    for name, task in tasks.items():
        task.name = name
    multi = MultiTask(list(tasks.values()), backbone=backbone)
    said = capsys.readouterr().out
    assert "'tuned' changes the backbone" in said
    assert "'queries' reads its query tokens inside every block: it runs its own pass" in said
    assert "'probe'" not in said  # on the shared pass
    out = multi.predict_proba(PIXELS)
    for name in ("tuned", "queries"):
        torch.testing.assert_close(out[name], tasks[name].predict_pixels(PIXELS, backbone))
    alone = MultiTask([tasks["probe"]], backbone=backbone).predict_proba(PIXELS)
    torch.testing.assert_close(out["probe"], alone["probe"])


def test_a_one_pass_vqt_sweep_is_one_run_of_members_like_their_own_runs(setup, runs) -> None:
    _, splits = setup
    swept = runs.get("vqt", SWEEP)
    assert (swept.out / "lr0.01+0.003").is_dir()  # one shared run
    assert [r["config"]["lr"] for r in swept.records.values()] == list(SWEEP)
    for lr, record in zip(SWEEP, swept.records.values(), strict=True):
        alone = next(iter(runs.get("vqt", (lr,)).records.values()))
        assert abs(record["val_acc"] - alone["val_acc"]) <= 1 / len(splits.val)
        assert record["trainable_params"] == alone["trainable_params"]
    a, b = (state["queries.0"] for state in swept.states.values())
    assert not torch.allclose(a, b)  # the rates really differ
