"""VQT, Visual Query Tuning: learned query tokens summarise every layer of a frozen transformer.

Block i gets Q_i learned query tokens. They attend to the block's own tokens, but the keys and
values exclude them, so every backbone token stays exactly what the frozen model computes; the
query outputs are read after the whole block (attention, layer scale, MLP, residuals). A linear
head reads the L2-normalised final CLS token concatenated with the L2-normalised query outputs
of every layer.

Memory. Because the backbone tokens never depend on the queries, the efficient path runs the
backbone once without autograd, keeping only each block's keys and values (B, H, T, hd), and
then runs each block on its Q query rows alone with those keys and values swapped in (see
``inca.backbones.attention_routing``). Autograd then stores activations for B·Q rows per block
instead of B·(T + Q), and no (T + Q)^2 attention maps. ``naive=True`` keeps the reference
formulation (append the queries to the sequence, mask them out of the keys/values, keep the
whole graph) to measure the difference and to test against.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inca.backbones.attention_routing import attention_module, capture_route, route_attention
from inca.backbones.base import Backbone
from inca.errors import IncaError
from inca.methods.vqt.config import VQTConfig


def _tokens(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple | list) else out


class VQTModel(nn.Module):
    """Query tokens per block + a linear head over [CLS, query outputs]; the backbone is shared,
    frozen and not a submodule (``train()`` must not switch it out of eval mode)."""

    def __init__(self, backbone: Backbone, num_classes: int, config: VQTConfig) -> None:
        super().__init__()
        paths = backbone.require_blocks("VQT")
        self.config, self.backbone_name = config, backbone.name
        self._backbone = (backbone,)  # a tuple hides it from nn.Module registration
        self.blocks = [backbone.model.get_submodule(p) for p in paths]
        self.attentions = [attention_module(b) for b in self.blocks]
        self.counts = config.query_counts(len(self.blocks))
        dim = backbone.taps["final"].dim
        generator = torch.Generator().manual_seed(0)
        self.queries = nn.ParameterList(
            [nn.Parameter(torch.randn(q, dim, generator=generator) * 0.02) for q in self.counts]
        )
        self.num_features = dim * (1 + sum(self.counts))
        self.head = nn.Linear(self.num_features, num_classes)
        self.register_buffer("selected", torch.arange(self.num_features))  # group-lasso keep

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    # ------------------------------------------------------------------ forward
    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, S, S) -> logits (B, C)."""
        return self.head(self.features(pixels)[:, self.selected])

    def features(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, S, S) -> [L2(CLS), L2(query outputs) of every block] (B, F), float32."""
        pixels = self.backbone_pixels(pixels)
        passes = self._naive_pass if self.config.vqt_naive else self._efficient_pass
        return self.head_input(*passes(pixels))

    def backbone_pixels(self, pixels: Tensor) -> Tensor:
        bb = self.backbone
        return pixels.to(bb.device, dtype=bb.precision.weight_dtype)

    def head_input(self, final: Tensor, outputs: list[Tensor]) -> Tensor:
        """The backbone's last tokens (B, T, D) and the query outputs of the used blocks
        [(B, Q_i, D)] -> [L2(CLS), L2(each query output)] (B, F), float32."""
        bb = self.backbone
        if not bb.output_is_final:
            final = bb.model.get_submodule(bb.final_norm_path)(final)
        cls = final[:, 0] if bb.num_prefix_tokens else final.mean(1)  # (B, D)
        parts = [F.normalize(cls.float(), dim=-1)]
        parts += [F.normalize(o.float(), dim=-1).flatten(1) for o in outputs]  # (B, Q_i * D)
        return torch.cat(parts, dim=-1)

    @property
    def used(self) -> list[int]:
        """The blocks with at least one query."""
        return [i for i, q in enumerate(self.counts) if q]

    def _queries(self, i: int, batch: int) -> Tensor:
        """Block i's queries for a batch: (B, Q_i, D) in the backbone's weight dtype."""
        dtype = self.backbone.precision.weight_dtype
        return self.queries[i].to(dtype).unsqueeze(0).expand(batch, -1, -1)

    def keys_values(self, pixels: Tensor) -> tuple[Tensor, dict[int, tuple[Tensor, Tensor]]]:
        """The backbone without autograd: its last tokens (B, T, D) and, for each used block,
        the keys and values its attention computed (B, H, T, hd)."""
        bb, kv = self.backbone, {}
        reads = {self.attentions[i]: capture_route(kv, i) for i in self.used}
        with torch.no_grad(), bb.precision.autocast(), route_attention(reads):
            final = bb.run_model(bb.model, pixels).last_hidden_state
        return final, kv

    def query_outputs(
        self, kv: dict[int, tuple[Tensor, Tensor]], queries: list[Tensor]
    ) -> list[Tensor]:
        """Each used block run on its query rows alone, ``queries[j]`` (B, Q, D) for the j-th
        used block, attending to that block's keys/values ``kv``; -> its outputs (B, Q, D).
        Queries never attend to each other, so rows of several query sets can share a call."""
        swaps = {self.attentions[i]: (lambda k, v, i=i: kv[i]) for i in self.used}
        with self.backbone.precision.autocast(), route_attention(swaps):
            return [
                _tokens(self.blocks[i](q, None)) for i, q in zip(self.used, queries, strict=True)
            ]

    def _efficient_pass(self, pixels: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The backbone without autograd (keeping keys/values), then each block on its queries."""
        final, kv = self.keys_values(pixels)
        return final, self.query_outputs(kv, [self._queries(i, len(pixels)) for i in self.used])

    def _naive_pass(self, pixels: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Reference: append the queries to each block's input, drop them from the keys/values,
        split them off the block's output; autograd keeps the whole graph."""
        bb, used = self.backbone, self.used
        seen: dict[int, int] = {}  # block -> T (backbone tokens)
        outputs: dict[int, Tensor] = {}
        handles = []

        def pre(i: int):
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
                x = args[0]
                seen[i] = x.shape[1]
                q = self._queries(i, x.shape[0]).to(x.dtype)
                return (torch.cat([x, q], dim=1), *args[1:]), kwargs

            return hook

        def post(i: int):
            def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
                tokens = _tokens(out)
                outputs[i] = tokens[:, seen[i] :]
                kept = tokens[:, : seen[i]]
                return (kept, *out[1:]) if isinstance(out, tuple) else kept

            return hook

        def drop_queries(i: int):
            return lambda k, v: (k[:, :, : seen[i]], v[:, :, : seen[i]])

        for i in used:
            handles.append(self.blocks[i].register_forward_pre_hook(pre(i), with_kwargs=True))
            handles.append(self.blocks[i].register_forward_hook(post(i), with_kwargs=True))
        try:
            routes = {self.attentions[i]: drop_queries(i) for i in used}
            with bb.precision.autocast(), route_attention(routes):
                final = bb.run_model(bb.model, pixels).last_hidden_state
        finally:
            for h in handles:
                h.remove()
        return final, [outputs[i] for i in used]

    # ------------------------------------------------------------------ training harness
    def param_groups(self) -> list[dict[str, Any]]:
        """Queries and head at lr (the one rate VQT sweeps); weight decay on the head's matrix
        only (queries are tokens)."""
        lr, wd = self.config.lr, self.config.weight_decay
        queries = [p for p in self.queries if p.numel()]
        return [
            {"params": queries + [self.head.bias], "lr": lr, "base_lr": lr, "weight_decay": 0.0},
            {"params": [self.head.weight], "lr": lr, "base_lr": lr, "weight_decay": wd},
        ]

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def changed_state(self) -> dict[str, Tensor]:
        """Everything VQT adds: the queries, the head and the selected features."""
        state = {f"queries.{i}": q for i, q in enumerate(self.queries)}
        state |= {f"head.{k}": v for k, v in self.head.state_dict().items()}
        state["selected"] = self.selected
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    @torch.no_grad()
    def load_changed_state(self, state: dict[str, Tensor]) -> None:
        for i, q in enumerate(self.queries):
            saved = state.get(f"queries.{i}")
            if saved is None or saved.shape != q.shape:
                raise IncaError(
                    f"VQT weights do not fit: block {i} expects queries {tuple(q.shape)}, the "
                    f"file has {None if saved is None else tuple(saved.shape)}"
                )
            q.copy_(saved)
        selected = state["selected"].to(torch.long)
        self.set_selection(selected)
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})

    def set_selection(self, selected: Tensor) -> None:
        """Keep only the features ``selected`` (indices into the full feature vector); the head
        is rebuilt to read them (its weights are then fitted or loaded)."""
        if selected.numel() == 0 or int(selected.max()) >= self.num_features:
            raise IncaError(f"feature selection must index 1..{self.num_features} features")
        device = self.head.weight.device
        self.selected = selected.to(device)
        self.head = nn.Linear(len(selected), self.head.out_features).to(device)
