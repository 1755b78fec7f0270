"""Damaged weights are refused by name: a flipped byte in a checkpoint or a task's weights
fails its checksum (before: it loaded silently as wrong numbers, often NaN); weights holding
NaN are refused; files written before checksums still load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from inca.errors import IncaError
from inca.tasks import load_task
from inca.train import checkpoint
from inca.utils.checked_tensors import save_checked, tensor_crc
from tests.test_tasks import ENSEMBLE, make_task


def flip_a_data_byte(file, tensor_bytes: int) -> None:
    """Flip one byte inside the tensor data (the file's end holds data, not the header)."""
    data = bytearray(file.read_bytes())
    data[len(data) - tensor_bytes // 2] ^= 0x40
    file.write_bytes(bytes(data))


def test_the_checksum_covers_dtype_shape_and_bytes() -> None:
    t = torch.arange(6, dtype=torch.float32)
    assert tensor_crc(t) == tensor_crc(t.clone())
    assert tensor_crc(t) != tensor_crc(t.view(2, 3))
    assert tensor_crc(t) != tensor_crc(t.view(torch.int32))
    assert tensor_crc(t.bfloat16()) == tensor_crc(t.bfloat16())  # no numpy dtype needed


def test_a_corrupt_checkpoint_is_refused(tmp_path) -> None:
    tensors = {"bank/w": torch.randn(64, 64)}
    checkpoint.save(tmp_path, tensors, {"epoch": 1})
    loaded, meta = checkpoint.load(tmp_path)
    assert torch.equal(loaded["bank/w"], tensors["bank/w"]) and meta == {"epoch": 1}
    flip_a_data_byte(tmp_path / checkpoint.FILE, 64 * 64 * 4)
    with pytest.raises(IncaError, match="corrupt.*checksum.*delete it"):
        checkpoint.load(tmp_path)


def test_a_corrupt_task_is_refused(tmp_path) -> None:
    import inca

    backbone = inca.load_backbone("tiny-dinov2", precision="fp32", device="cpu")
    task = make_task(backbone, "t", ENSEMBLE)
    task.save(tmp_path / "task")
    load_task(tmp_path / "task")  # intact: loads
    weights = tmp_path / "task" / "adapters.safetensors"
    flip_a_data_byte(weights, 4096)
    with pytest.raises(IncaError, match="corrupt.*checksum"):
        load_task(tmp_path / "task")


def test_files_from_before_checksums_load_and_nan_weights_do_not(tmp_path) -> None:
    import inca

    backbone = inca.load_backbone("tiny-dinov2", precision="fp32", device="cpu")
    task = make_task(backbone, "t", ENSEMBLE[:1])
    task.save(tmp_path / "task")
    weights = tmp_path / "task" / "adapters.safetensors"
    from safetensors.torch import load_file

    tensors = load_file(str(weights))
    save_file(tensors, str(weights), metadata={"format": "inca-task"})  # an older inca's file
    load_task(tmp_path / "task")
    name = next(iter(tensors))
    save_checked(tensors | {name: torch.full_like(tensors[name], float("nan"))}, weights, {})
    with pytest.raises(IncaError, match="NaN or inf"):
        load_task(tmp_path / "task")
