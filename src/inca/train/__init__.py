"""One-to-many training of many adapters from one frozen backbone pass."""

from inca.train.bank import AdapterBank
from inca.train.engine import FROZEN_DEFAULTS, OneToManyTrainer, TrainConfig
from inca.train.plan import DEFAULT_PLAN, AdapterSpec, parse_plan
from inca.train.run import train

__all__ = [
    "DEFAULT_PLAN",
    "FROZEN_DEFAULTS",
    "AdapterBank",
    "AdapterSpec",
    "OneToManyTrainer",
    "TrainConfig",
    "parse_plan",
    "train",
]
