"""Feature extraction: run the frozen backbone over a dataset and pool each tap's tokens.

This is the backbone's share of every inca job (one-to-many training is this loop plus cheap
adapters), so it reports its own throughput: end to end (loading included) and backbone alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from inca.backbones.base import Backbone
from inca.errors import IncaError
from inca.io import atomic_write, write_json


@dataclass
class Throughput:
    images: int
    seconds: float  # wall time of the whole loop, loading included
    backbone_seconds: float  # time inside forward_taps

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    @property
    def backbone_images_per_s(self) -> float:
        return self.images / max(self.backbone_seconds, 1e-9)

    def to_dict(self) -> dict[str, float]:
        return asdict(self) | {
            "images_per_s": self.images_per_s,
            "backbone_images_per_s": self.backbone_images_per_s,
        }


def pool_tokens(tokens: Tensor, num_prefix_tokens: int) -> Tensor:
    """(B, T, D) -> (B, 2D) [CLS, mean of the patch tokens], or (B, D) mean without a CLS."""
    mean = tokens[:, num_prefix_tokens:].float().mean(1)  # (B, D)
    if num_prefix_tokens == 0:
        return mean
    return torch.cat([tokens[:, 0].float(), mean], dim=-1)  # (B, 2D)


@dataclass
class Features:
    """Pooled features per tap for a set of images, with their labels and dataset positions."""

    features: dict[str, Tensor]  # tap -> (N, F) float32
    labels: Tensor  # (N,) int64
    indices: Tensor  # (N,) int64: positions in the source dataset
    throughput: Throughput

    def save(self, out_dir: str | Path, meta: dict) -> Path:
        """features.safetensors + features.json in ``out_dir`` (both written atomically)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        tensors = {f"tap.{t}": f.contiguous() for t, f in self.features.items()}
        tensors |= {"labels": self.labels, "indices": self.indices}
        with atomic_write(out / "features.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta, sort_keys=True)})
        write_json(
            out / "features.json",
            meta
            | {
                "throughput": self.throughput.to_dict(),
                "shapes": {t: list(f.shape) for t, f in self.features.items()},
            },
        )
        return out


def extract_features(
    backbone: Backbone,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    taps: Sequence[str],
    total: int | None = None,
    progress: bool = True,
    desc: str = "extract",
) -> Features:
    """Pool the tokens of ``taps`` for every (pixels, labels, indices) batch; shows progress."""
    taps = backbone.validate_taps(taps)
    pooled: dict[str, list[Tensor]] = {t: [] for t in taps}
    labels, indices = [], []
    n, in_backbone = 0, 0.0
    start = time.perf_counter()
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for pixels, y, idx in batches:
            t0 = time.perf_counter()
            out = backbone.forward_taps(pixels, taps)
            for tap, tokens in out.items():
                pooled[tap].append(pool_tokens(tokens, backbone.num_prefix_tokens).cpu())
            in_backbone += time.perf_counter() - t0
            labels.append(y.cpu())
            indices.append(idx.cpu())
            n += len(y)
            bar.update(len(y))
            bar.set_postfix_str(f"backbone {n / in_backbone:.1f} img/s")
    seconds = time.perf_counter() - start
    if n == 0:
        raise IncaError("no images to extract: the dataset split is empty")
    return Features(
        features={t: torch.cat(v) for t, v in pooled.items()},
        labels=torch.cat(labels),
        indices=torch.cat(indices),
        throughput=Throughput(n, seconds, in_backbone),
    )
