"""A trainable copy of a backbone's transformer with a new linear head.

Full fine-tuning trains every weight of the copy; partial, only its last k blocks (and the
final norm); LoRA wraps its attention projections with ``peft`` low-rank adapters and trains
those; StochCA trains every weight while blocks at random attend to the frozen model's keys and
values (``inca.finetune.stochca``). ``changed_state()`` is what differs from the frozen
backbone, so a saved task stores only that: everything for full fine-tuning and StochCA, k
blocks for partial, the LoRA matrices for LoRA.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from inca.backbones.attention_routing import route_attention
from inca.backbones.base import Backbone
from inca.errors import IncaError
from inca.finetune.config import LORA_TARGETS, FineTuneConfig
from inca.finetune.stochca import StochasticCrossAttention


def lora_targets(model: nn.Module) -> list[str]:
    """Names of the attention projections LoRA wraps in this model family."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    found = [t for t in LORA_TARGETS if t in names]
    if not found:
        raise IncaError(
            "no attention projections (q_proj/k_proj/v_proj/o_proj or "
            "query/key/value) found for LoRA in this model"
        )
    return found


class FineTuneModel(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, config: FineTuneConfig) -> None:
        super().__init__()
        backbone.require_blocks("fine-tuning")
        self.config, self.backbone_name = config, backbone.name
        self._run = backbone.run_model
        self.num_prefix_tokens = backbone.num_prefix_tokens
        self.output_is_final = backbone.output_is_final
        self.final_norm_path = backbone.final_norm_path
        model = copy.deepcopy(backbone.model).float().train()  # fp32 master weights
        model.requires_grad_(config.method in ("full", "stochca"))
        if config.method == "partial":
            for path in backbone.block_paths[-config.blocks :] + [backbone.final_norm_path]:
                model.get_submodule(path).requires_grad_(True)
        if config.grad_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
        if config.method == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=lora_targets(model),
            )
            with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
                model = get_peft_model(model, lora)
        self.model = model
        self.stochca = (
            StochasticCrossAttention(backbone, model, config.stochca_p, config.stochca_per_sample)
            if config.method == "stochca"
            else None
        )
        self.block_paths = list(backbone.block_paths)
        dim = backbone.taps["final"].dim
        self.head = nn.Linear(2 * dim if self.num_prefix_tokens else dim, num_classes)

    def base(self) -> nn.Module:
        """The transformer inside (under peft's wrapper for LoRA)."""
        return self.model.get_base_model() if self.config.method == "lora" else self.model

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, S, S) -> logits (B, C)."""
        routes = {}
        if self.stochca is not None and self.training and self.config.stochca_p > 0:
            routes = self.stochca.routes(pixels, self.stochca.draw(len(pixels)))
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
        if self.config.method == "lora":
            from peft import get_peft_model_state_dict

            body = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.model).items()}
        else:
            trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
            body = {f"model.{k}": v for k, v in self.model.state_dict().items() if k in trainable}
        head = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        return {k: v.detach().cpu().clone() for k, v in (body | head).items()}

    @torch.no_grad()
    def load_changed_state(self, state: dict[str, Tensor]) -> None:
        head = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
        self.head.load_state_dict(head)
        if self.config.method == "lora":
            from peft import set_peft_model_state_dict

            lora = {k[5:]: v for k, v in state.items() if k.startswith("lora.")}
            result = set_peft_model_state_dict(self.model, lora)
            if getattr(result, "unexpected_keys", None):
                raise IncaError(f"LoRA weights do not fit: unexpected {result.unexpected_keys[:3]}")
            return
        body = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
        own = self.model.state_dict()
        unknown = [k for k in body if k not in own]
        if unknown:
            raise IncaError(f"fine-tuned weights do not fit this backbone: {unknown[:3]}")
        for k, v in body.items():
            own[k].copy_(v)


def build_model(backbone: Backbone, num_classes: int, config: FineTuneConfig) -> nn.Module:
    """The trainable model of ``config.method`` on ``backbone``: a fine-tuned copy, or VQT's
    queries and head on the shared frozen backbone."""
    if config.method == "vqt":
        from inca.finetune.vqt import VQTModel

        return VQTModel(backbone, num_classes, config)
    return FineTuneModel(backbone, num_classes, config)
