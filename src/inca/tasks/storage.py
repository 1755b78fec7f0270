"""A task on disk: ``task.json`` (what it is) beside ``adapters.safetensors`` (its weights).

    my-task/
      task.json              {"format": "inca-task", "version": 1, "name", "method", "backbone",
                              "class_names", "members": [{"name", "kind", "tap", "config",
                              "in_dim", "weight"?}], "metrics", "data", "created"}   (sorted keys)
      adapters.safetensors   "{member name}/{parameter name}" -> tensor
      <side file>.safetensors  what a task carries beside its weights and serving never reads
                             (an analytic head's statistics: ``task.side_files``)

A weighted ensemble (greedy selection) gives every member a "weight" (summing to 1); a uniform
one gives none, so its task.json is the same as before weights existed and an older file loads
as uniform.

Saving writes a hidden sibling directory and renames it into place, so an interrupted save never
leaves a half-written task where a loadable one was. Loading reads safetensors only (no pickle:
a task file can come from anyone) and turns every way the files can be wrong into an
``IncaError`` that names the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import Tensor

from inca.errors import IncaError
from inca.utils.checked_tensors import require_finite, save_checked, verify
from inca.utils.io import make_private_dir_public, write_json

FORMAT, VERSION = "inca-task", 1
TASK_JSON, WEIGHTS = "task.json", "adapters.safetensors"


@dataclass(frozen=True)
class TaskKind:
    """How one class of task is stored: ``key`` is the task.json field only its records have
    ("members", "finetune"); ``fields(task)`` gives that part of the record, ``tensors(task)``
    its weights; ``check(record, file)`` refuses a damaged record with a clear error;
    ``read(record, tensors, path)`` rebuilds the task. ``one_backbone``: its record has the
    common "backbone" field (a combined task's parts have one each instead). Task classes
    register themselves (``register_task_kind``): storage imports none of them."""

    key: str
    fields: Callable[[Any], dict[str, Any]]
    tensors: Callable[[Any], dict[str, Tensor]]
    check: Callable[[dict[str, Any], Path], None]
    read: Callable[[dict[str, Any], dict[str, Tensor], Path], Any]
    one_backbone: bool = True


TASK_KINDS: dict[type, TaskKind] = {}


def register_task_kind(cls: type, kind: TaskKind) -> None:
    TASK_KINDS[cls] = kind


def kind_of_task(task: Any) -> TaskKind:
    for cls in type(task).__mro__:
        if cls in TASK_KINDS:
            return TASK_KINDS[cls]
    raise IncaError(f"{type(task).__name__} is not a task inca can save")


def kind_of_record(record: dict[str, Any], file: Path) -> TaskKind:
    for kind in TASK_KINDS.values():
        if kind.key in record:
            return kind
    keys = " or ".join(repr(k.key) for k in TASK_KINDS.values())
    raise IncaError(f"{file}: field {keys} is missing; re-save the task")


def task_record(task: Any) -> dict[str, Any]:
    """The content of ``task.json``: a common header, then the task kind's own part."""
    kind = kind_of_task(task)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "name": task.name,
        "method": task.method,
        "class_names": task.class_names,
        "metrics": task.metrics,
        "data": task.data,
        "created": task.created,
    } | ({"backbone": task.backbone_info} if kind.one_backbone else {})
    return record | kind.fields(task)


