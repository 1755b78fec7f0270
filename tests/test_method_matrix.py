"""Every registered method passes the same checks (a new method gets them by registering):

- only the method's own parameters change (the frozen backbone never does);
- a saved task reloads to the same probabilities;
- a run killed after its first epoch and resumed ends where an uninterrupted one does;
- ``MultiTask`` gives each task what it gives alone;
- a sweep of G learning rates trained in one run equals G separate runs.
"""

from __future__ import annotations

import pytest
import torch

import inca
from inca.methods import get_method
from inca.methods.pixel_config import finetune_config
from inca.tasks import MultiTask, Task, load_task
from inca.tasks.finetuned import FineTunedTask
from inca.train import TrainConfig, adapter_trainer, parse_plan
from inca.train.finetune_run import fine_tune_sweep
from tests.conftest import killed_after_first_epoch

pytestmark = pytest.mark.integration  # trains end to end: the full tier

METHODS = [m.name for m in inca.list_methods()]
PIXELS = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def setup(tiny_setup):
    return tiny_setup


def run(setup, name: str, out, lrs=(1e-2,), epochs: int = 1, resume: bool = False):
    """Train ``name`` at ``lrs`` on the tiny setup: ({member: task}, {member: learned state})."""
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
        return tasks, {n: bank.member_state(n) for n in bank.names}
    trained = fine_tune_sweep(backbone, splits, finetune_config(name), list(lrs), cfg, out, resume)
    tasks, states = {}, {}
    for model, record in trained:
        n = f"lr{record['config']['lr']:g}"
        tasks[n] = FineTunedTask(n, name, backbone.identity(), classes, model.config,
                                 model.changed_state())  # fmt: skip
        states[n] = model.changed_state()
    return tasks, states


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
def test_only_the_methods_parameters_change(setup, tmp_path, name) -> None:
    backbone, _ = setup
    frozen = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    _, initial = run(setup, name, tmp_path / "init", lrs=(1e-12,))  # a step of ~nothing
    _, trained = run(setup, name, tmp_path / "run")
    assert all(torch.equal(frozen[k], v) for k, v in backbone.model.state_dict().items())
    learned, start = next(iter(trained.values())), next(iter(initial.values()))
    moved = [k for k in learned if not torch.allclose(learned[k].float(), start[k].float())]
    assert moved, f"{name}: training changed none of its parameters"


@pytest.mark.parametrize("name", METHODS)
def test_a_saved_task_reloads_to_the_same_probabilities(setup, tmp_path, name) -> None:
    backbone, _ = setup
    tasks, _ = run(setup, name, tmp_path / "run")
    task = next(iter(tasks.values()))
    task.save(tmp_path / "task")
    loaded = load_task(tmp_path / "task")
    torch.testing.assert_close(probs(loaded, backbone), probs(task, backbone), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(
    setup, tmp_path, monkeypatch, name
) -> None:
    _, straight = run(setup, name, tmp_path / "straight", epochs=2)
    with killed_after_first_epoch(monkeypatch):
        run(setup, name, tmp_path / "cut", epochs=2)
    _, resumed = run(setup, name, tmp_path / "cut", epochs=2, resume=True)
    assert_states_equal(resumed, straight)


@pytest.mark.parametrize("name", METHODS)
def test_multitask_gives_each_task_what_it_gives_alone(setup, tmp_path, name) -> None:
    backbone, _ = setup
    ours, _ = run(setup, name, tmp_path / "ours")
    other, _ = run(setup, "linear" if name != "linear" else "inca", tmp_path / "other")
    tasks = [next(iter(ours.values())), next(iter(other.values()))]
    tasks[1].name = "other"
    together = MultiTask(tasks, backbone=backbone).predict_proba(PIXELS)
    for task in tasks:
        torch.testing.assert_close(together[task.name], probs(task, backbone))


@pytest.mark.parametrize("name", METHODS)
def test_a_sweep_in_one_run_equals_separate_runs(setup, tmp_path, name) -> None:
    if not get_method(name).one_pass:
        pytest.skip(f"{name} trains one learning rate per run: its sweep is separate runs")
    lrs = (1e-2, 3e-3)
    _, together = run(setup, name, tmp_path / "sweep", lrs=lrs)
    alone = {}
    for lr in lrs:
        _, states = run(setup, name, tmp_path / f"alone{lr:g}", lrs=(lr,))
        alone |= states
    assert_states_equal(together, alone, exact=False)
