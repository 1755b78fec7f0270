"""Training: the one ``Trainer`` loop, and one-to-many training of adapter plans on it."""

from inca.train.bank import AdapterBank
from inca.train.config import FROZEN_DEFAULTS, TrainConfig
from inca.train.one_to_many import adapter_trainer
from inca.train.plan import DEFAULT_PLAN, AdapterSpec, parse_plan
from inca.train.trainer import Trainer

__all__ = [
    "DEFAULT_PLAN",
    "FROZEN_DEFAULTS",
    "AdapterBank",
    "AdapterSpec",
    "TrainConfig",
    "Trainer",
    "adapter_trainer",
    "parse_plan",
]
