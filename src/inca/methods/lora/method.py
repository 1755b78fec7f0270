"""LoRA's behaviour: ``peft`` wraps the attention projections of a frozen copy with low-rank
adapters; only those (and the head) train, and its task stores only them."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from inca.errors import IncaError
from inca.methods.full.method import CopyMethod

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value")


class LoraMethod(CopyMethod):
    def prepare(self, config: Any, copy: nn.Module, backbone: Any) -> nn.Module:
        import warnings

        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        copy.requires_grad_(False)
        lora = PeftLoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=lora_targets(copy),
        )
        with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
            return get_peft_model(copy, lora)

    def base(self, model: nn.Module) -> nn.Module:
        return model.get_base_model()

    def body_state(self, model: nn.Module) -> dict[str, Tensor]:
        from peft import get_peft_model_state_dict

        return {f"lora.{k}": v for k, v in get_peft_model_state_dict(model).items()}

    def load_body_state(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        from peft import set_peft_model_state_dict

        lora = {k[5:]: v for k, v in state.items() if k.startswith("lora.")}
        result = set_peft_model_state_dict(model, lora)
        if getattr(result, "unexpected_keys", None):
            raise IncaError(f"LoRA weights do not fit: unexpected {result.unexpected_keys[:3]}")


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
