"""The configs of the methods trained through the backbone, one class per method.

Full, partial (last k blocks), LoRA (through Hugging Face ``peft``) and StochCA train a copy of
the backbone plus a new linear head on [CLS, mean of the patch tokens] of the final normed
tokens (the features the linear probe reads). VQT keeps the backbone frozen and trains query
tokens per block and a head on them (``inca.finetune.vqt``).

Each config holds only its own method's fields (a task.json of a fully fine-tuned model no
longer stores ``lora_r``), and says in its methods what its method does differently, so the
model code has no ``method == ...`` branches. Configs saved by older inca (one flat class of 17
fields for every method) still load: :func:`config_from_dict` keeps the fields the method has.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from torch import Tensor, nn

from inca.errors import IncaError, UnknownNameError
from inca.methods import Method, register_method

_PAIR = re.compile(r"^\s*(-?\d+)\s*:\s*(\d+)\s*$")  # "11:4"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value")


@dataclass(frozen=True)
class FineTuneConfig:
    """What every method trained from pixels has. lr: its learning rate (the backbone's; VQT:
    queries and head); head_lr: the new head's; weight_decay: AdamW's, on matrices."""

    method: ClassVar[str] = ""
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.head_lr <= 0:
            raise IncaError("learning rates must be positive")
        if self.weight_decay < 0:
            raise IncaError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method} | asdict(self)

    # ---------------------------------------------------------------- what the method does
    changes_backbone: ClassVar[bool] = True  # its task cannot share a plain frozen pass

    def shares_backbone_pass(self, lrs: list[float]) -> bool:
        """Whether runs at ``lrs`` train together from one backbone pass."""
        return False

    def selects_features(self) -> bool:
        """Whether training ends with a feature selection and head refit (VQT's group lasso)."""
        return False


@dataclass(frozen=True)
class FullConfig(FineTuneConfig):
    """Every weight of the copy trains. layer_decay: block i of L gets lr·decay^(L-i) (1:
    none); grad_checkpointing: recompute block activations in the backward instead of storing
    them (less memory, ~30% more time)."""

    method: ClassVar[str] = "full"
    layer_decay: float = 1.0
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.layer_decay <= 1:
            raise IncaError(f"layer_decay must be in (0, 1], got {self.layer_decay}")

    def prepare(self, model: nn.Module, backbone: Any) -> nn.Module:
        """Set which weights of the fp32 copy ``model`` train (and wrap it where the method
        does); returns the model to train."""
        return model.requires_grad_(True)

    def base(self, model: nn.Module) -> nn.Module:
        """The transformer inside what ``prepare`` returned."""
        return model

    def body_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The body's weights that differ from the frozen backbone."""
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        return {f"model.{k}": v for k, v in model.state_dict().items() if k in trainable}

    def load_body_state(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        body = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
        own = model.state_dict()
        unknown = [k for k in body if k not in own]
        if unknown:
            raise IncaError(f"fine-tuned weights do not fit this backbone: {unknown[:3]}")
        for k, v in body.items():
            own[k].copy_(v)

    def cross_attention(self, backbone: Any, model: nn.Module) -> Any:
        """StochCA's draws of blocks that attend to the frozen keys and values (None: none)."""
        return None


@dataclass(frozen=True)
class PartialConfig(FullConfig):
    """Only the last ``blocks`` blocks (and the final norm) train."""

    method: ClassVar[str] = "partial"
    blocks: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 1:
            raise IncaError(f"partial fine-tuning needs blocks >= 1, got {self.blocks}")

    def prepare(self, model: nn.Module, backbone: Any) -> nn.Module:
        model.requires_grad_(False)
        for path in backbone.block_paths[-self.blocks :] + [backbone.final_norm_path]:
            model.get_submodule(path).requires_grad_(True)
        return model


@dataclass(frozen=True)
class LoraConfig(FullConfig):
    """Low-rank adapters (``peft``) on the attention projections train; the copy stays frozen.
    lora_r: rank; lora_alpha: scale; lora_dropout: on the adapters' input."""

    method: ClassVar[str] = "lora"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_r < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise IncaError("LoRA needs lora_r >= 1, lora_alpha > 0 and 0 <= lora_dropout < 1")

    def prepare(self, model: nn.Module, backbone: Any) -> nn.Module:
        import warnings

        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        model.requires_grad_(False)
        lora = PeftLoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=lora_targets(model),
        )
        with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
            return get_peft_model(model, lora)

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


@dataclass(frozen=True)
class StochCAConfig(FullConfig):
    """Full fine-tuning where, with probability stochca_p (one draw per block per step, or per
    sample with stochca_per_sample), a block's self-attention attends to the frozen model's
    keys and values instead."""

    method: ClassVar[str] = "stochca"
    stochca_p: float = 0.1
    stochca_per_sample: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grad_checkpointing:
            raise IncaError(
                "StochCA cannot use grad_checkpointing: the recomputed blocks would attend to "
                "their own keys/values instead of the frozen ones; drop grad_checkpointing"
            )
        if not 0 <= self.stochca_p <= 1:
            raise IncaError(f"stochca_p is a probability, got {self.stochca_p}")

    def cross_attention(self, backbone: Any, model: nn.Module) -> Any:
        from inca.finetune.stochca import StochasticCrossAttention

        return StochasticCrossAttention(backbone, model, self.stochca_p, self.stochca_per_sample)


@dataclass(frozen=True)
class VQTConfig(FineTuneConfig):
    """Query tokens per block of the frozen backbone and a head on them. queries: tokens per
    block; layer_queries: per-block overrides "BLOCK:COUNT,..." (e.g. "0:0,11:4"); vqt_naive:
    the append-and-mask reference path that keeps the whole graph (for measuring; same
    numbers); lasso_keep < 1 selects that fraction of the head's input features by group lasso
    (strength lasso_strength), then refits the head on them."""

    method: ClassVar[str] = "vqt"
    changes_backbone: ClassVar[bool] = False  # it reads the frozen backbone (queries inside)
    queries: int = 1
    layer_queries: str = ""
    vqt_naive: bool = False
    lasso_keep: float = 1.0
    lasso_strength: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queries < 0 or not 0 < self.lasso_keep <= 1 or self.lasso_strength < 0:
            raise IncaError("VQT needs queries >= 0, 0 < lasso_keep <= 1 and lasso_strength >= 0")
        self._layer_overrides()  # fails early on a malformed layer_queries

    def _layer_overrides(self) -> dict[int, int]:
        out = {}
        for item in filter(str.strip, str(self.layer_queries).split(",")):
            pair = _PAIR.match(item)
            if pair is None:
                raise IncaError(
                    f"layer_queries takes BLOCK:COUNT pairs such as '0:0,11:4', got {item!r}"
                )
            out[int(pair[1])] = int(pair[2])
        return out

    def query_counts(self, depth: int) -> list[int]:
        """Query tokens for each of ``depth`` blocks: ``queries`` unless overridden."""
        counts = [self.queries] * depth
        for block, count in self._layer_overrides().items():
            if not -depth <= block < depth:
                raise IncaError(f"layer_queries names block {block}; this backbone has {depth}")
            counts[block] = count
        if not any(counts):
            raise IncaError("VQT needs at least one query token (queries or layer_queries)")
        return counts

    def shares_backbone_pass(self, lrs: list[float]) -> bool:
        """The memory-efficient path with two or more rates trains them from one pass (the
        naive path is kept for measuring)."""
        return not self.vqt_naive and len(lrs) > 1

    def selects_features(self) -> bool:
        return self.lasso_keep < 1


CONFIGS: dict[str, type[FineTuneConfig]] = {
    c.method: c for c in (FullConfig, PartialConfig, LoraConfig, StochCAConfig, VQTConfig)
}


def field_names(cls: type[FineTuneConfig]) -> list[str]:
    return [f.name for f in fields(cls)]


def finetune_config(method: str = "full", **options: Any) -> FineTuneConfig:
    """The config of ``method`` with ``options`` (its own fields only; others are an error)."""
    if method not in CONFIGS:
        raise UnknownNameError("fine-tuning method", method, CONFIGS)
    cls = CONFIGS[method]
    unknown = sorted(set(options) - set(field_names(cls)))
    if unknown:
        raise IncaError(
            f"{method}: unknown option(s) {unknown}; {method} takes {', '.join(field_names(cls))}"
        )
    return cls(**options)


def shared_options(method: str, options: dict[str, Any]) -> FineTuneConfig:
    """``method``'s config from options given to several methods at once (``inca compare
    --finetune "layer_decay=0.8 lora_r=4"``): each takes the fields it has. An option no
    method has is an error (a typo must not be silently ignored)."""
    everyone = {name for cls in CONFIGS.values() for name in field_names(cls)}
    unknown = sorted(set(options) - everyone)
    if unknown:
        raise IncaError(
            f"fine-tuning option(s) {unknown} belong to no method; valid: {sorted(everyone)}"
        )
    own = set(field_names(CONFIGS[method]))
    return finetune_config(method, **{k: v for k, v in options.items() if k in own})


def config_from_dict(data: dict[str, Any]) -> FineTuneConfig:
    """A saved config (task.json, checkpoint signature). Configs written before each method
    had its own class carry every method's fields: the method's own are kept."""
    data = dict(data)
    method = data.pop("method", "full")
    if method not in CONFIGS:
        raise UnknownNameError("fine-tuning method", method, CONFIGS)
    own = set(field_names(CONFIGS[method]))
    return finetune_config(method, **{k: v for k, v in data.items() if k in own})


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


register_method(Method(
    "full", "full fine-tuning: every weight of a copy of the backbone, and a new head",
    "pixels", FullConfig, default_lrs=(2e-5, 5e-5), task_kind="finetuned",
    memory_modes={"full": {"method": "full"}},
))  # fmt: skip
register_method(Method(
    "partial", "fine-tuning of the last blocks (and the final norm) only",
    "pixels", PartialConfig, default_lrs=(1e-4, 3e-4), task_kind="finetuned",
))  # fmt: skip
register_method(Method(
    "lora", "LoRA: low-rank adapters on the attention projections (peft)",
    "pixels", LoraConfig, default_lrs=(3e-4, 1e-3), task_kind="finetuned",
    memory_modes={"lora": {"method": "lora"}},
))  # fmt: skip
register_method(Method(
    "stochca", "StochCA: full fine-tuning whose blocks at random attend to the frozen model",
    "pixels", StochCAConfig, default_lrs=(2e-5, 5e-5), task_kind="finetuned",
    # its memory is measured at p = 1, every block cross-attending: its worst case
    memory_modes={"stochca": {"method": "stochca", "stochca_p": 1.0}},
))  # fmt: skip
register_method(Method(
    "vqt", "VQT: learned query tokens summarise every block of the frozen backbone",
    "pixels", VQTConfig, default_lrs=(1e-3, 1e-2), task_kind="finetuned", shares_sweep=True,
    memory_modes={"vqt": {"method": "vqt"}, "vqt-naive": {"method": "vqt", "vqt_naive": True}},
))  # fmt: skip
