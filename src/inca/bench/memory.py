"""Training-step memory: VQT (memory-efficient) beside the naive VQT forward, full fine-tuning,
StochCA and plain inference. ``inca bench-memory`` prints the table and writes JSON.

Each mode runs in a fresh process (allocator caches from one mode must not count for another):
load the backbone, build the model and its AdamW, run one warm-up step (the optimizer's states
exist after it), reset the high-water mark, run ``steps`` more steps, read the peak. On the CPU
the peak is the resident set (VmHWM, reset through ``/proc/self/clear_refs``); on a GPU it is
``torch.cuda.max_memory_allocated``. "inference" is the frozen backbone's forward under
inference mode with the same batch: the floor every method pays.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from inca.methods import list_methods
from inca.utils.process import device_peak_mib, reset_device_peak, run_fresh


def memory_modes() -> dict[str, dict[str, Any] | None]:
    """ "inference" (the frozen forward: the floor every method pays), then every registered
    method's memory modes: a view of the method registry."""
    out: dict[str, dict[str, Any] | None] = {"inference": None}
    for method in list_methods():
        out |= {name: dict(options) for name, options in method.memory_modes.items()}
    return out


def measure(mode: str, model: str, image_size: int, batch: int, steps: int = 2) -> dict[str, Any]:
    """One mode, in this process: peak memory (MiB) and seconds per step."""
    import tempfile

    import torch

    from inca.backbones import load_backbone
    from inca.methods.pixel_config import build_model, finetune_config
    from inca.train.config import TrainConfig
    from inca.train.pixel_members import ModelMembers
    from inca.train.trainer import Trainer

    backbone = load_backbone(model, image_size=image_size)
    device = backbone.device
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, image_size, image_size, generator=g).to(device)
    labels = torch.randint(0, 10, (batch,), generator=g).to(device)
    options = memory_modes()[mode]
    if options is None:

        def step() -> None:
            backbone.forward_taps(pixels, ["final"])

        trainable = 0
    else:
        net = build_model(backbone, 10, finetune_config(**options)).to(device)
        members = ModelMembers(net, ["model"], backbone.precision).train()
        trainable = net.trainable_params()
        config = TrainConfig(epochs=1, batch_size=batch, label_smoothing=0.0, warmup=0.0)
        # the real training step (the Trainer's), with no data source: the batch is fixed
        trainer = Trainer(members, None, config, batch, tempfile.mkdtemp(), {}, device)

        def step() -> None:
            trainer.train_step(pixels, labels)

    step()  # warm-up: optimizer states, allocator pools
    before = reset_device_peak(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    peak = device_peak_mib(device)
    return {
        "mode": mode,
        "peak_mib": round(peak, 1),
        "in_use_before_step_mib": round(before, 1),
        "step_extra_mib": round(peak - before, 1),
        "s_per_step": round(seconds, 3),
        "trainable_params": trainable,
        "device": str(device),
    }


def run_memory_benchmark(
    modes: list[str], model: str, image_size: int, batch: int, out: str | Path | None
) -> dict[str, Any]:
    """Every mode in its own process; the table printed, the JSON written to ``out``."""
    from inca.errors import UnknownNameError

    known = memory_modes()
    for m in modes:
        if m not in known:
            raise UnknownNameError("memory benchmark mode", m, known)
    rows = []
    for mode in modes:
        rows.append(run_fresh("inca.bench.memory:measure", mode, model, image_size, batch))
        print(format_row(rows[-1], rows[0]), flush=True)
    result = {"model": model, "image_size": image_size, "batch": batch, "rows": rows}
    if out:
        from inca.utils.io import write_json

        write_json(Path(out), result)
    return result


def format_row(row: dict[str, Any], first: dict[str, Any]) -> str:
    ratio = row["peak_mib"] / first["peak_mib"]
    return (
        f"{row['mode']:<10} peak {row['peak_mib']:>8.0f} MiB ({ratio:4.2f}x {first['mode']}), "
        f"{row['s_per_step']:>6.2f} s/step, {row['trainable_params']:>11,} trainable"
    )
