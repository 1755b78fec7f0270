"""What a method trained from pixels does, beside its config's data (peft's split: a config
dataclass, and a tuner object that holds the behaviour).

Each such method registers one :class:`PixelMethod` (``Method(..., behaviour=...)``) in its own
package; :func:`pixel_method` finds it for a config, so the training harness and the models ask
the method's object what to do and never branch on a method's name. The base class holds the
defaults: one model per learning rate, nothing drawn at random of the method's own, nothing
done after training.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from inca.errors import IncaError
from inca.methods.registry import get_method


class PixelMethod:
    """The defaults; a method overrides what it does differently."""

    def build(self, backbone: Any, num_classes: int, config: Any) -> nn.Module:
        """The trainable model of ``config`` on ``backbone`` (``forward(pixels) -> logits``,
        ``param_groups()``, ``changed_state()``, ``load_changed_state()``, ``config``)."""
        raise NotImplementedError

    def shares_pass(self, config: Any, lrs: list[float]) -> bool:
        """Whether runs of ``config`` at ``lrs`` train together from one backbone pass."""
        return False

    def build_sweep(
        self, backbone: Any, num_classes: int, configs: list[Any], seed: int
    ) -> nn.Module:
        """One model training ``configs`` (differing only in lr) from one backbone pass:
        ``forward`` gives (G, B, C) logits and ``members[g]`` is member g's own model."""
        raise IncaError(f"{configs[0].method} trains one learning rate per run")

    def seed(self, model: nn.Module, seed: int) -> None:
        """Seed what the method draws at random while training, beside torch's own seed."""

    def extra_state(self, model: nn.Module) -> dict[str, Tensor]:
        """What a checkpoint keeps beside the trainable parameters, so a resumed run continues
        exactly (named so as not to clash with parameter names)."""
        return {}

    def load_extra_state(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`extra_state` saved; anything else does not fit this model."""
        if state:
            raise IncaError(f"the checkpoint does not fit this model ({next(iter(state))})")

    def refit(
        self, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int
    ) -> dict[str, Any]:
        """A step after training, on the training set's unaugmented (pixels, labels)
        ``batches``, that changes the model in place (VQT's feature selection and head refit).
        Returns what it adds to the run's record; {} when there is no such step."""
        return {}


def pixel_method(config: Any) -> PixelMethod:
    """The registered behaviour of ``config``'s method (a method trained from pixels)."""
    method = get_method(config.method)
    if method.behaviour is None:
        raise IncaError(f"method {method.name!r} is not trained from pixels")
    return method.behaviour
