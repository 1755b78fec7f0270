"""The methods trained from pixels: full, partial, LoRA, StochCA fine-tuning and VQT (their
configs, registered in ``inca.methods``, and models). ``inca.train`` trains them."""

from inca.finetune.config import FineTuneConfig, finetune_config
from inca.finetune.model import FineTuneModel

__all__ = ["FineTuneConfig", "FineTuneModel", "finetune_config"]
