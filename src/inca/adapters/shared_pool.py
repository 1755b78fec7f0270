"""Attention pooling shared by every folded adapter reading a tap: the grid's hot loop.

In folded form (``inca_xattn``) an InCA adapter touches the tokens only through two matmuls: the
logits ``u x̂ᵀ`` of its m·h folded queries, and the pooling ``α x̂``. Run per adapter, those have
m·h = 6 rows: tiny matrices that reach a few percent of the CPU's matmul speed. Every adapter of
a grid that reads the same tap shares x̂, so their rows can be stacked: K adapters on a tap give
one matmul of K·m·h rows, whatever their learning rates, weight decays or query counts (their
parameters stay in their own stacks and optimiser groups; only the token-sized work is joined).
Exactly the same numbers as each adapter alone, up to float rounding; a test keeps it so.

Two layouts, one result:

* **grid** (every stack reads the same taps, one adapter per tap: a grid over layers and
  hyper-parameters always does). Every tap then has the same rows, so all taps go in ONE
  batched matmul for the logits and one for the pooling, and each stack's pooled tokens are a
  split of the result, (n_taps, B, J, D): no gather, no concatenation of the pooled tokens.
* **by tap** (anything else): one matmul per tap over the rows of the adapters on it, the
  pooled rows put back in stack order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from inca.adapters.tap_batch import TapBatch, same_shape, select_taps


def shared_pool(
    queries: Sequence[Tensor], taps: Sequence[Sequence[int]], x: Tensor | TapBatch
) -> list[Tensor]:
    """Softmax attention pooling of many adapters' folded queries over the tokens of their taps.

    Args:
        queries: per stack i, folded queries u_i (N_i, J_i, D) (J_i = m·h rows per adapter).
        taps: per stack i, N_i ints: the index into ``x`` of the tap each adapter reads.
        x: normalised tokens (n_taps, B, T, D), possibly bf16: the matmuls run in its dtype,
           the softmax in fp32; or a ``TapBatch`` of taps whose token counts differ (every
           query's width D must be its taps' width).

    Returns:
        per stack i, the pooled tokens Σ_t α_t x̂_t, (N_i, B, J_i, D) in ``x``'s dtype.
    """
    taps = [list(t) for t in taps]
    if is_grid(taps) and same_shape(x, taps[0]):
        return _pool_grid(queries, taps, x)
    return _pool_by_tap(queries, taps, x)


def is_grid(taps: Sequence[Sequence[int]]) -> bool:
    """Whether every stack reads the same taps, each once (then all taps pool in one matmul)."""
    first = sorted(taps[0])
    return len(set(first)) == len(first) and all(sorted(t) == first for t in taps)


def _pool_grid(queries: Sequence[Tensor], taps: list[list[int]], x: Tensor | TapBatch
               ) -> list[Tensor]:  # fmt: skip
    """Every tap's rows in one batched matmul: (n, R, D) @ (n, D, B·T), then (n·B, R, T) @
    (n·B, T, D); R = Σ_i J_i rows per tap, in stack order."""
    order = sorted(taps[0])  # the taps read, ascending: position p holds tap order[p]
    n = len(order)
    xs = select_taps(x, order)  # (n, B, T, D)
    _, B, T, D = xs.shape
    # stack i's adapter j sits at position order.index(taps[i][j]); rows of position p
    at = [[order.index(t) for t in tap] for tap in taps]
    same = list(range(n))
    in_order = [q if pos == same else q[_inverse(pos)] for q, pos in zip(queries, at, strict=True)]
    u = torch.cat(in_order, dim=1).to(xs.dtype)  # (n, R, D)
    R = u.shape[1]
    # (n, R, D) @ (n, D, B·T): the long B·T side is the reduction of the backward's
    # grad_u = dlogits @ x̂, which keeps x̂ row-major there
    logits = torch.bmm(u, xs.reshape(n, B * T, D).transpose(1, 2))  # (n, R, B·T)
    alpha = logits.float().view(n, R, B, T).softmax(-1)  # over tokens, fp32
    alpha = alpha.transpose(1, 2).to(xs.dtype).reshape(n * B, R, T)  # (n·B, R, T), small
    pooled = torch.bmm(alpha, xs.reshape(n * B, T, D)).view(n, B, R, D)
    # split, not slices: the backward of a split is one concatenation, while each slice's
    # backward would fill a zero tensor the size of all of ``pooled``
    parts = pooled.split([q.shape[1] for q in queries], dim=2)  # (n, B, J_i, D) views
    return [p if pos == same else p[pos] for p, pos in zip(parts, at, strict=True)]


def _inverse(positions: Sequence[int]) -> list[int]:
    """The permutation that puts item j at ``positions[j]``."""
    inverse = [0] * len(positions)
    for j, p in enumerate(positions):
        inverse[p] = j
    return inverse


def _pool_by_tap(queries: Sequence[Tensor], taps: list[list[int]], x: Tensor | TapBatch
                 ) -> list[Tensor]:  # fmt: skip
    """One matmul per tap over the rows of every adapter on it, then back in stack order."""
    B, D = x[taps[0][0]].shape[0], queries[0].shape[-1]
    rows = torch.cat([u.reshape(-1, D) for u in queries]).to(x[taps[0][0]].dtype)  # (R, D)
    row_tap, row_adapter, first = [], [], 0  # per row: its tap, its adapter (over all stacks)
    for u, tap in zip(queries, taps, strict=True):
        for j, t in enumerate(tap):
            row_tap += [t] * u.shape[1]
            row_adapter += [first + j] * u.shape[1]
        first += len(tap)
    chunks: dict[int, Tensor] = {}
    for tap in sorted(set(row_tap)):
        sel = [r for r, t in enumerate(row_tap) if t == tap]  # every adapter's rows on it
        xt = x[tap]  # (B, T, D): T may differ from tap to tap
        T = xt.shape[1]
        index = torch.tensor(sel, device=rows.device)
        logits = rows.index_select(0, index) @ xt.reshape(B * T, D).transpose(0, 1)
        alpha = logits.float().view(-1, B, T).softmax(-1)  # (R_t, B, T), over tokens
        alpha = alpha.transpose(0, 1).to(xt.dtype)  # (B, R_t, T)
        part = torch.bmm(alpha, xt)  # (B, R_t, D)
        # each adapter's rows are consecutive here and in stack order: split into them (the
        # backward is one concatenation, where a permuting index_select's was a zero fill of
        # all the rows and a scatter)
        adapters = [row_adapter[r] for r in sel]
        ids = list(dict.fromkeys(adapters))
        chunks.update(zip(ids, part.split([adapters.count(a) for a in ids], dim=1), strict=True))
    pooled = torch.cat([chunks[a] for a in range(len(chunks))], 1)  # (B, R, D), stack order
    parts = pooled.split([u.shape[0] * u.shape[1] for u in queries], dim=1)
    return [p.view(B, u.shape[0], u.shape[1], D).transpose(0, 1)
            for p, u in zip(parts, queries, strict=True)]  # fmt: skip
