"""Many tasks' adapters as a few stacked computations: serving 256 tasks is not 256 calls.

Every member of every loaded task that has the same adapter shape (``Adapter.stack_key``: kind,
options, width, classes) goes into one :class:`~inca.adapters.stack.AdapterStack`, whichever
task it belongs to and whichever tap it reads. A batch then runs one batched computation per
stack; folded InCA members of all stacks pool their taps' tokens together
(``shared_pool``: one matmul for every adapter on a tap). The members' modules are re-pointed
at their rows of the stacked weights, so stacking costs no second copy of the weights.

Only the members of the tasks a batch asks for run: a stack's rows are picked out for the
wanted tasks (a copy of their weights, never of the others'), and a stack none of them uses is
skipped. Each task then averages its members' probabilities (weighted when it says so), as
``Task.forward_normalized`` does; a test keeps the two equal.

Adapters with buffers of their own (Open-InCA's calibration, class sets) do not stack: a stack
runs every row with its first adapter's buffers. They run one by one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from inca.adapters import Adapter
from inca.adapters.base import stack_taps
from inca.adapters.shared_pool import shared_pool
from inca.adapters.stack import AdapterStack
from inca.adapters.tap_groups import group_tokens, is_group, tap_parts
from inca.tasks.task import Task


@dataclass(frozen=True)
class Row:
    """One member of one task: which task, which tap (or tap group), its weight in the task's
    mean."""

    task: str
    tap: str
    weight: float


class StackedTasks:
    """The members of ``tasks`` (name -> Task, all on one backbone and device) in stacks.

    ``forward_normalized(normed, wanted)`` gives what each wanted task's
    ``forward_normalized(normed)`` gives, from a few batched calls."""

    def __init__(self, tasks: Mapping[str, Task]) -> None:
        groups: dict[tuple, list[tuple[Row, Adapter]]] = {}
        for name, task in tasks.items():
            weights = task.member_weights or {m: 1 / len(task.member_names)
                                              for m in task.member_names}  # fmt: skip
            for member, tap in task.member_taps.items():
                adapter = task.member(member)
                own = any(True for _ in adapter.buffers())  # per-adapter state: no stacking
                key = (adapter.stack_key(), is_group(tap), id(adapter) if own else None)
                groups.setdefault(key, []).append((Row(name, tap, weights[member]), adapter))
        self.stacks: list[AdapterStack] = []
        self.rows: list[list[Row]] = []
        for members in groups.values():
            stack = AdapterStack([a for _, a in members]).eval()
            share_weights(stack, [a for _, a in members])
            self.stacks.append(stack)
            self.rows.append([r for r, _ in members])
        self.taps = list(dict.fromkeys(p for rows in self.rows for r in rows
                                       for p in tap_parts(r.tap)))  # fmt: skip
        self.tasks = list(tasks)

    @torch.inference_mode()
    def forward_normalized(
        self, normed: Mapping[str, Tensor], wanted: Collection[str] | None = None
    ) -> dict[str, Tensor]:
        """Normalised tokens {tap: (B, T, D)} -> {task: probabilities (B, C)} for the tasks in
        ``wanted`` (None: all); members of other tasks do not run."""
        wanted = set(self.tasks if wanted is None else wanted)
        chosen = [[i for i, r in enumerate(rows) if r.task in wanted] for rows in self.rows]
        live = [k for k, idx in enumerate(chosen) if idx]
        taps = [t for t in self.taps if t in normed]
        index = {t: i for i, t in enumerate(taps)}
        x = stack_taps(normed, taps, normalize=False) if taps else None  # (n_taps, B, T, D)
        params = {k: self._params(k, chosen[k]) for k in live}
        probs: dict[int, Tensor] = {}  # stack -> (N_chosen, B, C)
        pooling = [k for k in live if self._pools(k, x)]
        if pooling:
            queries = [self.stacks[k].template.folded_queries(params[k]) for k in pooling]
            tap_lists = [[index[self.rows[k][i].tap] for i in chosen[k]] for k in pooling]
            for k, pooled in zip(pooling, shared_pool(queries, tap_lists, x), strict=True):
                probs[k] = self.stacks[k].template.from_pooled(params[k], pooled).float()
        for k in (k for k in live if k not in pooling):
            tokens = torch.stack([group_tokens(normed, self.rows[k][i].tap) for i in chosen[k]])
            probs[k] = self.stacks[k].template.stacked_forward(params[k], tokens).float()
        return self._task_means(probs, chosen, wanted)

    def _params(self, k: int, rows: Sequence[int]) -> dict[str, Tensor]:
        """Stack k's weights for ``rows``: the stack itself when every row is wanted, else a
        copy of those rows only."""
        stacked = self.stacks[k].stacked()
        if len(rows) == len(self.rows[k]):
            return stacked
        index = torch.tensor(rows, device=next(iter(stacked.values())).device)
        return {n: p.index_select(0, index) for n, p in stacked.items()}

    def _pools(self, k: int, x: Tensor | None) -> bool:
        """Whether stack k reads single taps only through attention pooling (then it shares
        the pooling matmuls with every other such stack)."""
        if x is None or any(is_group(r.tap) for r in self.rows[k]):
            return False
        return self.stacks[k].template.pools_tokens(x.shape[2])

    def _task_means(
        self, probs: Mapping[int, Tensor], chosen: Sequence[Sequence[int]], wanted: set[str]
    ) -> dict[str, Tensor]:
        """Each wanted task's (weighted) mean of its members' softmax probabilities."""
        out: dict[str, Tensor] = {}
        for k, p in probs.items():
            p = p.softmax(-1)  # (N_chosen, B, C)
            for j, i in enumerate(chosen[k]):
                row = self.rows[k][i]
                term = p[j] * row.weight
                out[row.task] = out[row.task] + term if row.task in out else term
        return {n: out[n] for n in self.tasks if n in wanted}


@torch.no_grad()
def share_weights(stack: AdapterStack, adapters: Sequence[Adapter]) -> None:
    """Point each adapter's parameters at its row of the stack's weights (same values: the
    stack was built from them), so a task and the stack hold one copy between them."""
    for i, adapter in enumerate(adapters):
        for name, p in adapter.named_parameters():
            p.data = stack.stacked()[name].data[i]
