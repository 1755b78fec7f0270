"""Under torchrun (2 gloo processes on the CPU, launched as a user would): a cache built by two
ranks is byte-identical to one built by one process, and ranks that disagree on the options
stop fast with one clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CACHE = ["cache", "--model", "tiny-vit", "--data", "digits", "--image-size", "32",
         "--train-size", "44", "--val-size", "10", "--test-size", "10", "--taps", "block.1,final",
         "--batch-size", "8", "--workers", "0", "--no-progress"]  # fmt: skip


def torchrun(args: list[str], nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
         *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.suffix == ".bin"}


@pytest.mark.parametrize("views", [1, 2])
def test_a_cache_built_by_two_ranks_equals_one_process(tmp_path, views) -> None:
    extra = ["--views", str(views)]
    two = torchrun(["-m", "inca", *CACHE, *extra, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "inca", *CACHE, *extra, "--out",
                          str(tmp_path / "one")], capture_output=True, text=True,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    for split in ("train", "val", "test"):
        a, b = files(tmp_path / "one" / split), files(tmp_path / "two" / split)
        assert a.keys() == b.keys() and len(a) == 4
        for name in a:
            assert a[name] == b[name], f"{split}/{name} differs"


DISAGREE = """
import sys, os
from inca.cache import build_cache
from inca.data import make_splits
import inca
backbone = inca.load_backbone("tiny-vit", image_size=32, precision="fp32")
splits = make_splits("digits", train_size=20, val_size=10, test_size=10)
rank = int(os.environ["RANK"])
try:
    build_cache(backbone, splits.val, ["block.1"], sys.argv[1], batch_size=4 + rank, workers=0,
                progress=False)
except Exception as e:
    print(f"rank {rank}: {type(e).__name__}: {e}", flush=True)
    sys.exit(3)
"""


def test_ranks_that_disagree_stop_fast_with_one_clear_error(tmp_path) -> None:
    script = tmp_path / "disagree.py"
    script.write_text(DISAGREE)
    done = torchrun([str(script), str(tmp_path / "cache")], timeout=60)
    assert done.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: IncaError: the processes of this torchrun job disagree" in done.stdout


TRAIN = ["train", "--model", "tiny-vit", "--data", "digits", "--image-size", "32",
         "--train-size", "80", "--val-size", "20", "--test-size", "20", "--epochs", "2",
         "--batch-size", "20", "--workers", "0", "--no-progress", "--precision", "fp32",
         "--min-steps", "0", "--halving-epochs", "0",
         "--plan", "inca taps=block.1 lr=1e-3,3e-3 heads=2"]  # fmt: skip


def test_data_parallel_training_equals_one_process(tmp_path) -> None:
    """2 ranks x batch 10 end with the weights of 1 rank x batch 20 (fp32, no augmentation),
    and rank 0 alone wrote the run."""
    from safetensors.torch import load_file

    two = torchrun(["-m", "inca", *TRAIN, "--out", str(tmp_path / "two")], timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "inca", *TRAIN, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith(("bank/", "best/")):
            torch_close(a[k], b[k], k)
    assert two.stdout.count("epoch 2/2") == 1  # logs from rank 0 only
    assert (tmp_path / "two" / "tasks" / "best" / "task.json").is_file()


def torch_close(a, b, name) -> None:
    import torch

    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