# --------------------------------------------------------------------------- saving
def save_task(task: Any, path: str | os.PathLike) -> Path:
    """Write ``task`` to the directory ``path``, replacing a task saved there before."""
    path = Path(path).expanduser()
    _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    make_private_dir_public(tmp)
    try:
        tensors = {k: v.contiguous() for k, v in kind_of_task(task).tensors(task).items()}
        save_checked(tensors, tmp / WEIGHTS, {"format": FORMAT})
        write_json(tmp / TASK_JSON, task_record(task))
        written = [tmp / WEIGHTS, tmp / TASK_JSON]
        for name, side in getattr(task, "side_files", {}).items():
            save_checked({k: v.contiguous() for k, v in side.items()}, tmp / name,
                         {"format": FORMAT})  # fmt: skip
            written.append(tmp / name)
        for f in written:
            _fsync(f)
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _check_replaceable(path: Path) -> None:
    """Only a saved task (or nothing, or an empty folder) may be replaced: never a user's files."""
    if path.is_file() or path.is_symlink():
        raise IncaError(f"{path} is a file; save the task to a directory path instead")
    if path.is_dir() and any(path.iterdir()) and not (path / TASK_JSON).is_file():
        raise IncaError(
            f"{path} is a directory that holds no {TASK_JSON}: not a saved task, so inca will not "
            "replace it; choose a new or empty directory"
        )


def _swap_in(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``; an old ``path`` is moved aside first and deleted last."""
    if not path.exists():
        os.replace(new, path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)  # put the previous task back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync(file: Path) -> None:
    with open(file, "rb") as f:
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- loading
def load_task(path: str | os.PathLike) -> Any:
    """The task saved in directory ``path``: in eval mode, on the CPU (``.to(device)`` moves it)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise IncaError(_missing_dir_message(path))
    file = path / TASK_JSON
    record = _read_record(file)
    tensors = _read_tensors(path / WEIGHTS)
    return kind_of_record(record, file).read(record, tensors, path).eval()


def read_side_file(path: str | os.PathLike, name: str) -> dict[str, Tensor] | None:
    """The tensors of side file ``name`` of the task saved in ``path`` (checked as the
    weights are), or None when the task has none."""
    file = Path(path).expanduser() / name
    return _read_tensors(file) if file.is_file() else None


def _missing_dir_message(path: Path) -> str:
    if path.is_file():
        return f"{path} is a file; give the task's directory (the one holding {TASK_JSON})"
    msg = f"task directory {path} does not exist; check the path"
    left = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
    if left:  # a save was interrupted between its two renames
        msg += f" (an interrupted save left the previous version at {left[-1]}: rename it back)"
    return msg


def _read_record(file: Path) -> dict[str, Any]:
    """``task.json``, parsed and checked: every field ``load_task`` relies on is there."""
    if not file.is_file():
        raise IncaError(
            f"{file} is missing: {file.parent} is not a saved inca task (save one with "
            "Task.save or `inca train`)"
        )
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IncaError(
            f"{file} is not readable JSON ({e}); re-save or re-train the task"
        ) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise IncaError(f"{file} is not an inca task file (its format is not {FORMAT!r})")
    if record.get("version") != VERSION:
        raise IncaError(
            f"{file} has task format version {record.get('version')!r}; this inca reads version "
            f"{VERSION}: use the inca version that saved it, or re-train the task"
        )
    require(record, file, "", name=str, method=str, class_names=list)
    kind = kind_of_record(record, file)
    if kind.one_backbone:
        require(record, file, "", backbone=dict)
        require(
            record["backbone"],
            file,
            "backbone.",
            name=str,
            weights_hash=str,
            preprocess=dict,
            num_prefix_tokens=int,
        )
    kind.check(record, file)
    return record


def require(record: dict, file: Path, where: str, **types: type) -> None:
    """Each ``types`` field of ``record`` is there with its type, or a clear error."""
    for key, kind in types.items():
        if not isinstance(record.get(key), kind):
            raise IncaError(
                f"{file}: field {where}{key} is missing or not a {kind.__name__}; re-save the task"
            )


def _read_tensors(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise IncaError(f"{file} is missing; the task's weights are gone: re-save or re-train it")
    fix = "re-save or re-train the task"
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise IncaError(f"{file} is not a readable safetensors file ({e}); {fix}") from None
    verify(tensors, metadata, file, fix)
    require_finite(tensors, file, fix)
    return tensors
