"""What one image costs a backbone: floating-point operations of a forward pass."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from inca.backbones.base import Backbone


def gflops_per_image(backbone: Backbone) -> float:
    """GFLOP (a multiply-add counts 2) of one image through the whole ``backbone`` at its image
    size, counted by torch's FLOP counter on one forward. The model runs without tap hooks:
    stopping early at a hook interacts badly with the counter's own module tracking."""
    size = backbone.preprocess.image_size
    # in the weights' dtype, as forward_taps feeds them: a bf16 model does not cast fp32 input
    # itself (a convolution refuses mixed types)
    pixels = torch.zeros(1, 3, size, size, device=backbone.device,
                         dtype=backbone.precision.weight_dtype)  # fmt: skip
    with torch.inference_mode(), backbone.precision.autocast(), FlopCounterMode(display=False) as c:
        backbone.run_model(backbone.model, pixels)
    return c.get_total_flops() / 1e9
