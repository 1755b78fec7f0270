"""StochCA's behaviour: full fine-tuning of the copy, plus its draws of blocks that attend to
the frozen model's keys and values while training. The draws have their own generator, seeded
with the run and kept in its checkpoints, so a resumed run draws on where it stopped."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from inca.backbones.attention_routing import KVRoute
from inca.errors import IncaError
from inca.methods.full.method import CopyMethod
from inca.methods.stochca.cross_attention import StochasticCrossAttention

GENERATOR = "stochca/generator"  # the draws' generator state, in the checkpoint


class StochCAMethod(CopyMethod):
    """The ``FineTuneModel`` of a StochCA config holds its draws as ``model.stochca`` (None:
    plain self-attention)."""

    def attach(self, owner: nn.Module, backbone: Any, copy: nn.Module) -> None:
        cfg = owner.config
        owner.stochca = StochasticCrossAttention(
            backbone, copy, cfg.stochca_p, cfg.stochca_per_sample
        )

    def routes(self, owner: nn.Module, pixels: Tensor) -> dict[nn.Module, KVRoute]:
        """While training, the frozen keys/values for the blocks drawn this step."""
        draws = owner.stochca
        if draws is None or not owner.training or owner.config.stochca_p == 0:
            return {}
        return draws.routes(pixels, draws.draw(len(pixels)))

    def seed(self, model: nn.Module, seed: int) -> None:
        model.stochca.seed(seed)

    def extra_state(self, model: nn.Module) -> dict[str, Tensor]:
        return {GENERATOR: model.stochca.generator.get_state()}

    def load_extra_state(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        for name, value in state.items():
            if name != GENERATOR:
                raise IncaError(f"the checkpoint does not fit this model ({name})")
            model.stochca.generator.set_state(value)
