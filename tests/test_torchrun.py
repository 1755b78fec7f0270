"""Under torchrun (2 gloo processes on the CPU, launched as a user would): a cache built by two
ranks is byte-identical to one built by one process, ranks that disagree on the options stop
fast with one clear error, and training and comparisons on two ranks (data- or
adapter-parallel, killed and resumed) end where one process does. The one-process references
run in the test's own process, on one thread as each rank runs (no launch of their own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compare_in_process

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


def in_this_process(args: list[str]) -> int:
    """`inca ARGS` in this process on one thread, as `python -m inca ARGS` with
    OMP_NUM_THREADS=1 runs it: the one-process reference, without a process launch."""
    import torch

    from inca.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(args)
    finally:
        torch.set_num_threads(threads)


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.suffix == ".bin"}


@pytest.fixture(scope="module")
def cache_alone(tmp_path_factory):
    """views -> the cache one process builds with that many views (built once)."""
    built: dict[int, Path] = {}

    def get(views: int) -> Path:
        if views not in built:
            out = tmp_path_factory.mktemp(f"views{views}") / "one"
            assert in_this_process([*CACHE, "--views", str(views), "--out", str(out)]) == 0
            built[views] = out
        return built[views]

    return get


def assert_same_cache(one: Path, two: Path) -> None:
    for split in ("train", "val", "test"):
        a, b = files(one / split), files(two / split)
        assert a.keys() == b.keys() and len(a) == 4, split
        for name in a:
            assert a[name] == b[name], f"{split}/{name} differs"


# views=1: the test below, whose two ranks build the val and test splits whole
@pytest.mark.parametrize("views", [2])
def test_a_cache_built_by_two_ranks_equals_one_process(tmp_path, views, cache_alone) -> None:
    two = torchrun(["-m", "inca", *CACHE, "--views", str(views), "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_cache(cache_alone(views), tmp_path / "two")


def test_an_interrupted_extraction_resumes_on_two_ranks(tmp_path, monkeypatch, cache_alone) -> None:
    """One process stops after two batches; two ranks finish the cache: byte-identical to an
    uninterrupted single-process build."""
    import json

    from inca.backbones.base import Backbone

    real, calls = Backbone.forward_taps, {"n": 0}

    def flaky(self, pixels, taps=None):
        calls["n"] += 1
        if calls["n"] == 3:  # the train split's third batch: two batches are on disk
            raise KeyboardInterrupt
        return real(self, pixels, taps)

    monkeypatch.setattr(Backbone, "forward_taps", flaky)
    assert in_this_process([*CACHE, "--out", str(tmp_path / "two")]) == 130  # interrupted
    monkeypatch.undo()
    header = json.loads((tmp_path / "two" / "train" / "header.json").read_text())
    assert 0 < header["rows_done"] < 44 and not header["complete"]
    resumed = torchrun(["-m", "inca", *CACHE, "--out", str(tmp_path / "two")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_cache(cache_alone(1), tmp_path / "two")  # --views 1 is the default


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
    assert in_this_process([*TRAIN, "--out", str(tmp_path / "one")]) == 0
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


@pytest.fixture(scope="module")
def grid_alone(tmp_path_factory) -> Path:
    """The grid trained by one process (halving drops members at epochs 2, 4 and 8)."""
    out = tmp_path_factory.mktemp("grid") / "one"
    assert in_this_process([*GRID, "--out", str(out)]) == 0
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
def test_a_killed_run_resumes_to_the_uninterrupted_result(
    tmp_path, grid_alone, shard, capsys
) -> None:
    """Killed after 5 of 12 epochs, resumed: the result of one uninterrupted process. A
    data-parallel run resumes on ONE process (the global batch is what must be kept); a
    sharded grid resumes with as many as it started with (by epoch 5 halving has dropped every
    member of rank 0's slice: an idle shard resumes too)."""
    out = tmp_path / "run"
    args = [*GRID, "--shard", shard, "--out", str(out)]
    kill_after_epochs(args, out, epochs=5)
    if shard == "adapters":
        resumed = torchrun(["-m", "inca", *args, "--resume"], timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        said = resumed.stdout
    else:
        capsys.readouterr()
        assert in_this_process([*args, "--resume"]) == 0
        said = capsys.readouterr().out
    assert "resuming" in said
    same_run(grid_alone, out)


COMPARE = ["compare", "--model", "tiny-vit", "--data", "digits", "--image-size", "32",
           "--train-size", "80", "--val-size", "40", "--test-size", "40", "--epochs", "2",
           "--batch-size", "20", "--workers", "0", "--no-progress", "--precision", "fp32",
           "--no-augment", "--min-steps", "0", "--halving-epochs", "0", "--methods",
           "linear,inca,full",
           "--plans", "inca:inca taps=block.1,block.2 lr=3e-3 heads=2 | linear taps=block.* "
                      "solver=lbfgs | full lr=1e-4",
           ]  # fmt: skip


def test_a_comparison_under_torchrun_equals_one_process(tmp_path, monkeypatch) -> None:
    """`inca compare` launched by torchrun: the fine-tuning baselines train data-parallel
    (their weights equal one process's), frozen-feature methods as `inca train` does, and each
    row reports the peak memory of every rank."""
    import json

    from safetensors.torch import load_file

    two = torchrun(["-m", "inca", *COMPARE, "--out", str(tmp_path / "two")], timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    compare_in_process(monkeypatch)  # each method in this process, as under torchrun
    assert in_this_process([*COMPARE, "--out", str(tmp_path / "one")]) == 0
    rows = {d: {r["method"]: r for r in json.loads((tmp_path / d / "compare.json").read_text())
                ["rows"]} for d in ("one", "two")}  # fmt: skip
    assert rows["one"].keys() == rows["two"].keys() == {"linear", "inca", "inca-ensemble", "full"}
    for method, a in rows["one"].items():
        b = rows["two"][method]
        assert abs(a["val_acc"] - b["val_acc"]) <= 1 / 40 + 1e-6, method  # float tolerance
        assert a["selected"] == b["selected"], method
        assert "peak_memory_per_rank" not in a and len(b["peak_memory_per_rank"]) == 2
    for method in ("full",):
        files = [load_file(str(tmp_path / d / method / "task" / "adapters.safetensors"))
                 for d in ("one", "two")]  # fmt: skip
        assert files[0].keys() == files[1].keys()
        for k in files[0]:
            torch_close(files[0][k], files[1][k], f"{method}/{k}")
    assert two.stdout.count("== full ==") == 1  # rank 0 alone prints
