from __future__ import annotations

import pytest

from inca.errors import IncaError, UnknownNameError
from inca.train.plan import DEFAULT_PLAN, compact, parse_plan, select_taps

TAPS = ["embed"] + [f"block.{i}" for i in range(12)] + ["final"]


def test_the_issue_example_is_one_line() -> None:
    specs = parse_plan("inca taps=block.* lr=1e-3,3e-4; linear taps=block.*[-3:]", TAPS)
    names = [s.name for s in specs]
    assert len(specs) == 12 * 2 + 3
    assert "inca.block.7.lr3e-4" in names and "inca.block.0.lr1e-3" in names
    assert [s.tap for s in specs if s.kind == "linear"] == ["block.9", "block.10", "block.11"]
    assert len(set(names)) == len(names)


def test_default_plan() -> None:
    specs = parse_plan(DEFAULT_PLAN, TAPS, widths=dict.fromkeys(TAPS, 384))
    assert {s.kind for s in specs} == {"inca", "linear"} and len(specs) == 6 * 8 + 6
    assert sorted({s.tap for s in specs}) == sorted(f"block.{i}" for i in (1, 3, 5, 7, 9, 11))
    # on DINOv2-S (width 384) heads=D/64,D/32 are 6 and 12: the names runs resume by
    names = [s.name for s in specs]
    assert names[:4] == [
        "inca.block.1.lr1e-3.wd1e-4.heads6",
        "inca.block.1.lr1e-3.wd1e-4.heads12",
        "inca.block.1.lr1e-3.wd0.05.heads6",
        "inca.block.1.lr1e-3.wd0.05.heads12",
    ]
    assert "inca.block.5.lr1e-3.wd1e-4.heads6" in names
    assert {s.config.heads for s in specs if s.kind == "inca"} == {6, 12}


def test_width_relative_heads_need_the_widths() -> None:
    with pytest.raises(IncaError, match="relative to the taps' widths"):
        parse_plan("inca taps=final heads=D/64", TAPS)
    with pytest.raises(IncaError, match="only heads takes a width-relative"):
        parse_plan("inca taps=final queries=D/64", TAPS, widths=dict.fromkeys(TAPS, 384))
    with pytest.raises(IncaError, match="divides by 0"):
        parse_plan("inca taps=final heads=D/0", TAPS, widths=dict.fromkeys(TAPS, 384))


def test_solved_probes_have_no_learning_rate_in_their_names() -> None:
    specs = parse_plan("linear taps=block.3 pool=cls,mean solver=lbfgs lr=1e-3,1e-2", TAPS)
    assert [s.name for s in specs] == ["linear.block.3.poolcls", "linear.block.3.poolmean"]
    assert all(s.solved for s in specs)


def test_options_are_swept_and_named() -> None:
    specs = parse_plan("inca taps=final queries=1,4 wd=0.05", TAPS, lr=2e-3)
    assert [s.name for s in specs] == [
        "inca.final.lr2e-3.wd0.05.queries1",
        "inca.final.lr2e-3.wd0.05.queries4",
    ]
    assert specs[1].config.queries == 4 and specs[1].weight_decay == 0.05


def test_tap_selectors() -> None:
    assert select_taps("block.*[::4]", TAPS) == ["block.0", "block.4", "block.8"]
    assert select_taps("block.*[-1],final", TAPS) == ["block.11", "final"]
    assert select_taps("embed,block.1?", TAPS) == ["embed", "block.10", "block.11"]


def test_compact_numbers() -> None:
    assert [compact(v) for v in (0.001, 0.0003, 0.05, 1.5, 4)] == [
        "1e-3",
        "3e-4",
        "0.05",
        "1.5",
        "4",
    ]


def test_bad_plans_are_named() -> None:
    with pytest.raises(IncaError, match="match no tap"):
        parse_plan("inca taps=layer.*", TAPS)
    with pytest.raises(UnknownNameError, match="unknown adapter kind 'lora'"):
        parse_plan("lora taps=final", TAPS)
    with pytest.raises(IncaError, match="expected key=value"):
        parse_plan("inca final", TAPS)
    with pytest.raises(IncaError, match="appears twice"):
        parse_plan("inca taps=final; inca taps=final", TAPS)
    with pytest.raises(IncaError, match="no adapters"):
        parse_plan(" ; ", TAPS)
    with pytest.raises(IncaError, match="queries must be at least 1"):
        parse_plan("inca queries=0", TAPS)


def test_tap_groups_make_multi_tap_adapters() -> None:
    specs = parse_plan("inca taps=block.8+block.5,block.*[-2:]+final lr=1e-3", TAPS)
    assert [s.tap for s in specs] == ["block.5+block.8", "block.10+block.11+final"]
    assert specs[0].name == "inca.block.5+block.8.lr1e-3"
    assert specs[1].taps == ["block.10", "block.11", "final"]
    assert select_taps("block.3,block.3+block.4,block.4", TAPS) == [
        "block.3",
        "block.3+block.4",
        "block.4",
    ]
    with pytest.raises(IncaError, match="linear adapters read one tap"):
        parse_plan("linear taps=block.5+block.8", TAPS)
    with pytest.raises(IncaError, match="names one tap"):
        parse_plan("inca taps=block.5+block.5", TAPS)
    with pytest.raises(IncaError, match="match no tap"):
        parse_plan("inca taps=block.5+block.99", TAPS)


def test_default_plans_read_a_maps_mean_and_max_where_there_is_no_cls_token() -> None:
    """A CNN has no CLS token: the default plans' linear probes pool mean+max there; a plan a
    user wrote runs as written (its CLS pool is refused when the probe is built)."""
    from inca.methods import get_method
    from inca.train.plan import DEFAULT_PLAN, default_plan_for

    assert default_plan_for(DEFAULT_PLAN, 1) == DEFAULT_PLAN
    cnn = default_plan_for(DEFAULT_PLAN, 0)
    assert "pool=mean+max" in cnn and "cls" not in cnn and cnn.startswith(DEFAULT_PLAN[:40])
    linear = default_plan_for(get_method("linear").default_plan, 0)
    assert "pool=mean+max" in linear and cnn.endswith(linear)  # the main job's probes
    mine = "linear taps=block.1 pool=cls"
    assert default_plan_for(mine, 0) == mine
