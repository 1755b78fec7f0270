"""Attention pooling shared by every folded adapter reading a tap: the grid's hot loop.

In folded form (``inca_xattn``) an InCA adapter touches the tokens only through two matmuls: the
logits ``u x̂ᵀ`` of its m·h folded queries, and the pooling ``α x̂``. Run per adapter, those have
m·h = 6 rows: tiny matrices that reach a few percent of the CPU's matmul speed. Every adapter of
a grid that reads the same tap shares x̂, so their rows can be stacked: K adapters on a tap give
one matmul of K·m·h rows, whatever their learning rates, weight decays or query counts (their
parameters stay in their own stacks and optimiser groups; only the token-sized work is joined).
Exactly the same numbers as each adapter alone, up to float rounding; a test keeps it so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def shared_pool(queries: Sequence[Tensor], taps: Sequence[Tensor], x: Tensor) -> list[Tensor]:
    """Softmax attention pooling of many adapters' folded queries over the tokens of their taps.

    Args:
        queries: per stack i, folded queries u_i (N_i, J_i, D) (J_i = m·h rows per adapter).
        taps: per stack i, (N_i,) the index into ``x`` of the tap each adapter reads.
        x: normalised tokens (n_taps, B, T, D), possibly bf16: the matmuls run in its dtype,
           the softmax in fp32.

    Returns:
        per stack i, the pooled tokens Σ_t α_t x̂_t, (B, N_i, J_i, D) in ``x``'s dtype.
    """
    _, B, T, D = x.shape
    sizes = [u.shape[0] * u.shape[1] for u in queries]
    rows = torch.cat([u.reshape(-1, D) for u in queries]).to(x.dtype)  # (R, D)
    row_tap = torch.cat(
        [t.repeat_interleave(u.shape[1]) for u, t in zip(queries, taps, strict=True)]
    )  # (R,)
    adapter_of_row = torch.cat([
        torch.arange(u.shape[0], device=row_tap.device).repeat_interleave(u.shape[1]) + start
        for u, start in zip(queries, _starts([u.shape[0] for u in queries]), strict=True)
    ])  # (R,): which adapter (counted over all stacks) each row belongs to  # fmt: skip
    chunks: dict[int, Tensor] = {}
    for tap in row_tap.unique().tolist():
        sel = (row_tap == tap).nonzero().squeeze(1)  # the rows of every adapter on this tap
        xt = x[tap]  # (B, T, D)
        # (R_t, D) @ (D, B*T): one matmul for all of them, the long side is the reduction of
        # the backward's grad_u = dlogits @ x̂
        logits = rows.index_select(0, sel) @ xt.reshape(B * T, D).transpose(0, 1)
        alpha = logits.float().view(-1, B, T).softmax(-1)  # (R_t, B, T), over tokens
        alpha = alpha.transpose(0, 1).to(x.dtype)  # (B, R_t, T)
        part = torch.bmm(alpha, xt)  # (B, R_t, D)
        # each adapter's rows are consecutive here and in stack order: split into them (views;
        # the backward is one concatenation, where a permuting index_select's was a zero
        # fill of all the rows and a scatter)
        ids, counts = torch.unique_consecutive(adapter_of_row[sel], return_counts=True)
        chunks.update(zip(ids.tolist(), part.split(counts.tolist(), dim=1), strict=True))
    pooled = torch.cat([chunks[a] for a in range(len(chunks))], 1)  # (B, R, D), stack order
    # split, not slices: the backward of a split is one concatenation, while each slice's
    # backward would fill a zero tensor the size of all of ``pooled``
    parts = pooled.split(sizes, dim=1)
    return [p.view(B, u.shape[0], u.shape[1], D) for p, u in zip(parts, queries, strict=True)]


def _starts(counts: Sequence[int]) -> list[int]:
    """Running offsets: [0, c0, c0 + c1, ...] (one per count)."""
    out, total = [], 0
    for c in counts:
        out.append(total)
        total += c
    return out
