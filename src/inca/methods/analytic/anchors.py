"""The known frozen-backbone class-incremental baselines, as reference rows: both see only the
current step's images and keep statistics, never images.

- ``ClassMeans``: each class's mean feature, cosine nearest mean (SimpleCIL, Zhou et al., 2023).
- ``RandomFeatureRidge``: features through a fixed random projection and ReLU (M wide), then
  the ridge head of accumulated statistics (RanPAC, McDonnell et al., NeurIPS 2023); λ chosen
  on the validation images of the classes seen so far, as RanPAC does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from inca.methods.analytic.statistics import RidgeStatistics


class ClassMeans:
    """Sums and counts of features per class (in any order: the means are order-free)."""

    def __init__(self, features: int) -> None:
        self.sums = torch.zeros(0, features, dtype=torch.float64)
        self.counts = torch.zeros(0, dtype=torch.float64)

    def add(self, features: Tensor, labels: Tensor) -> None:
        """features (B, F), labels (B,) in 0..C-1 (classes past the current count are added)."""
        labels = labels.long().cpu()
        grow = int(labels.max()) + 1 - len(self.counts)
        if grow > 0:
            self.sums = torch.cat([self.sums, self.sums.new_zeros(grow, self.sums.shape[1])])
            self.counts = torch.cat([self.counts, self.counts.new_zeros(grow)])
        self.sums.index_add_(0, labels, features.double().cpu())
        self.counts += torch.bincount(labels, minlength=len(self.counts)).double()

    def logits(self, features: Tensor) -> Tensor:
        """Cosine similarity of features (B, F) to every class mean: (B, C)."""
        means = self.sums / self.counts.clamp(min=1).unsqueeze(1)
        return F.normalize(features.double().cpu(), dim=1) @ F.normalize(means, dim=1).T


class RandomFeatureRidge:
    """ReLU(features · R) with R (F, M) Gaussian from ``seed``, and a ridge head on them."""

    def __init__(self, features: int, width: int = 5000, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(features, width, generator=g)
        self.stats = RidgeStatistics.empty(width)

    def expand(self, features: Tensor) -> Tensor:
        return torch.relu(features.float().cpu() @ self.projection)

    def add(self, features: Tensor, labels: Tensor) -> None:
        """features (B, F), labels (B,); new class indices grow the head."""
        grow = int(labels.max()) + 1 - self.stats.num_classes
        if grow > 0:
            self.stats = self.stats.with_classes(grow)
        self.stats.add(self.expand(features), labels)

    def fit(self, val_features: Tensor, val_labels: Tensor) -> tuple[Tensor, float]:
        """The weights (M, C) at the λ of ``stats.candidate_lambdas`` best on the validation
        features and labels of the classes seen so far (one eigendecomposition for all λ)."""
        s, v = torch.linalg.eigh(self.stats.gram)
        p = v.T @ self.stats.targets
        h = self.expand(val_features).double() @ v  # (B, M) in G's eigenbasis
        best = None
        for lam in self.stats.candidate_lambdas():
            scaled = p / (s.clamp(min=0) + lam).unsqueeze(1)
            acc = float(((h @ scaled).argmax(1) == val_labels.cpu()).double().mean())
            if best is None or acc > best[0]:
                best = (acc, lam, scaled)
        _, lam, scaled = best
        return v @ scaled, lam

    def logits(self, features: Tensor, weight: Tensor) -> Tensor:
        return self.expand(features).double() @ weight
