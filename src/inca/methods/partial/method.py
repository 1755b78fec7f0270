"""Partial fine-tuning's behaviour: only the last blocks (and the final norm) of the copy
train, so its task stores only those."""

from __future__ import annotations

from typing import Any

from torch import nn

from inca.methods.full.method import CopyMethod


class PartialMethod(CopyMethod):
    def prepare(self, config: Any, copy: nn.Module, backbone: Any) -> nn.Module:
        copy.requires_grad_(False)
        for path in backbone.block_paths[-config.blocks :] + [backbone.final_norm_path]:
            copy.get_submodule(path).requires_grad_(True)
        return copy
