"""A `Task`: the trained result of one job, ready to predict.

A task is one or more adapters (its *members*) reading taps of one frozen backbone; it predicts
the mean of the members' softmax probabilities (one member: a single adapter; several: an
ensemble, as ``inca.train.select`` chose them), weighted when greedy selection chose the ensemble (a
member it added twice counts twice). It remembers which backbone it was trained on (name,
weights hash, preprocessing) so that serving can refuse a backbone that would give other tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inca.adapters import Adapter, adapter_config, build_adapter, normalize_tokens
from inca.adapters.tap_groups import group_tokens, group_width, is_group, single_taps
from inca.backbones.base import Backbone
from inca.data.views import VIEW_SETS, views_of
from inca.errors import IncaError, UnknownNameError
from inca.tasks.storage import (
    TASK_JSON,
    WEIGHTS,
    TaskKind,
    register_task_kind,
    require,
    save_task,
)
from inca.utils.io import now_iso

TaskMember = tuple[str, str, Adapter]  # (member name, tap or tap group "block.5+block.8", adapter)


_EMPTY = nn.ModuleDict()  # what a ModuleDict key must not shadow


def module_key(name: str) -> str:
    """An ``nn.ModuleDict`` key for member ``name``, one-to-one.

    ModuleDict keys may not contain "." (member names do: "block.3/inca") nor shadow its
    attributes ("keys", "training"). So "%" and "." are percent-escaped, and a clash gets a
    leading "%": escaped names have "%" only before "25" or "2E", so keys stay distinct.
    """
    key = name.replace("%", "%25").replace(".", "%2E")
    return "%" + key if hasattr(_EMPTY, key) else key


def backbone_info(backbone: Backbone) -> dict[str, Any]:
    """What a task records about its backbone: enough to reload it and to check it is the same."""
    return backbone.identity()


Weights = Sequence[float] | Mapping[str, float]


def normalize_weights(
    task: str, members: Sequence[str], weights: Weights | None
) -> dict[str, float] | None:
    """``weights`` checked and scaled to sum 1, keyed by member; None stays None (uniform).

    ``weights`` is one number per member, in member order, or a mapping {member: weight} naming
    every member (what ``Task.member_weights`` is, so one task's weights can build another).
    Bad weights are refused rather than guessed: a wrong weight silently changes every
    prediction.
    """
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        if set(weights) != set(members):
            raise IncaError(
                f"task {task!r}: the weights name {sorted(weights)} but the members are "
                f"{list(members)}; give one weight per member"
            )
        weights = [weights[m] for m in members]
    try:
        if isinstance(weights, str | bytes):
            raise TypeError
        values = list(weights)
    except TypeError:
        raise IncaError(
            f"task {task!r}: weights must be numbers, one per member, not {weights!r}"
        ) from None
    if len(values) != len(members):
        raise IncaError(
            f"task {task!r} has {len(members)} members but {len(values)} weights; give one "
            "weight per member, in member order"
        )
    out = {}
    for member, w in zip(members, values, strict=True):
        try:
            value = float(w) if not isinstance(w, bool | str | bytes) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise IncaError(
                f"task {task!r}, member {member!r}: weight {w!r} is not a finite number > 0"
            )
        out[member] = value
    total = math.fsum(out.values())
    return {m: w / total for m, w in out.items()}


class Task(nn.Module):
    """Adapters on taps of one backbone; ``forward`` gives the (weighted) mean of their
    probabilities.

    Args:
        name: how the task is called in predictions and on disk.
        method: how it was made ("inca", "linear", "ensemble", ...): informative only.
        backbone_info: ``{"name", "weights_hash", "preprocess", "num_prefix_tokens"}``.
        class_names: one per output of every member, in output order.
        members: ``(member name, tap, adapter)``; the task holds these modules, not copies.
        metrics, data: free-form JSON-able records (accuracies, dataset and split).
        created: ISO time of creation (now when not given).
        weights: one finite weight > 0 per member, in member order, or {member: weight} (e.g.
            greedy selection's multiplicities); scaled to sum 1 and kept as ``member_weights``
            {member: weight}. None (the default): a uniform mean, ``member_weights`` None.
        views: test-time views (``inca.data.views``: "none", "flip", "rot90", "dihedral"):
            whoever runs the backbone for this task (``MultiTask``, ``inca serve``) averages its
            probabilities over these exact views of each image, as its selection did.
    """

    def __init__(
        self,
        name: str,
        method: str,
        backbone_info: Mapping[str, Any],
        class_names: Sequence[str],
        members: Sequence[TaskMember],
        metrics: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        created: str | None = None,
        weights: Weights | None = None,
        views: str = "none",
    ) -> None:
        super().__init__()
        if not isinstance(name, str) or not name:
            raise IncaError(f"a task needs a non-empty name, got {name!r}")
        if not members:
            raise IncaError(f"task {name!r} has no members; give it at least one adapter")
        self.name, self.method = name, method
        self.backbone_info = dict(backbone_info)
        self.class_names = [str(c) for c in class_names]
        self.metrics, self.data = dict(metrics or {}), dict(data or {})
        self.created = created or now_iso()
        self.members = nn.ModuleDict()
        self.member_taps: dict[str, str] = {}
        self._keys: dict[str, str] = {}  # member name -> ModuleDict key
        for member, tap, adapter in members:
            self._add(member, tap, adapter)
        self.member_weights = normalize_weights(name, self.member_names, weights)
        views_of(views)  # a clear error for an unknown set
        self.views = views

    def _add(self, member: str, tap: str, adapter: Adapter) -> None:
        where = f"task {self.name!r}, member {member!r}"
        if not isinstance(member, str) or not member:
            raise IncaError(f"task {self.name!r}: member names must be non-empty strings")
        if member in self._keys:
            raise IncaError(f"{where} appears twice; give every member its own name")
        if not isinstance(adapter, Adapter):
            raise IncaError(f"{where} is a {type(adapter).__name__}, not an inca Adapter")
        if adapter.num_classes != len(self.class_names):
            raise IncaError(
                f"{where} predicts {adapter.num_classes} classes but the task has "
                f"{len(self.class_names)} class names; give one name per class"
            )
        self._keys[member] = module_key(member)
        self.members[self._keys[member]] = adapter
        self.member_taps[member] = tap

    @classmethod
    def from_adapters(
        cls,
        name: str,
        method: str,
        backbone: Backbone,
        class_names: Sequence[str],
        members: Sequence[TaskMember],
        metrics: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        weights: Weights | None = None,
        views: str = "none",
    ) -> Task:
        """A task from adapters trained on ``backbone``; checks each tap exists and fits.
        ``weights``, ``views``: as for ``Task``."""
        widths = {t: info.dim for t, info in backbone.taps.items()}
        for member, tap, adapter in members:
            if is_group(tap):
                if not adapter.config.multi_tap:
                    raise IncaError(
                        f"task {name!r}, member {member!r}: a {adapter.config.kind} adapter reads "
                        f"one tap, not the group {tap!r}"
                    )
                dim = group_width(tap, widths, f"task {name!r}, member {member!r}: ")
            else:
                if tap not in widths:
                    backbone.validate_taps([tap])  # raises UnknownNameError listing the taps
                dim = widths[tap]
            if adapter.in_dim != dim:
                raise IncaError(
                    f"task {name!r}, member {member!r}: the adapter reads width {adapter.in_dim} "
                    f"but tap {tap!r} of {backbone.name} has width {dim}; build it with "
                    f"in_dim={dim}"
                )
        info = backbone_info(backbone)
        return cls(name, method, info, class_names, members, metrics, data, weights=weights,
                   views=views)  # fmt: skip

    # ----------------------------------------------------------------- what it holds
    @property
    def member_names(self) -> list[str]:
        return list(self.member_taps)

    def member(self, name: str) -> Adapter:
        """The adapter of member ``name`` (its real name, dots and all)."""
        if name not in self._keys:
            raise IncaError(
                f"task {self.name!r} has no member {name!r}; it has {self.member_names}"
            )
        return self.members[self._keys[name]]  # type: ignore[return-value]

    @property
    def taps(self) -> list[str]:
        """The single taps the members read (a group's each), each once, in the order members
        first use them: what the backbone must give."""
        return single_taps(self.member_taps.values())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def view_set(self) -> tuple[int, ...]:
        """The exact views its probabilities average over ((0,): the image as it is)."""
        return views_of(self.views)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, method={self.method!r}, classes={self.num_classes}"

    # ----------------------------------------------------------------- predicting
    def forward(self, tokens: Mapping[str, Tensor]) -> Tensor:
        """Raw tokens {tap: (B, T, D)} -> class probabilities (B, C); each tap normalised once."""
        missing = [t for t in self.taps if t not in tokens]
        if missing:
            raise IncaError(
                f"task {self.name!r} needs taps {missing}; pass backbone.forward_taps(pixels, "
                "task.taps)"
            )
        return self.forward_normalized({t: normalize_tokens(tokens[t]) for t in self.taps})

    def forward_normalized(self, normed: Mapping[str, Tensor]) -> Tensor:
        """Normalised tokens {tap: x̂ (B, T, D) float32} -> mean member probabilities (B, C),
        weighted by ``member_weights`` when the task has them.

        Takes x̂ rather than raw tokens so that a caller serving several tasks normalises each
        tap once for all of them (``MultiTask``).
        """
        probs = [
            self.members[self._keys[m]](group_tokens(normed, tap)).float().softmax(-1)  # (B, C)
            for m, tap in self.member_taps.items()
        ]
        if len(probs) == 1:
            return probs[0]
        stacked = torch.stack(probs)  # (M, B, C)
        if self.member_weights is None:
            return stacked.mean(0)
        w = torch.tensor(list(self.member_weights.values()), device=stacked.device)  # (M,)
        return torch.einsum("m,mbc->bc", w, stacked)

    # ----------------------------------------------------------------- on disk
    def save(self, path: str | Path) -> Path:
        """Write the task directory ``path`` atomically (see ``inca.tasks.storage``)."""
        return save_task(self, path)


# ------------------------------------------------------------------ how it is stored
def _record_fields(task: Task) -> dict[str, Any]:
    """task.json's "members": each member's adapter kind, tap, config, width (and weight)."""
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
    return {"members": members} | ({"views": task.views} if task.views != "none" else {})


def _tensors(task: Task) -> dict[str, Tensor]:
    """Every member's state dict, keyed "{member}/{parameter}" (parameter names have no "/")."""
    out = {}
    for name in task.member_names:
        for key, t in task.member(name).state_dict().items():
            out[f"{name}/{key}"] = t.detach().cpu().contiguous()
    return out


def _check(record: dict[str, Any], file: Path) -> None:
    require(record, file, "", members=list)
    if not record["members"]:
        raise IncaError(f"{file} lists no members; re-save the task")
    for i, m in enumerate(record["members"]):
        if not isinstance(m, dict):
            raise IncaError(f"{file}: members[{i}] is not an object; re-save the task")
        require(m, file, f"members[{i}].", name=str, kind=str, tap=str, config=dict, in_dim=int)
    _check_weights(record["members"], file)
    if record.get("views", "none") not in VIEW_SETS:
        raise IncaError(
            f"{file}: field views is {record['views']!r}, not one of {', '.join(VIEW_SETS)}; "
            "re-save the task"
        )


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


def _read(record: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> Task:
    file, bb = path / TASK_JSON, record["backbone"]
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
        views=record.get("views", "none"),
    )
    return task.eval()


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


register_task_kind(Task, TaskKind("members", _record_fields, _tensors, _check, _read))
