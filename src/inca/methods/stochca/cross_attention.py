"""StochCA, stochastic cross-attention: fine-tuning that keeps looking at the pretrained model.

A trainable copy of the backbone trains as in full fine-tuning, except that in each training
step every block, with probability p, swaps its self-attention for cross-attention: its queries
attend to the keys and values the *frozen* pretrained model computes at the same block for the
same images. One draw per block per step (the paper's default) or one per block per sample.
Evaluation uses self-attention only, so the saved task is a plain fine-tuned model and the frozen
copy is needed only while training.

The frozen pass runs without autograd and stops after the deepest block drawn, so a step with no
block drawn (0.9^12 ≈ 28% of steps for p = 0.1 and 12 blocks) costs nothing extra.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from inca.backbones.attention_routing import (
    KVRoute,
    StopForward,
    attention_module,
    capture_route,
    route_attention,
)
from inca.backbones.base import Backbone


class StochasticCrossAttention:
    """Draws which blocks cross-attend this step and provides the routes that make them."""

    def __init__(
        self, backbone: Backbone, trainable: nn.Module, p: float, per_sample: bool
    ) -> None:
        self.backbone, self.p, self.per_sample = backbone, p, per_sample
        paths = backbone.block_paths or []
        self.frozen = [attention_module(backbone.model.get_submodule(b)) for b in paths]
        self.trainable = [attention_module(trainable.get_submodule(b)) for b in paths]
        self.generator = torch.Generator().manual_seed(0)

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def draw(self, batch: int) -> Tensor:
        """(L,) or (L, B) booleans: which blocks (for which samples) use cross-attention."""
        shape = (len(self.frozen), batch) if self.per_sample else (len(self.frozen),)
        return torch.rand(shape, generator=self.generator) < self.p

    def routes(self, pixels: Tensor, chosen: Tensor) -> dict[nn.Module, KVRoute]:
        """Routes for the trainable copy's attention: the frozen keys/values where ``chosen``."""
        blocks = [i for i in range(len(self.frozen)) if bool(chosen[i].any())]
        if not blocks:
            return {}
        kv: dict[int, tuple[Tensor, Tensor]] = {}
        deepest = max(blocks)
        reads = {self.frozen[i]: capture_route(kv, i, stop=i == deepest) for i in blocks}
        bb = self.backbone
        with torch.no_grad(), bb.precision.autocast(), route_attention(reads):
            try:
                bb.run_model(bb.model, pixels.to(bb.device, dtype=bb.precision.weight_dtype))
            except StopForward:
                pass
        return {self.trainable[i]: self._swap(kv[i], chosen[i]) for i in blocks}

    def _swap(self, frozen: tuple[Tensor, Tensor], chosen: Tensor) -> KVRoute:
        frozen_k, frozen_v = frozen  # (B, H, T, hd) each

        def route(key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
            if chosen.ndim == 0 or bool(chosen.all()):
                return frozen_k.to(key.dtype), frozen_v.to(value.dtype)
            pick = chosen.to(key.device).view(-1, 1, 1, 1)  # per sample
            return (
                torch.where(pick, frozen_k.to(key.dtype), key),
                torch.where(pick, frozen_v.to(value.dtype), value),
            )

        return route
