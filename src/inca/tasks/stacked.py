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
from typing import Any

import torch
from torch import Tensor

from inca.adapters import Adapter
from inca.adapters.stack import AdapterStack
from inca.adapters.tap_groups import group_tokens, is_group
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
            members.sort(key=lambda m: m[0].tap)  # rows of one tap next to each other
            stack = AdapterStack([a for _, a in members]).eval()
            share_weights(stack, [a for _, a in members])
            self.stacks.append(stack)
            self.rows.append([r for r, _ in members])
        self.tasks = list(tasks)
        self._folds: dict[int, tuple[Tensor, Any]] = {}  # stack -> (queries, value fold)

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
        # folded InCA members pool tap by tap, every task's at once; others run per stack
        pooling = [k for k in live if self._pools(k, chosen[k], normed)]
        if pooling:
            probs |= self._pool(pooling, chosen, params, normed)
        for k in (k for k in live if k not in probs):
            probs[k] = self._run_alone(k, chosen[k], params[k], normed)
        return self._task_means(probs, chosen, wanted)

    def _pool(self, stacks: Sequence[int], chosen: Sequence[Sequence[int]],
              params: Mapping[int, dict[str, Tensor]], normed: Mapping[str, Tensor]
              ) -> dict[int, Tensor]:  # fmt: skip
        """Folded InCA stacks: for each tap, the folded queries of every wanted member on it
        (computed once, with the value weights' fold: the weights do not change) in ONE
        pooling matmul; then each stack's rows of that tap (consecutive: rows are sorted by
        tap) through the value projection and head. -> {stack: logits (N_chosen, B, C)}."""
        pieces: dict[str, list[tuple[int, slice]]] = {}  # tap -> (stack, its rows' positions)
        for k in stacks:
            taps = [self.rows[k][i].tap for i in chosen[k]]
            start = 0
            for tap in dict.fromkeys(taps):
                stop = start + taps.count(tap)
                pieces.setdefault(tap, []).append((k, slice(start, stop)))
                start = stop
        folds = {k: self._fold(k, chosen[k]) for k in stacks}
        # per stack, (first row, logits) of each tap's piece: joined in row order at the end,
        # whatever order the taps were pooled in
        logits: dict[int, list[tuple[int, Tensor]]] = {k: [] for k in stacks}
        for tap, parts in pieces.items():
            x = normed[tap]  # (B, T, D)
            B, T, D = x.shape
            u = torch.cat([folds[k][0][sl].reshape(-1, D) for k, sl in parts])  # (R, D)
            alpha = (u @ x.reshape(B * T, D).T).view(-1, B, T).softmax(-1)  # (R, B, T)
            pooled = torch.bmm(alpha.transpose(0, 1), x)  # (B, R, D)
            sizes = [folds[k][0][sl].numel() // D for k, sl in parts]
            for (k, sl), p in zip(parts, pooled.split(sizes, dim=1), strict=True):
                n = sl.stop - sl.start
                fold = tuple(f[sl] for f in folds[k][1])
                P = {name: v[sl] for name, v in params[k].items()}
                p = p.view(B, n, -1, D).transpose(0, 1)  # (n, B, J, D)
                piece = self.stacks[k].template.from_pooled(P, p, fold).float()
                logits[k].append((sl.start, piece))
        return {k: torch.cat([lg for _, lg in sorted(parts, key=lambda part: part[0])])
                for k, parts in logits.items()}  # fmt: skip

    def _fold(self, k: int, rows: Sequence[int]) -> tuple[Tensor, Any]:
        """Stack k's folded queries (N, J, D) and value fold, for ``rows``: computed for the
        whole stack once, then picked."""
        if k not in self._folds:
            template, P = self.stacks[k].template, self.stacks[k].stacked()
            self._folds[k] = (template.folded_queries(P), template.value_fold(P))
        u, fold = self._folds[k]
        if len(rows) == len(self.rows[k]):
            return u, fold
        index = torch.tensor(rows, device=u.device)
        return u.index_select(0, index), tuple(f.index_select(0, index) for f in fold)

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

    def _pools(self, k: int, rows: Sequence[int], normed: Mapping[str, Tensor]) -> bool:
        """Whether stack k's ``rows`` read single taps only through attention pooling: then
        they share each tap's pooling matmul with every other such stack."""
        taps = {self.rows[k][i].tap for i in rows}
        if any(is_group(t) for t in taps):
            return False
        template = self.stacks[k].template
        return all(template.pools_tokens(normed[t].shape[-2]) for t in taps)

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
