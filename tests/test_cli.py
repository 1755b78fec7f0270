"""The command line: each subcommand on tiny models and generated data; errors without traces."""

from __future__ import annotations

import pytest

from inca.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_lists_the_registry(capsys) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0 and "dinov2-small" in out and "tiny-vit" in out


def test_layers_prints_every_tap_with_shape(capsys) -> None:
    code, out, _ = run(capsys, "layers", "tiny-vit", "--image-size", "48", "--precision", "fp32")
    assert code == 0
    assert "6 taps" in out
    assert [ln.split() for ln in out.splitlines() if ln.strip().startswith("block.3")] == [
        ["block.3", "37", "32"]
    ]


def test_datasets_lists_sources(capsys) -> None:
    code, out, _ = run(capsys, "datasets")
    assert code == 0 and "imagefolder:PATH" in out and "fashion-mnist" in out


def test_methods_lists_the_method_registry(capsys) -> None:
    import inca

    code, out, _ = run(capsys, "methods")
    names = [m.name for m in inca.list_methods()]
    assert code == 0 and names[:2] == ["linear", "inca"]
    assert {"full", "partial", "lora", "stochca", "vqt"} <= set(names)
    listed = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert listed == names
    lora = out[out.index("lora ") :]
    assert "lora_r=8" in lora.split("\n\n")[0] and "rates swept: 0.0003, 0.001" in lora


CACHE = ["cache", "--model", "tiny-vit", "--out", "never-written"]  # fails before writing


@pytest.mark.parametrize(
    "argv, message",
    [
        (["layers", "nope"], "unknown backbone 'nope'"),
        ([*CACHE, "--taps", "block.9"], "taps 'block.9' match no tap"),
        ([*CACHE, "--data", "mnist"], "unknown dataset 'mnist'"),
        (["layers", "tiny-vit", "--image-size", "30"], "not a multiple of the backbone's patch"),
    ],
)
def test_bad_input_gives_a_message_not_a_trace(capsys, argv, message) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
