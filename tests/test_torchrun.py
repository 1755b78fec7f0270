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


INTERRUPTED = """
import sys
from inca.backbones.base import Backbone
from inca.cli import main
real, calls = Backbone.forward_taps, {"n": 0}
def flaky(self, pixels, taps=None):
    calls["n"] += 1
    if calls["n"] == 3:  # the train split's third batch: two batches are on disk
        raise KeyboardInterrupt
    return real(self, pixels, taps)
Backbone.forward_taps = flaky
sys.exit(main(sys.argv[1:]))
"""


def test_an_interrupted_extraction_resumes_on_two_ranks(tmp_path) -> None:
    """One process stops after two batches; two ranks finish the cache: byte-identical to an
    uninterrupted single-process build."""
    import json

    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    cut = subprocess.run([sys.executable, str(script), *CACHE, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert cut.returncode == 130, cut.stderr[-3000:]  # interrupted
    header = json.loads((tmp_path / "two" / "train" / "header.json").read_text())
    assert 0 < header["rows_done"] < 44 and not header["complete"]
    resumed = torchrun(["-m", "inca", *CACHE, "--out", str(tmp_path / "two")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "inca", *CACHE, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    for split in ("train", "val", "test"):
        a, b = files(tmp_path / "one" / split), files(tmp_path / "two" / split)
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), split


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


GRID = ["train", "--model", "tiny-vit", "--data", "digits", "--image-size", "32",
        "--train-size", "200", "--val-size", "20", "--test-size", "20", "--epochs", "12",
        "--batch-size", "20", "--workers", "0", "--no-progress", "--precision", "fp32",
        "--min-steps", "0", "--halving-epochs", "2", "--halving-keep", "0.5", "--halving-min", "1",
        "--plan", "inca taps=block.0,block.1 lr=1e-3,3e-3 heads=2; linear taps=final lr=1e-2",
        ]  # fmt: skip


def one_process(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inca", *args], capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def grid_alone(tmp_path_factory) -> Path:
    """The grid trained by one process (halving drops members at epochs 2, 4 and 8)."""
    out = tmp_path_factory.mktemp("grid") / "one"
    done = one_process([*GRID, "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def same_run(a: Path, b: Path) -> None:
    """Every member with the same accuracies, best epoch and halving rung; the selected
    members' weights equal within float tolerance."""
    import json

    from safetensors.torch import load_file

    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    keys = ("name", "val_acc", "test_acc", "best_epoch", "dropped_after")
    assert [{k: m.get(k) for k in keys} for m in ra["adapters"]] == [
        {k: m.get(k) for k in keys} for m in rb["adapters"]
    ]
    assert ra["selection"] == rb["selection"]
    assert any(m.get("dropped_after") for m in ra["adapters"])  # halving was exercised
    for task in ("best", "ensemble"):
        wa, wb = (load_file(str(d / "tasks" / task / "adapters.safetensors")) for d in (a, b))
        assert wa.keys() == wb.keys()
        for k in wa:
            torch_close(wa[k], wb[k], f"{task}/{k}")


def test_adapter_parallel_training_equals_one_process(tmp_path, grid_alone) -> None:
    """--shard adapters: each rank trains its slice of the grid over the whole cache, halving
    decided for the grid as a whole; rank 0 gathers the members: the run one process makes."""
    two = torchrun(["-m", "inca", *GRID, "--shard", "adapters", "--out", str(tmp_path / "two")],
                   timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two" / "shards").iterdir()) == [
        "rank0.prev.safetensors", "rank0.safetensors", "rank1.prev.safetensors",
        "rank1.safetensors",
    ]  # fmt: skip
    same_run(grid_alone, tmp_path / "two")


def kill_after_epochs(args: list[str], out: Path, epochs: int) -> None:
    """Start ``args`` under a 2-process torchrun and, once ``epochs`` epochs are logged, SIGKILL
    rank 0 (its pid is in the run's lock file), as a crashed node would die: torchrun must
    bring the job down, and the run must not have finished."""
    import json
    import signal
    import time

    env = os.environ | {"OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "inca", *args], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    log, deadline = out / "log.jsonl", time.monotonic() + 240
    try:
        while time.monotonic() < deadline and job.poll() is None:
            lines = log.read_text().splitlines() if log.exists() else []
            if lines and json.loads(lines[-1])["epoch"] >= epochs:
                time.sleep(0.05)  # into the next epoch, or its checkpoint
                break
            time.sleep(0.02)
        holder = (out / ".inca.lock").read_text()  # "pid N on HOST, since T"
        os.kill(int(holder.split()[1]), signal.SIGKILL)
        assert job.wait(timeout=60) != 0  # torchrun took the other rank down
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert not (out / "results.json").exists(), "the run finished before it could be killed"


@pytest.mark.parametrize("shard", ["data", "adapters"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, grid_alone, shard) -> None:
    """Killed after 5 of 12 epochs, resumed: the result of one uninterrupted process. A
    data-parallel run resumes on ONE process (the global batch is what must be kept); a
    sharded grid resumes with as many as it started with (by epoch 5 halving has dropped every
    member of rank 0's slice: an idle shard resumes too)."""
    out = tmp_path / "run"
    args = [*GRID, "--shard", shard, "--out", str(out)]
    kill_after_epochs(args, out, epochs=5)
    resumed = (torchrun(["-m", "inca", *args, "--resume"], timeout=300) if shard == "adapters"
               else one_process([*args, "--resume"]))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    same_run(grid_alone, out)


COMPARE = ["compare", "--model", "tiny-vit", "--data", "digits", "--image-size", "32",
           "--train-size", "80", "--val-size", "40", "--test-size", "40", "--epochs", "2",
           "--batch-size", "20", "--workers", "0", "--no-progress", "--precision", "fp32",
           "--no-augment", "--min-steps", "0", "--halving-epochs", "0", "--methods",
           "linear,inca,full,lora,stochca",
           "--plans", "inca:inca taps=block.1,block.2 lr=3e-3 heads=2 | linear taps=block.* "
                      "solver=lbfgs | full lr=1e-4 | lora lr=1e-3 lora_r=4 | stochca lr=1e-4",
           ]  # fmt: skip


def test_a_comparison_under_torchrun_equals_one_process(tmp_path) -> None:
    """`inca compare` launched by torchrun: the fine-tuning baselines train data-parallel
    (their weights equal one process's), frozen-feature methods as `inca train` does, and each
    row reports the peak memory of every rank."""
    import json

    from safetensors.torch import load_file

    two = torchrun(["-m", "inca", *COMPARE, "--out", str(tmp_path / "two")], timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = one_process([*COMPARE, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    rows = {d: {r["method"]: r for r in json.loads((tmp_path / d / "compare.json").read_text())
                ["rows"]} for d in ("one", "two")}  # fmt: skip
    assert rows["one"].keys() == rows["two"].keys() == {
        "linear", "inca", "inca-ensemble", "full", "lora", "stochca"}  # fmt: skip
    for method, a in rows["one"].items():
        b = rows["two"][method]
        assert abs(a["val_acc"] - b["val_acc"]) <= 1 / 40 + 1e-6, method  # float tolerance
        assert a["selected"] == b["selected"], method
        assert "peak_memory_per_rank" not in a and len(b["peak_memory_per_rank"]) == 2
    for method in ("full", "lora", "stochca"):
        files = [load_file(str(tmp_path / d / method / "task" / "adapters.safetensors"))
                 for d in ("one", "two")]  # fmt: skip
        assert files[0].keys() == files[1].keys()
        for k in files[0]:
            torch_close(files[0][k], files[1][k], f"{method}/{k}")
    assert two.stdout.count("== full ==") == 1  # rank 0 alone prints
