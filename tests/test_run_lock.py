"""One writer per directory: a second run into a held --out (or a cache being built) is refused
with the holder's pid, and a lock left by a killed process blocks nobody. Before, both runs
"succeeded" and the second silently replaced the first's tasks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from inca.cli import main
from inca.errors import IncaError
from inca.utils.run_lock import LOCK_FILE, exclusive

pytestmark = pytest.mark.integration  # spawns processes or trains: the full tier

HOLD = ("import sys, time; from inca.utils.run_lock import exclusive\n"
        "with exclusive(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)")  # fmt: skip


def holder(directory) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE,
                         text=True)  # fmt: skip
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_held_directory_is_refused_with_the_holders_pid(tmp_path) -> None:
    p = holder(tmp_path)
    try:
        with pytest.raises(IncaError, match=f"in use by another inca process \\(pid {p.pid} "):
            with exclusive(tmp_path):
                pass
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    with exclusive(tmp_path):  # killed with SIGKILL: its lock went with it
        with exclusive(tmp_path):  # the same process may nest (a method inside a comparison)
            pass
    assert (tmp_path / LOCK_FILE).is_file()


def test_a_second_train_into_one_out_is_refused_before_any_work(tmp_path, capsys) -> None:
    p = holder(tmp_path / "run")
    try:
        code = main(["train", "--model", "tiny-vit", "--data", "digits", "--out",
                     str(tmp_path / "run"), "--no-progress"])  # fmt: skip
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
    assert code == 2 and f"pid {p.pid}" in capsys.readouterr().err
    assert sorted(f.name for f in (tmp_path / "run").iterdir()) == [LOCK_FILE]  # nothing written


def test_a_cache_being_built_is_refused(tmp_path) -> None:
    import inca
    from inca.cache import build_cache
    from inca.data import make_splits

    backbone = inca.load_backbone("tiny-vit", precision="fp32", device="cpu")
    splits = make_splits("digits", train_size=40, val_size=10, test_size=10)
    p = holder(tmp_path / "cache")
    try:
        with pytest.raises(IncaError, match="in use by another inca process"):
            build_cache(backbone, splits.val, ["block.1"], tmp_path / "cache", workers=0,
                        progress=False)  # fmt: skip
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    build_cache(backbone, splits.val, ["block.1"], tmp_path / "cache", workers=0, progress=False)
