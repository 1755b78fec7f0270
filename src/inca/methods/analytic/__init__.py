"""Closed-form heads from accumulated statistics: the analytic head (Open-InCA's default for
classes that arrive over time) and the known class-incremental baselines it is measured against
(``anchors``: class means, random features + ridge). Registers the adapter kind ``analytic``."""

from inca.methods.analytic.anchors import ClassMeans, RandomFeatureRidge
from inca.methods.analytic.descriptors import default_cells, descriptors, pooled_cls_mean
from inca.methods.analytic.head import AnalyticConfig, AnalyticHead
from inca.methods.analytic.statistics import RidgeStatistics

__all__ = [
    "AnalyticConfig",
    "AnalyticHead",
    "ClassMeans",
    "RandomFeatureRidge",
    "RidgeStatistics",
    "default_cells",
    "descriptors",
    "pooled_cls_mean",
]
