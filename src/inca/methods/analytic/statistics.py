"""Accumulated second-order statistics, and the ridge head they define in closed form.

For features φ (F,) and one-hot targets y (C,) over every image seen::

    G = Σ φ φᵀ  (F, F)      Q = Σ φ yᵀ  (F, C)      W(λ) = (G + λI)⁻¹ Q

Sums do not care in which order, or in how many steps, images arrive: the head after five
steps of two classes is the joint ridge on all ten, exactly (RanPAC's observation, Zhang et al.,
NeurIPS 2023; also ACIL and SLCA's statistics). New classes add columns to Q; an old class's
column only changes through G (its images and the new ones compete in one solve). λ is chosen
by generalised cross-validation (Golub, Heath and Wahba, 1979), which needs only G, Q and the
target norm, not any kept image: with G = V S Vᵀ and P = VᵀQ, for every λ at once::

    rss(λ) = Σ‖y‖² − Σᵢ ‖Pᵢ‖² (2/(sᵢ+λ) − sᵢ/(sᵢ+λ)²)      tr H(λ) = Σᵢ sᵢ/(sᵢ+λ)
    GCV(λ) = n · rss(λ) / (n − tr H(λ))²
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from inca.errors import IncaError

# λ candidates, as multiples of the mean of G's diagonal (so they follow the features' scale)
RELATIVE_LAMBDAS = tuple(10.0 ** (k / 4) for k in range(-24, 5))


@dataclass
class RidgeStatistics:
    """G (F, F), Q (F, C), images per class (C,) and images in all (n; more than the counts'
    sum once a removed class's images stay as background). Float64 in memory."""

    gram: Tensor
    targets: Tensor
    counts: Tensor
    images: int

    @classmethod
    def empty(cls, features: int, classes: int = 0) -> RidgeStatistics:
        z = torch.zeros
        return cls(z(features, features, dtype=torch.float64),
                   z(features, classes, dtype=torch.float64),
                   z(classes, dtype=torch.float64), 0)  # fmt: skip

    @property
    def num_classes(self) -> int:
        return self.targets.shape[1]

    @property
    def num_features(self) -> int:
        return self.gram.shape[0]

    def add(self, features: Tensor, labels: Tensor) -> None:
        """Accumulate features (B, F) with labels (B,) in 0..C-1 (-100: background images,
        counted in G only). In place."""
        if features.shape[1] != self.num_features:
            raise IncaError(
                f"features of width {features.shape[1]} do not fit statistics of width "
                f"{self.num_features}"
            )
        phi = features.double().cpu()
        labels = labels.long().cpu()
        keep = labels >= 0
        if bool((labels[keep] >= self.num_classes).any()):
            raise IncaError(f"labels reach {int(labels.max())}, past {self.num_classes} classes")
        outer = phi.T @ phi
        self.gram += (outer + outer.T) / 2  # exactly symmetric (a matmul's rounding is not)
        self.targets.index_add_(1, labels[keep], phi[keep].T)
        self.counts += torch.bincount(labels[keep], minlength=self.num_classes).double()
        self.images += len(phi)

    def with_classes(self, count: int) -> RidgeStatistics:
        """A copy with ``count`` more classes (no image of theirs yet)."""
        z = torch.zeros(self.num_features, count, dtype=torch.float64)
        return RidgeStatistics(self.gram.clone(), torch.cat([self.targets, z], 1),
                               torch.cat([self.counts, torch.zeros(count, dtype=torch.float64)]),
                               self.images)  # fmt: skip

    def without_class(self, index: int) -> RidgeStatistics:
        """A copy without class ``index``'s column: its images stay in G as background (they
        still teach the other classes what they are not)."""
        keep = [i for i in range(self.num_classes) if i != index]
        return RidgeStatistics(self.gram.clone(), self.targets[:, keep].clone(),
                               self.counts[keep].clone(), self.images)  # fmt: skip

    def merged(self, other: RidgeStatistics) -> RidgeStatistics:
        """The statistics of both image sets, the classes of ``self`` then ``other``'s (an
        image of one side is no class of the other): exactly the joint statistics."""
        if other.num_features != self.num_features:
            raise IncaError(
                f"statistics of {self.num_features} and {other.num_features} features do not "
                "merge; merge heads of one backbone, tap and descriptor"
            )
        return RidgeStatistics(self.gram + other.gram,
                               torch.cat([self.targets, other.targets], 1),
                               torch.cat([self.counts, other.counts]),
                               self.images + other.images)  # fmt: skip

    def solve(self, lam: float | None = None) -> tuple[Tensor, float]:
        """The ridge weights W (F, C) at ``lam`` (None: chosen by GCV), and the λ used."""
        if self.images == 0:
            raise IncaError("no images accumulated yet: nothing to solve")
        s, v = torch.linalg.eigh(self.gram)  # G = V diag(s) Vᵀ
        s = s.clamp(min=0)
        p = v.T @ self.targets  # (F, C)
        if lam is None:
            lam = self.gcv_lambda(s, p)
        return v @ (p / (s + lam).unsqueeze(1)), lam

    def gcv_lambda(self, s: Tensor, p: Tensor) -> float:
        """The λ of ``candidate_lambdas`` with the lowest GCV score, from G's eigenvalues ``s``
        and P = VᵀQ."""
        n, yy = float(self.images), float(self.counts.sum())
        p2 = (p * p).sum(1)
        best, score = None, float("inf")
        for lam in self.candidate_lambdas():
            d = s + lam
            rss = yy - float((p2 * (2 / d - s / (d * d))).sum())
            dof = n - float((s / d).sum())
            gcv = n * rss / max(dof, 1e-9) ** 2
            if gcv < score:
                best, score = lam, gcv
        assert best is not None
        return best

    def candidate_lambdas(self) -> list[float]:
        scale = float(self.gram.diagonal().mean().clamp(min=1e-12))
        return [scale * r for r in RELATIVE_LAMBDAS]

    def tensors(self) -> dict[str, Tensor]:
        """For safetensors, in float64 (float32 statistics moved a solve at a small λ by 1e-3:
        no longer the joint head), G as its upper triangle (row by row): the bytes of a
        float32 G."""
        upper = torch.ones(self.num_features, self.num_features, dtype=torch.bool).triu()
        return {"gram_upper": self.gram[upper], "targets": self.targets, "counts": self.counts,
                "images": torch.tensor([self.images])}  # fmt: skip

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], where: str) -> RidgeStatistics:
        try:
            upper, targets, counts = t["gram_upper"], t["targets"], t["counts"]
            images = int(t["images"].reshape(-1)[0])
        except (KeyError, IndexError, RuntimeError) as e:
            raise IncaError(f"{where}: not the statistics of an analytic head ({e}); the task "
                            "can serve, but cannot take new classes") from None  # fmt: skip
        F_, C = targets.shape if targets.ndim == 2 else (0, -1)
        if upper.shape != (F_ * (F_ + 1) // 2,) or counts.shape != (C,):
            raise IncaError(f"{where}: statistics of inconsistent shapes {tuple(upper.shape)}, "
                            f"{tuple(targets.shape)}, {tuple(counts.shape)}; the task can "
                            "serve, but cannot take new classes")  # fmt: skip
        gram = torch.zeros(F_, F_, dtype=torch.float64)
        gram[torch.ones(F_, F_, dtype=torch.bool).triu()] = upper.double()
        gram = gram + gram.T - torch.diag(gram.diagonal())
        return cls(gram, targets.double(), counts.double(), images)
