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
                # a tap group's tokens are as long as its taps together: one stack per group
                key = (adapter.stack_key(), tap if is_group(tap) else None,
                       id(adapter) if own else None)  # fmt: skip
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
        params = {k: self._params(k, chosen[k]) for k in live}
        probs: dict[int, Tensor] = {}  # stack -> (N_chosen, B, C)
        # taps of one token shape stack into one tensor (n_taps, B, T, D); a backbone whose
        # taps differ in shape (CNN stages) gives one such tensor per shape
        by_shape: dict[tuple, list[str]] = {}
        for t in self.taps:
            if t in normed:
                by_shape.setdefault(tuple(normed[t].shape), []).append(t)
        for taps in by_shape.values():
            index = {t: i for i, t in enumerate(taps)}
            tokens = normed[taps[0]].shape[-2]
            pooling = [k for k in live
                       if k not in probs and self._pools(k, chosen[k], index, tokens)]  # fmt: skip
            if not pooling:
                continue
            x = stack_taps(normed, taps, normalize=False)  # (n_taps, B, T, D)
            queries = [self.stacks[k].template.folded_queries(params[k]) for k in pooling]
            tap_lists = [[index[self.rows[k][i].tap] for i in chosen[k]] for k in pooling]
            for k, pooled in zip(pooling, shared_pool(queries, tap_lists, x), strict=True):
                probs[k] = self.stacks[k].template.from_pooled(params[k], pooled).float()
        for k in (k for k in live if k not in probs):
            probs[k] = self._run_alone(k, chosen[k], params[k], normed)
        return self._task_means(probs, chosen, wanted)

    def _run_alone(self, k: int, rows: Sequence[int], params: dict[str, Tensor],
                   normed: Mapping[str, Tensor]) -> Tensor:  # fmt: skip
        """Stack k's ``rows`` on their own tokens: one stacked call when their tokens have one
        shape, else row by row. -> logits (N_rows, B, C) in float32."""
        template = self.stacks[k].template
        tokens = [group_tokens(normed, self.rows[k][i].tap) for i in rows]
        if len({t.shape for t in tokens}) == 1:
            return template.stacked_forward(params, torch.stack(tokens)).float()
        return torch.cat([
            template.stacked_forward({n: p[j : j + 1] for n, p in params.items()},
                                     t.unsqueeze(0)).float()
            for j, t in enumerate(tokens)
        ])  # fmt: skip

    def _params(self, k: int, rows: Sequence[int]) -> dict[str, Tensor]:
        """Stack k's weights for ``rows``: the stack itself when every row is wanted, else a
        copy of those rows only."""
        stacked = self.stacks[k].stacked()
        if len(rows) == len(self.rows[k]):
            return stacked
        index = torch.tensor(rows, device=next(iter(stacked.values())).device)
        return {n: p.index_select(0, index) for n, p in stacked.items()}

    def _pools(self, k: int, rows: Sequence[int], index: Mapping[str, int], tokens: int) -> bool:
        """Whether stack k's ``rows`` read single taps of ``index`` (taps of one shape) only
        through attention pooling: then they share the pooling matmuls with every other such
        stack."""
        taps = [self.rows[k][i].tap for i in rows]
        if any(t not in index for t in taps):  # groups, or taps of another shape
            return False
        return self.stacks[k].template.pools_tokens(tokens)

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
