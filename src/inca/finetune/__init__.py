"""Fine-tuning baselines (full, partial, LoRA) trained in the same harness as InCA."""

from inca.finetune.config import FineTuneConfig, finetune_config
from inca.finetune.model import FineTuneModel
from inca.finetune.train import fine_tune

__all__ = ["FineTuneConfig", "FineTuneModel", "fine_tune", "finetune_config"]
