"""A trainable copy of a backbone's transformer with a new linear head.

Full fine-tuning trains every weight of the copy; partial, only its last k blocks (and the
final norm); LoRA wraps its attention projections with ``peft`` low-rank adapters and trains
those; StochCA trains every weight while blocks at random attend to the frozen model's keys and
values (``inca.methods.stochca``). Which it is, the method's behaviour object says
(``inca.methods.full.method.CopyMethod`` and its subclasses, found through the registry).
``changed_state()`` is what differs from the frozen backbone, so a saved task stores only that:
everything for full fine-tuning and StochCA, k blocks for partial, the LoRA matrices for LoRA.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import Tensor, nn

from inca.backbones.attention_routing import route_attention
from inca.backbones.base import Backbone
from inca.methods.full.config import CopyConfig
from inca.methods.pixel_method import pixel_method


class FineTuneModel(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, config: CopyConfig) -> None:
        super().__init__()
        backbone.require_blocks("fine-tuning")
        self.config, self.backbone_name = config, backbone.name
        self._run = backbone.run_model
        self.num_prefix_tokens = backbone.num_prefix_tokens
        self.output_is_final = backbone.output_is_final
        self.final_norm_path = backbone.final_norm_path
        model = copy.deepcopy(backbone.model).float().train()  # fp32 master weights
        if config.grad_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
        self.behaviour = pixel_method(config)  # what the method does: a CopyMethod
        self.model = self.behaviour.prepare(config, model, backbone)  # which weights train
        self.behaviour.attach(self, backbone, model)  # StochCA: its draws of blocks
        self.block_paths = list(backbone.block_paths)
        dim = backbone.taps["final"].dim
        self.head = nn.Linear(2 * dim if self.num_prefix_tokens else dim, num_classes)

    def base(self) -> nn.Module:
        """The transformer inside (under peft's wrapper for LoRA)."""
        return self.behaviour.base(self.model)

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, S, S) -> logits (B, C)."""
        routes = self.behaviour.routes(self, pixels)
        with route_attention(routes) if routes else contextlib.nullcontext():
            hidden = self._run(self.model, pixels).last_hidden_state  # (B, T, D)
        if not self.output_is_final:
            hidden = self.base().get_submodule(self.final_norm_path)(hidden)
        p = self.num_prefix_tokens
        features = hidden[:, p:].mean(1) if p == 0 else torch.cat(
            [hidden[:, 0], hidden[:, p:].mean(1)], dim=-1)  # fmt: skip
        return self.head(features.float())

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: the head at head_lr; backbone weights at lr, decayed by depth with
        layer_decay; no weight decay on vectors (norms, biases, tokens)."""
        cfg = self.config
        depth = len(self.block_paths)
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            scale = cfg.layer_decay ** (depth - self._layer_of(name))
            wd = cfg.weight_decay if p.ndim >= 2 else 0.0
            groups.setdefault((cfg.lr * scale, wd), []).append(p)
        out = [
            {"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd}
            for (lr, wd), ps in groups.items()
        ]
        out += [
            {
                "params": [self.head.weight],
                "lr": cfg.head_lr,
                "base_lr": cfg.head_lr,
                "weight_decay": cfg.weight_decay,
            },
            {
                "params": [self.head.bias],
                "lr": cfg.head_lr,
                "base_lr": cfg.head_lr,
                "weight_decay": 0.0,
            },
        ]
        return out

    def _layer_of(self, name: str) -> int:
        """0 for embeddings, i + 1 for block i, depth for what follows the blocks."""
        for i, path in enumerate(self.block_paths):
            if f"{path}." in name:
                return i + 1
        return 0 if "embed" in name else len(self.block_paths)

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def changed_state(self) -> dict[str, Tensor]:
        """The weights that differ from the frozen backbone (and the head), on the CPU."""
        head = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        body = self.behaviour.body_state(self.model)
        return {k: v.detach().cpu().clone() for k, v in (body | head).items()}

    @torch.no_grad()
    def load_changed_state(self, state: dict[str, Tensor]) -> None:
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        self.behaviour.load_body_state(self.model, state)
