"""The `Backbone`: a frozen model read through named taps in one forward pass.

Every backbone, whatever its source, answers ``forward_taps(pixels, taps)`` with the same
meaning (timm's ``forward_intermediates`` habit): tokens ``(B, T, D)`` for each requested tap,
from ONE forward pass that stops right after the deepest requested tap.

Taps are read with forward hooks on the model's own modules, so the numbers are exactly what
the model computes; stopping early is done by raising from the deepest tap's hook. A tap can
also be *derived* from another one (e.g. CLIP's "final" = post-layernorm of the last block,
which Hugging Face only applies to the pooled token).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from inca.backbones.preprocess_spec import Preprocess
from inca.errors import IncaError, UnknownNameError
from inca.utils.device import Precision, resolve_device


@dataclass(frozen=True)
class TapInfo:
    """A readable point of the backbone and the shape of its tokens per image."""

    name: str
    tokens: int  # T
    dim: int  # D

    @property
    def shape(self) -> tuple[int, int]:
        return (self.tokens, self.dim)


class _StopForward(Exception):
    """Raised by the deepest requested tap's hook: nothing after it needs to run."""


def as_tokens(out: Any) -> Tensor:
    """A module output as tokens (B, T, D): CNN maps (B, C, H, W) -> (B, H*W, C)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    elif isinstance(out, Mapping):  # Hugging Face ModelOutput
        out = next(iter(out.values()))
    if not isinstance(out, Tensor):
        raise IncaError(f"a tap's module returned {type(out).__name__}, not a tensor")
    if out.ndim == 4:  # (B, C, H, W) -> (B, H*W, C)
        return out.flatten(2).transpose(1, 2).contiguous()
    if out.ndim == 3:  # (B, T, D)
        return out
    if out.ndim == 2:  # (B, D) -> (B, 1, D)
        return out.unsqueeze(1)
    raise IncaError(
        f"a tap's module returned a tensor of shape {tuple(out.shape)}; "
        "taps need (B, T, D) tokens, (B, C, H, W) maps or (B, D) vectors"
    )


def state_dict_hash(module: nn.Module) -> str:
    """A short sha256 of the weights (names, shapes, dtypes and bytes): which weights these are."""
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        flat = t.reshape(-1)  # 0-dim tensors (BatchNorm's num_batches_tracked) cannot be viewed
        h.update(flat.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class Backbone(nn.Module):
    """A frozen, eval-mode model with named taps.

    Args:
        model: the wrapped module; it is frozen, put in eval mode and moved to the device.
        name: how the user called it (saved in results and task configs).
        preprocess: what images must look like (size, mean/std, resize policy).
        tap_modules: tap name -> dotted module path whose output is the tap.
        derived: tap name -> (source tap, function of the source tokens).
        run: calls the model on pixels (B, 3, H, W); defaults to ``model(pixels)``.
        clone_outputs: copy hooked tensors, for models that modify activations in place
            (e.g. ResNet's ``out += identity``).
        num_prefix_tokens: tokens before the patch tokens (CLS, distillation, registers): 1 for
            a ViT, 2 for DeiT, 0 for CNN maps. Pooling uses it: CLS = token 0, mean = the rest.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        preprocess: Preprocess,
        tap_modules: Mapping[str, str],
        derived: Mapping[str, tuple[str, Callable[[Tensor], Tensor]]] | None = None,
        run: Callable[[nn.Module, Tensor], Any] | None = None,
        device: str | torch.device | None = None,
        precision: str | None = "auto",
        clone_outputs: bool = False,
        weights_hash: str | None = None,
        family: str = "generic",
        num_prefix_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.name, self.preprocess, self.family = name, preprocess, family
        self.num_prefix_tokens = num_prefix_tokens
        self.device = resolve_device(device)
        self.precision = Precision.resolve(precision, self.device)
        self.weights_hash = weights_hash or state_dict_hash(model)  # before any dtype cast
        self.model = model.eval().requires_grad_(False)
        self.model.to(device=self.device, dtype=self.precision.weight_dtype)
        modules = dict(self.model.named_modules())
        for tap, path in tap_modules.items():
            if path not in modules:
                raise IncaError(f"tap {tap!r} points at module {path!r}, which the model lacks")
        self._tap_modules = dict(tap_modules)
        self._derived = dict(derived or {})
        self._run = run or (lambda m, x: m(x))
        self._clone = clone_outputs
        self._taps: dict[str, TapInfo] | None = None
        # set by sources whose model can be fine-tuned (Hugging Face towers); None otherwise
        self.block_paths: list[str] | None = None
        self.final_norm_path: str | None = None
        self.output_is_final = True

    def require_blocks(self, purpose: str) -> list[str]:
        """The transformer blocks' module paths, or a clear error for ``purpose`` (e.g.
        "fine-tuning") on a backbone whose blocks inca does not know."""
        if self.block_paths is None:
            raise IncaError(
                f"{self.name}: {purpose} needs a Hugging Face transformer backbone (its blocks, "
                "attention and final norm must be known); this one was loaded through hooks"
            )
        return self.block_paths

    def run_model(self, model: nn.Module, pixels: Tensor) -> Any:
        """Call ``model`` (this backbone's module or a copy of it) the way the backbone does."""
        return self._run(model, pixels)

    # ----------------------------------------------------------------- what can be read
    @property
    def taps(self) -> dict[str, TapInfo]:
        """Ordered (shallow to deep) tap name -> TapInfo, found by one dry run at batch 1."""
        if self._taps is None:
            self._taps = self._discover_taps()
        return self._taps

    @property
    def tap_names(self) -> list[str]:
        return list(self.taps)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def identity(self) -> dict[str, Any]:
        """What decides the tokens it gives: saved tasks and caches must match it to be served."""
        return {
            "name": self.name,
            "weights_hash": self.weights_hash,
            "preprocess": self.preprocess.to_dict(),
            "num_prefix_tokens": self.num_prefix_tokens,
        }

    def describe(self) -> dict[str, Any]:
        """What a saved artefact must record to be reloaded against the same backbone."""
        return {
            "name": self.name,
            "family": self.family,
            "weights_hash": self.weights_hash,
            "params": self.num_params,
            "num_prefix_tokens": self.num_prefix_tokens,
            "preprocess": self.preprocess.to_dict(),
            "taps": {t.name: list(t.shape) for t in self.taps.values()},
        }

    # ----------------------------------------------------------------- reading
    def forward(self, pixels: Tensor, taps: Sequence[str] | None = None) -> dict[str, Tensor]:
        return self.forward_taps(pixels, taps)

    def forward_taps(self, pixels: Tensor, taps: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Tokens (B, T, D) for each requested tap (all taps when ``None``), from one pass.

        Runs under inference mode and the backbone's precision; returned tensors are on the
        backbone's device in ``precision.output_dtype`` (bf16 for "bf16" and "amp-bf16").
        """
        requested = self.validate_taps(self.tap_names if taps is None else taps)
        return self._forward(pixels, requested, order=list(self.taps))

    def validate_taps(self, taps: Sequence[str] | str) -> list[str]:
        if isinstance(taps, str):
            taps = [taps]
        valid = self._taps if self._taps is not None else {**self._tap_modules, **self._derived}
        for t in taps:
            if t not in valid:
                raise UnknownNameError("tap", t, valid, hint=f"see `inca layers {self.name}`")
        return list(dict.fromkeys(taps))

    def _forward(self, pixels: Tensor, requested: list[str], order: list[str]) -> dict[str, Tensor]:
        pixels = self._check_pixels(pixels)
        hooked = {t for t in requested if t in self._tap_modules}
        hooked |= {self._derived[t][0] for t in requested if t in self._derived}
        stop_at = max(hooked, key=order.index) if order else None
        captured: dict[str, Tensor] = {}
        handles = []
        modules = dict(self.model.named_modules())
        for tap in hooked:
            handles.append(
                modules[self._tap_modules[tap]].register_forward_hook(
                    self._make_hook(tap, captured, stop=tap == stop_at)
                )
            )
        try:
            with torch.inference_mode(), self.precision.autocast():
                try:
                    self._run(self.model, pixels)
                except _StopForward:
                    pass
                for tap in requested:
                    if tap in self._derived:
                        source, fn = self._derived[tap]
                        captured[tap] = fn(captured[source])
        finally:
            for h in handles:
                h.remove()
        missing = [t for t in hooked if t not in captured]
        if missing:
            raise IncaError(
                f"taps {missing} were never reached by the forward pass; "
                "their modules are not used by this model's forward"
            )
        dtype = self.precision.output_dtype
        return {t: captured[t].to(dtype) for t in requested}

    def _make_hook(self, tap: str, captured: dict[str, Tensor], stop: bool) -> Callable:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if tap in captured:  # a module that runs twice: keep its first output
                return
            tokens = as_tokens(out)
            captured[tap] = tokens.clone() if self._clone and tokens.ndim == 3 else tokens
            if stop:  # everything requested is shallower and has fired already
                raise _StopForward

        return hook

    def _check_pixels(self, pixels: Tensor) -> Tensor:
        if not isinstance(pixels, Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
            shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
            raise IncaError(
                f"pixels must be a (B, 3, H, W) tensor, got {shape}; "
                "use inca.data.ImageTransform to prepare images"
            )
        p = self.preprocess.patch_size
        if p and (pixels.shape[2] % p or pixels.shape[3] % p):
            raise IncaError(
                f"image size {tuple(pixels.shape[2:])} is not a multiple of the patch size {p}"
            )
        return pixels.to(self.device, dtype=self.precision.weight_dtype)

    def _discover_taps(self) -> dict[str, TapInfo]:
        """Run once at batch 1 with every tap hooked: their order of firing and token shapes."""
        s = self.preprocess.image_size
        dummy = torch.zeros(1, 3, s, s)
        fired: list[str] = []
        counts: dict[str, int] = {}
        modules = dict(self.model.named_modules())
        handles = []
        shapes: dict[str, Tensor] = {}

        def make(tap: str) -> Callable:
            def hook(module: nn.Module, args: Any, out: Any) -> None:
                counts[tap] = counts.get(tap, 0) + 1
                if tap not in shapes:
                    fired.append(tap)
                    shapes[tap] = as_tokens(out)

            return hook

        for tap, path in self._tap_modules.items():
            handles.append(modules[path].register_forward_hook(make(tap)))
        try:
            with torch.inference_mode(), self.precision.autocast():
                self._run(self.model, self._check_pixels(dummy))
                for tap, (source, fn) in self._derived.items():
                    shapes[tap] = fn(shapes[source])
        finally:
            for h in handles:
                h.remove()
        never = [t for t in self._tap_modules if t not in shapes]
        if never:
            raise IncaError(
                f"taps {never} never ran in a forward pass; pick modules the model's forward uses"
            )
        twice = [t for t, n in counts.items() if n > 1]
        if twice:
            raise IncaError(
                f"taps {twice} run more than once per forward pass; tap a module that runs once"
            )
        order = list(fired)
        for tap, (source, _) in self._derived.items():  # a derived tap sits right after its source
            i = order.index(source) + 1
            while i < len(order) and order[i] in self._derived:
                i += 1
            order.insert(i, tap)
        return {t: TapInfo(t, shapes[t].shape[1], shapes[t].shape[2]) for t in order}
