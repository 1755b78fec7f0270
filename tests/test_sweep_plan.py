"""Plans of the methods trained from pixels, and the comparison's typed options: one spelling
of a learning rate (the plan's ``lr=``) for every method, and saved comparisons that still
resume with their finished methods reused."""

from __future__ import annotations

import pytest

from inca.cli import main
from inca.cli.compare_flags import parse_plans
from inca.errors import IncaError, UnknownNameError
from inca.methods.pixel_config import finetune_config
from inca.recipes.compare_options import CompareOptions, legacy_plans
from inca.recipes.method_run import method_options
from inca.train import FROZEN_DEFAULTS, TrainConfig
from inca.train.plan import parse_sweep_plan, plan_method


def test_a_pixel_plan_sweeps_lr_and_sets_config_fields() -> None:
    plan = parse_sweep_plan("full lr=2e-5,5e-5 layer_decay=0.75 wd=0.1")
    assert plan.method == "full" and plan.lrs == (2e-5, 5e-5)
    assert plan.config() == finetune_config("full", lr=2e-5, layer_decay=0.75, weight_decay=0.1)
    vqt = parse_sweep_plan("vqt queries=2 layer_queries=0:0,11:4")  # a text option keeps commas
    assert vqt.lrs == (1e-3, 1e-2)  # the method's default rates
    assert vqt.config().query_counts(12)[:2] == [0, 2] and vqt.config().query_counts(12)[11] == 4
    assert plan_method("lora lr=1e-3") == "lora" and plan_method("inca taps=block.5") == "inca"


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ("full layer_decay=0.5,0.75", "only lr is swept"),
        ("full lora_r=4", "unknown option"),
        ("full lr=fast", "lr takes numbers"),
        ("full lr=nan", "finite number above 0"),
        ("full lr=0", "finite number above 0"),
        ("full lr=1e-3; lora lr=1e-3", "one entry"),
        ("inca taps=block.5", "adapter plan"),
        ("stochca stochca_p=2", "probability"),
    ],
)
def test_bad_pixel_plans_name_the_problem(plan: str, message: str) -> None:
    with pytest.raises(IncaError, match=message):
        parse_sweep_plan(plan)


def test_compare_plans_name_their_method_by_prefix_or_first_word() -> None:
    plans = parse_plans("inca:inca taps=block.5; linear taps=block.5 | vqt lr=1e-3 "
                        "layer_queries=0:0 | linear taps=block.*")  # fmt: skip
    assert plans == {
        "inca": "inca taps=block.5; linear taps=block.5",
        "vqt": "vqt lr=1e-3 layer_queries=0:0",
        "linear": "linear taps=block.*",
    }
    with pytest.raises(IncaError, match="two plans"):
        parse_plans("full lr=1e-3 | full lr=1e-4")
    with pytest.raises(UnknownNameError):
        parse_plans("fulll lr=1e-3")


def test_options_round_trip_and_keep_the_saved_shape() -> None:
    """The default comparison's saved options, and what a fine-tuning result depends on, have
    the shape results were recorded with before CompareOptions: hours of fine-tuning stay
    reused."""
    options = CompareOptions(train=TrainConfig(progress=False),
                             frozen=TrainConfig(**FROZEN_DEFAULTS, progress=False))  # fmt: skip
    saved = options.to_dict()
    assert CompareOptions.from_dict(saved) == options
    assert sorted(saved) == ["data", "device", "frozen", "image_size", "model", "precision",
                             "test_size", "train", "train_size", "val_size"]  # fmt: skip
    full = method_options("full", options)
    assert full["lrs"] is None and full["finetune"] is None and full["train"] == saved["train"]
    tuned = method_options("full", CompareOptions(plans={"full": "full lr=1e-5 layer_decay=0.8"}))
    assert tuned["lrs"] == [1e-5] and tuned["finetune"] == {"layer_decay": 0.8}
    head = method_options("full", CompareOptions(plans={"full": "full head_lr=1e-2"}))
    assert head["lrs"] is None and head["finetune"] == {"head_lr": 1e-2}  # head_lr is not lr
    # a comparison saved with --lrs and --finetune (each method took the fields it has)
    old = saved | {"lrs": {"lora": [1e-3, 3e-3]}, "finetune": {"layer_decay": 0.8, "lora_r": 4}}
    plans = CompareOptions.from_dict(old).plans
    assert plans["lora"] == "lora lr=0.001,0.003 layer_decay=0.8 lora_r=4"
    assert plans["full"] == "full layer_decay=0.8" and "vqt" not in plans
    assert legacy_plans({}, {}) == {}


@pytest.mark.parametrize("flag", ["--method", "--lrs", "--finetune", "--lr", "--wd"])
def test_replaced_flags_say_what_replaced_them(flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", flag, "vqt"])
    assert exit_.value.code == 2 and "replaced by" in capsys.readouterr().err
