"""AdapterStack: N adapters of one shape stored as stacked parameters, run as one computation.

Sixty adapters in a Python loop cost sixty sets of small kernels, forward and backward. Stored
stacked (every parameter with a leading dimension N), they run as a handful of batched matmuls.
Adapters stack when their kind, options and widths match (``Adapter.stack_key``): for example
InCA adapters on every block of a ViT. AdamW is element-wise, so one parameter group for a stack
of adapters that share a learning rate and weight decay trains each exactly as its own group
would; the "together == alone" test holds this true.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from inca.adapters.base import Adapter
from inca.errors import IncaError


def _key(param_name: str) -> str:
    return param_name.replace(".", "__")  # ParameterDict keys cannot hold dots


class AdapterStack(nn.Module):
    """Adapters ``adapters`` (equal ``stack_key``), their weights copied into stacked params."""

    def __init__(self, adapters: Sequence[Adapter]) -> None:
        super().__init__()
        if not adapters:
            raise IncaError("an adapter stack needs at least one adapter")
        key = adapters[0].stack_key()
        if any(a.stack_key() != key for a in adapters):
            raise IncaError("adapters of different kinds or shapes cannot be stacked")
        self._template = [copy.deepcopy(adapters[0])]  # a list: not registered as a submodule
        self.param_names = [n for n, _ in adapters[0].named_parameters()]
        self.params = nn.ParameterDict({
            _key(n): nn.Parameter(torch.stack([dict(a.named_parameters())[n].detach()
                                               for a in adapters]))
            for n in self.param_names
        })  # fmt: skip
        self.size = len(adapters)

    @property
    def template(self) -> Adapter:
        return self._template[0]

    def __len__(self) -> int:
        return self.size

    def train(self, mode: bool = True) -> AdapterStack:
        self.template.train(mode)  # dropout follows the stack's mode
        return super().train(mode)

    def stacked(self) -> dict[str, Tensor]:
        return {n: self.params[_key(n)] for n in self.param_names}

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, B, T, D) normalised tokens, one slice per adapter -> logits (N, B, C)."""
        return self.template.stacked_forward(self.stacked(), x)

    def state_of(self, i: int) -> dict[str, Tensor]:
        """Adapter ``i``'s state dict (copies, on the CPU), keyed as its own module's."""
        return {n: p[i].detach().cpu().clone() for n, p in self.stacked().items()}

    @torch.no_grad()
    def load_state_of(self, i: int, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.param_names):
            raise IncaError(
                f"state of adapter {i} has keys {sorted(state)}, expected {self.param_names}"
            )
        for n, p in self.stacked().items():
            p[i].copy_(state[n])

    def export(self, i: int) -> Adapter:
        """Adapter ``i`` as a standalone module (for saving and serving)."""
        adapter = copy.deepcopy(self.template).cpu()
        missing, unexpected = adapter.load_state_dict(self.state_of(i), strict=False)
        buffers = {n for n, _ in adapter.named_buffers()}
        if unexpected or set(missing) - buffers:  # buffers are not trained: the template's
            raise IncaError(f"adapter {i}: state keys differ ({missing}, {unexpected})")
        return adapter.eval()

    def num_params_each(self) -> int:
        return sum(p[0].numel() for p in self.stacked().values())
