"""A task on disk: ``task.json`` (what it is) beside ``adapters.safetensors`` (its weights).

    my-task/
      task.json              {"format": "inca-task", "version": 1, "name", "method", "backbone",
                              "class_names", "members": [{"name", "kind", "tap", "config",
                              "in_dim", "weight"?}], "metrics", "data", "created"}   (sorted keys)
      adapters.safetensors   "{member name}/{parameter name}" -> tensor

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
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from inca.adapters import Adapter, adapter_config, build_adapter
from inca.errors import IncaError, UnknownNameError
from inca.finetune.config import config_from_dict
from inca.io import write_json
from inca.tasks.finetuned import FineTunedTask
from inca.tasks.task import Task

FORMAT, VERSION = "inca-task", 1
TASK_JSON, WEIGHTS = "task.json", "adapters.safetensors"


def task_record(task: Task | FineTunedTask) -> dict[str, Any]:
    """The content of ``task.json``: a common header, then the members or the fine-tuning."""
    record = {
        "format": FORMAT,
        "version": VERSION,
        "name": task.name,
        "method": task.method,
        "backbone": task.backbone_info,
        "class_names": task.class_names,
        "metrics": task.metrics,
        "data": task.data,
        "created": task.created,
    }
    if isinstance(task, FineTunedTask):
        return record | {"finetune": task.config.to_dict()}
    members = []
    for name in task.member_names:
        adapter = task.member(name)
        member = {
            "name": name,
            "kind": adapter.config.kind,
            "tap": task.member_taps[name],
            "config": adapter.config.to_dict(),
            "in_dim": adapter.in_dim,
        }
        if task.member_weights is not None:
            member["weight"] = task.member_weights[name]
        members.append(member)
    return record | {"members": members}


def task_tensors(task: Task | FineTunedTask) -> dict[str, Tensor]:
    """Every member's state dict, keyed "{member}/{parameter}" (parameter names have no "/");
    for a fine-tuned task, the weights fine-tuning changed."""
    if isinstance(task, FineTunedTask):
        return {k: v.contiguous() for k, v in task.state.items()}
    out = {}
    for name in task.member_names:
        for key, t in task.member(name).state_dict().items():
            out[f"{name}/{key}"] = t.detach().cpu().contiguous()
    return out


# --------------------------------------------------------------------------- saving
def save_task(task: Task | FineTunedTask, path: str | os.PathLike) -> Path:
    """Write ``task`` to the directory ``path``, replacing a task saved there before."""
    path = Path(path).expanduser()
    _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save_file(task_tensors(task), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        write_json(tmp / TASK_JSON, task_record(task))
        for f in (tmp / WEIGHTS, tmp / TASK_JSON):
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
def load_task(path: str | os.PathLike) -> Task | FineTunedTask:
    """The task saved in directory ``path``: in eval mode, on the CPU (``.to(device)`` moves it)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise IncaError(_missing_dir_message(path))
    file = path / TASK_JSON
    record = _read_record(file)
    tensors = _read_tensors(path / WEIGHTS)
    bb = record["backbone"]
    if "finetune" in record:
        try:
            config = config_from_dict(record["finetune"])
        except TypeError as e:
            raise IncaError(f"{file}: field finetune is not a fine-tuning config ({e})") from None
        return FineTunedTask(
            record["name"],
            record["method"],
            bb,
            record["class_names"],
            config,
            tensors,
            metrics=record.get("metrics"),
            data=record.get("data"),
            created=record.get("created"),
        )
    num_classes = len(record["class_names"])
    members, used = [], set()
    for m in record["members"]:
        name = m["name"]
        prefix = f"{name}/"
        state = {k[len(prefix) :]: t for k, t in tensors.items() if k.rpartition("/")[0] == name}
        used.update(prefix + k for k in state)
        adapter = _build_member(m, num_classes, bb["num_prefix_tokens"], file)
        try:
            adapter.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise IncaError(
                f"{path / WEIGHTS}: the weights of member {name!r} ({m['kind']} on tap "
                f"{m['tap']!r}) do not fit its config in {TASK_JSON}; the two files do not belong "
                f"together: re-save the task. Details: {e}"
            ) from None
        members.append((name, m["tap"], adapter))
    extra = sorted(set(tensors) - used)
    if extra:
        raise IncaError(
            f"{path / WEIGHTS} holds tensors of no member listed in {TASK_JSON} "
            f"({', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}); the two files do not "
            "belong together: re-save the task"
        )
    weighted = "weight" in record["members"][0]  # _read_record: all members or none
    task = Task(
        record["name"],
        record["method"],
        bb,
        record["class_names"],
        members,
        metrics=record.get("metrics"),
        data=record.get("data"),
        created=record.get("created"),
        weights=[m["weight"] for m in record["members"]] if weighted else None,
    )
    return task.eval()


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
    _require(record, file, "", name=str, method=str, backbone=dict, class_names=list)
    if "finetune" in record:
        _require(record, file, "", finetune=dict)
    else:
        _require(record, file, "", members=list)
    _require(
        record["backbone"],
        file,
        "backbone.",
        name=str,
        weights_hash=str,
        preprocess=dict,
        num_prefix_tokens=int,
    )
    if "finetune" not in record and not record["members"]:
        raise IncaError(f"{file} lists no members; re-save the task")
    for i, m in enumerate(record.get("members", [])):
        if not isinstance(m, dict):
            raise IncaError(f"{file}: members[{i}] is not an object; re-save the task")
        _require(m, file, f"members[{i}].", name=str, kind=str, tap=str, config=dict, in_dim=int)
    if "finetune" not in record:
        _check_weights(record["members"], file)
    return record


def _check_weights(members: list[dict], file: Path) -> None:
    """Either no member has a "weight" (uniform, as every task saved before weights) or all do,
    each a finite number > 0; anything else is a damaged file, not something to guess at."""
    has = [i for i, m in enumerate(members) if "weight" in m]
    if has and len(has) != len(members):
        missing = next(i for i in range(len(members)) if i not in has)
        raise IncaError(
            f"{file}: members[{missing}] has no weight but others do; every member of a weighted "
            "ensemble needs one: re-save the task"
        )
    for i in has:
        w = members[i]["weight"]
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w <= 0:
            raise IncaError(
                f"{file}: field members[{i}].weight is {w!r}, not a finite number > 0; re-save "
                "the task"
            )


def _require(record: dict, file: Path, where: str, **types: type) -> None:
    for key, kind in types.items():
        if not isinstance(record.get(key), kind):
            raise IncaError(
                f"{file}: field {where}{key} is missing or not a {kind.__name__}; re-save the task"
            )


def _read_tensors(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise IncaError(f"{file} is missing; the task's weights are gone: re-save or re-train it")
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise IncaError(
            f"{file} is not a readable safetensors file ({e}); re-save or re-train the task"
        ) from None


def _build_member(m: dict, num_classes: int, num_prefix_tokens: int, file: Path) -> Adapter:
    try:
        config = adapter_config(m["kind"], m["config"])
        return build_adapter(config, m["in_dim"], num_classes, num_prefix_tokens)
    except UnknownNameError as e:
        raise IncaError(
            f"{file}: member {m['name']!r}: {e}; the task was saved by an inca with this adapter "
            "kind: load it with that version"
        ) from None
    except (IncaError, TypeError) as e:
        raise IncaError(f"{file}: member {m['name']!r}: {e}") from None
