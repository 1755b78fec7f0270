"""The AdapterBank: every adapter of a plan, fed from one backbone pass, one summed loss.

Each tap's tokens are normalised once per batch and shared by all adapters reading that tap
(dinov2's ``AllClassifiers`` habit: compute features once, many named heads). Adapters of one
shape and optimiser setting are stored stacked and run as ONE batched computation
(:class:`~inca.adapters.stack.AdapterStack`), whichever taps they read: InCA on twelve blocks is
one stack. Each adapter is initialised from its own seed (run seed + its name), so it starts
from the same weights whether it is trained alone or beside sixty others. A multi-tap adapter
(``tap_groups``) reads its taps' normalised tokens joined along the token axis.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from inca.adapters import Adapter, build_adapter
from inca.adapters.base import stack_taps
from inca.adapters.shared_pool import shared_pool
from inca.adapters.stack import AdapterStack
from inca.adapters.tap_batch import TapBatch
from inca.adapters.tap_groups import group_width
from inca.backbones.base import TapInfo
from inca.train.plan import AdapterSpec


def adapter_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


class AdapterBank(nn.Module):
    """Adapters as the trainer's members (:class:`~inca.train.protocols.Subsettable`: halving
    drops some of them)."""

    class_weights: Tensor | None = None  # every class weighs alike in the loss

    def __init__(
        self,
        specs: Sequence[AdapterSpec],
        taps: Mapping[str, TapInfo],
        num_classes: int,
        num_prefix_tokens: int,
        seed: int = 0,
        token_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.token_dtype = token_dtype  # what the adapters' token-sized matmuls read
        self._build = (dict(taps), num_classes, num_prefix_tokens, seed, token_dtype)
        self.specs = {s.name: s for s in specs}
        self.taps = [t for t in taps if any(t in s.taps for s in specs)]  # backbone order
        widths = {t: info.dim for t, info in taps.items()}
        groups: dict[tuple, list[tuple[AdapterSpec, Adapter]]] = {}
        for s in specs:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(adapter_seed(seed, s.name))
                width = group_width(s.tap, widths, f"adapter {s.name!r}: ")
                adapter = build_adapter(s.config, width, num_classes, num_prefix_tokens)
            key = (adapter.stack_key(), len(s.taps), s.lr, s.weight_decay)
            groups.setdefault(key, []).append((s, adapter))
        self.stacks = nn.ModuleList(AdapterStack([a for _, a in g]) for g in groups.values())
        self.stack_names = [[s.name for s, _ in g] for g in groups.values()]
        self._where = {n: (k, i) for k, names in enumerate(self.stack_names)
                       for i, n in enumerate(names)}  # fmt: skip
        for k, names in enumerate(self.stack_names):
            # (N,) for single taps; (N, k) for adapters on groups of k taps
            idx = [[self.taps.index(t) for t in self.specs[n].taps] for n in names]
            index = torch.tensor(idx)
            self.register_buffer(
                f"tap_index_{k}", index[:, 0] if index.shape[1] == 1 else index, persistent=False
            )
        self._contiguous = [self._as_slice(k) for k in range(len(self.stacks))]
        # the same indices as Python ints: the shared pooling plans its matmuls from them
        # without reading a device tensor back every batch
        self._tap_lists = [getattr(self, f"tap_index_{k}").tolist()
                           for k in range(len(self.stacks))]  # fmt: skip

    def _as_slice(self, k: int) -> slice | None:
        """The stack's taps as a slice of the stacked taps (a view, no copy), when they are one
        run of consecutive single taps."""
        idx = getattr(self, f"tap_index_{k}").tolist()
        if isinstance(idx[0], int) and idx == list(range(idx[0], idx[0] + len(idx))):
            return slice(idx[0], idx[0] + len(idx))
        return None

    def _tokens_of(self, k: int, x: Tensor) -> Tensor:
        """x (n_taps, B, T, D) -> what stack k's adapters read: (N, B, T, D), or for groups of
        g taps their tokens joined along the token axis, (N, B, g·T, D)."""
        sl = self._contiguous[k]
        if sl is not None:
            return x[sl]
        index = getattr(self, f"tap_index_{k}")
        if index.ndim == 1:
            return x.index_select(0, index)
        n, g = index.shape
        _, B, T, D = x.shape
        xs = x.index_select(0, index.flatten()).view(n, g, B, T, D)
        return xs.transpose(1, 2).reshape(n, B, g * T, D)

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def forward_batch(self, x: Tensor | TapBatch) -> dict[str, Tensor]:
        """The trainer's view (``inca.train.trainer.Members``): stacked normalised tokens."""
        return self.forward_normalized(x)

    def forward(self, tokens: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{tap: (B, T, D)} -> {adapter name: logits (B, C)}; each tap normalised once."""
        x = stack_taps(tokens, self.taps, normalize=True, dtype=self.token_dtype)
        return self.forward_normalized(x)

    def forward_normalized(self, x: Tensor | TapBatch) -> dict[str, Tensor]:
        """x: normalised tokens of ``self.taps`` stacked, (n_taps, B, T, D), or a ``TapBatch``
        when the taps differ in shape (a CNN's stages) -> {name: (B, C)}.

        Stacks whose adapters only pool the tokens by attention (folded InCA) share that work:
        one matmul per tap for all of them of one width (``shared_pool``); the others run on
        their own."""
        out: dict[str, Tensor] = {}
        pooling = [k for k in range(len(self.stacks)) if self._pools(k, x)]
        by_width: dict[int, list[int]] = {}  # rows of one width pool together
        for k in pooling:
            by_width.setdefault(self.stacks[k].template.in_dim, []).append(k)
        for ks in by_width.values():
            params = [self.stacks[k].stacked() for k in ks]
            queries = [
                self.stacks[k].template.folded_queries(p) for k, p in zip(ks, params, strict=True)
            ]
            taps = [self._tap_lists[k] for k in ks]
            for k, p, pooled in zip(ks, params, shared_pool(queries, taps, x), strict=True):
                logits = self.stacks[k].template.from_pooled(p, pooled)
                out.update(zip(self.stack_names[k], logits.unbind(0), strict=True))
        for k in range(len(self.stacks)):
            if k not in pooling:
                logits = self._run_alone(k, x)  # (N, B, C)
                out.update(zip(self.stack_names[k], logits.unbind(0), strict=True))
        return out

    def _pools(self, k: int, x: Tensor | TapBatch) -> bool:
        """Whether stack k reads single taps only through attention pooling (a group pools
        over several taps' tokens at once: it runs on its own)."""
        taps = self._tap_lists[k]
        if not isinstance(taps[0], int):
            return False
        template = self.stacks[k].template
        return all(template.pools_tokens(x[t].shape[-2]) for t in set(taps))

    def _run_alone(self, k: int, x: Tensor | TapBatch) -> Tensor:
        """Stack k on its own tokens -> logits (N, B, C): one stacked call, or adapter by
        adapter when their taps' tokens differ in shape."""
        stack = self.stacks[k]
        if isinstance(x, Tensor):
            return stack(self._tokens_of(k, x))
        rows = [self._row_tokens(taps, x) for taps in self._tap_lists[k]]  # (B, T_i, D)
        if len({r.shape for r in rows}) == 1:
            return stack(torch.stack(rows))
        P = stack.stacked()
        return torch.cat([
            stack.template.stacked_forward({n: p[j : j + 1] for n, p in P.items()},
                                           r.unsqueeze(0))
            for j, r in enumerate(rows)
        ])  # fmt: skip

    @staticmethod
    def _row_tokens(taps: int | list[int], x: TapBatch) -> Tensor:
        """One adapter's tokens: its tap's (B, T, D), or a group's joined, (B, ΣT, D)."""
        if isinstance(taps, int):
            return x[taps]
        return torch.cat([x[t] for t in taps], dim=-2)

    def subset(self, names: Sequence[str]) -> AdapterBank:
        """A bank of only ``names`` (kept in this bank's order) carrying their current weights:
        successive halving drops members this way, so later epochs cost only what survives."""
        keep = [n for n in self.names if n in set(names)]
        taps, num_classes, prefix, seed, dtype = self._build
        device = next(self.parameters()).device
        small = AdapterBank([self.specs[n] for n in keep], taps, num_classes, prefix, seed, dtype)
        small = small.to(device)
        for n in keep:
            small.load_member_state(n, self.member_state(n))
        return small

    def carry_optimizer_state(
        self, old: torch.optim.Optimizer, subset: AdapterBank, new: torch.optim.Optimizer
    ) -> None:
        """Move each of ``subset``'s adapters' AdamW moments from ``old`` (this bank's optimizer)
        into ``new`` (``subset``'s): rows of the stacked moments are picked out, so the survivors
        of a halving continue exactly."""
        for names, stack in zip(subset.stack_names, subset.stacks, strict=True):
            where = [self._where[n] for n in names]
            k_old = where[0][0]  # one stack key, lr and wd: they all come from one old stack
            rows = torch.tensor([i for _, i in where])
            old_stack = self.stacks[k_old]
            for pname, p_new in stack.stacked().items():
                p_old = old_stack.stacked()[pname]
                state = old.state.get(p_old)
                if not state:
                    continue
                new.state[p_new] = {
                    k: v[rows.to(v.device)].clone()
                    if v.ndim and v.shape[0] == len(old_stack)
                    else v.clone()
                    for k, v in state.items()
                }

    # ------------------------------------------------------------- per-adapter views
    def member_state(self, name: str) -> dict[str, Tensor]:
        """Adapter ``name``'s weights (CPU copies), keyed as its own module's."""
        k, i = self._where[name]
        return self.stacks[k].state_of(i)

    def load_member_state(self, name: str, state: dict[str, Tensor]) -> None:
        k, i = self._where[name]
        self.stacks[k].load_state_of(i, state)

    def checkpoint_state(self) -> dict[str, Tensor]:
        return self.state_dict()

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state)

    def export_adapter(self, name: str) -> Adapter:
        """A standalone copy of adapter ``name`` (for saving as a task)."""
        k, i = self._where[name]
        return self.stacks[k].export(i)

    def num_params(self, name: str) -> int:
        return self.stacks[self._where[name][0]].num_params_each()

    def param_groups(self) -> list[dict]:
        """Two AdamW groups per stack: matrices decay; vectors (norms, biases, queries) don't."""
        groups = []
        for names, stack in zip(self.stack_names, self.stacks, strict=True):
            spec = self.specs[names[0]]  # one lr and weight decay per stack
            decay, plain = [], []
            for pname, p in stack.stacked().items():
                (decay if p.ndim >= 3 and pname != "queries" else plain).append(p)
            for params, wd in ((decay, spec.weight_decay), (plain, 0.0)):
                if params:
                    groups.append(
                        {
                            "params": params,
                            "lr": spec.lr,
                            "base_lr": spec.lr,
                            "weight_decay": wd,
                            "adapters": names,
                        }
                    )
        return groups
