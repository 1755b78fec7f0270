"""One-to-many training: one backbone pass feeds every adapter; one summed loss, one backward.

Per batch: ONE ``forward_taps`` of the frozen backbone (no grad, bf16 where supported) for the
union of the plan's taps (or a read of the activation cache instead); every adapter's
cross-entropy; their sum; ONE backward; ONE fused AdamW step (linear warm-up then cosine), with
parameter groups per stack of adapters sharing a shape, lr and weight decay: AdamW is
element-wise, so that trains each adapter exactly as a group of its own would. After each epoch
every adapter is evaluated on validation and its best epoch kept; a checkpoint makes the run
resumable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from inca.adapters.base import stack_taps
from inca.backbones.base import Backbone
from inca.cache import ActivationCache
from inca.data import ImageTransform, Splits, Subset, make_loader
from inca.errors import IncaError
from inca.select import accuracy, rank
from inca.train import checkpoint
from inca.train.bank import AdapterBank, lr_factor
from inca.train.plan import AdapterSpec


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 64
    eval_batch_size: int = 128
    warmup: float = 0.1  # fraction of all steps spent warming up
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    workers: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise IncaError("epochs, batch_size and eval_batch_size must be at least 1")
        if not 0 <= self.warmup < 1:
            raise IncaError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not 0 <= self.label_smoothing < 1:
            raise IncaError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def signature(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (progress display and workers may not)."""
        return {k: v for k, v in asdict(self).items() if k not in ("progress", "workers")}


def token_dtype(backbone: Backbone) -> torch.dtype:
    """Adapters read tokens in the backbone's output dtype when that is bf16 (half the memory
    traffic of their token-sized matmuls); parameters, softmax and the rest stay fp32."""
    return torch.bfloat16 if backbone.precision.output_dtype == torch.bfloat16 else torch.float32


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled order of epoch ``epoch``: the same for online and cached training."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))


class BatchSource:
    """Normalised tokens of the bank's taps, (n_taps, B, T, D), with labels: from the backbone
    (online) or from activation caches (no backbone pass at all)."""

    def __init__(
        self,
        backbone: Backbone,
        splits: Splits,
        taps: list[str],
        config: TrainConfig,
        caches: Mapping[str, ActivationCache] | None = None,
    ) -> None:
        self.backbone, self.splits, self.taps, self.config = backbone, splits, taps, config
        self.caches = dict(caches or {})
        self.token_dtype = token_dtype(backbone)
        self.backbone_seconds = 0.0

    def train(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        cfg, subset = self.config, self.splits.train
        order = epoch_order(len(subset), cfg.seed, epoch)
        usable = len(order) // cfg.batch_size * cfg.batch_size  # drop the last partial batch
        if "train" in self.caches:
            cache = self.caches["train"]
            for pos in order[:usable].split(cfg.batch_size):
                yield cache.read(pos, self.taps, epoch, self.token_dtype), cache.labels[pos]
            return
        transform = ImageTransform(
            self.backbone.preprocess, augment=cfg.augment, allow_hflip=subset.dataset.allow_hflip
        )
        ordered = Subset(subset.dataset, subset.indices[order[:usable].numpy()])
        loader = make_loader(
            ordered,
            transform,
            cfg.batch_size,
            seed=cfg.seed * 1000 + epoch,
            num_workers=cfg.workers,
        )
        yield from self._online(loader)

    def evaluate(self, split: str) -> Iterator[tuple[Tensor, Tensor]]:
        cfg, subset = self.config, getattr(self.splits, split)
        if split in self.caches:
            cache = self.caches[split]
            for pos in torch.arange(len(subset)).split(cfg.eval_batch_size):
                yield cache.read(pos, self.taps, 0, self.token_dtype), cache.labels[pos]
            return
        loader = make_loader(
            subset,
            ImageTransform(self.backbone.preprocess),
            cfg.eval_batch_size,
            num_workers=cfg.workers,
        )
        yield from self._online(loader)

    def _online(self, loader) -> Iterator[tuple[Tensor, Tensor]]:
        for pixels, labels, _ in loader:
            t0 = time.perf_counter()
            tokens = self.backbone.forward_taps(pixels, self.taps)  # ONE pass, no grad
            x = stack_taps(tokens, self.taps, normalize=True, dtype=self.token_dtype)
            del tokens  # not held while the adapters train on x
            self.backbone_seconds += time.perf_counter() - t0
            yield x, labels
            del x  # resumed for the next batch: drop this one before the next backbone pass


@torch.no_grad()
def predict_all(
    source: BatchSource, bank: AdapterBank, split: str, progress: bool = True
) -> tuple[dict[str, Tensor], Tensor]:
    """Every adapter's class probabilities on ``split``: ({name: (N, C)}, labels (N,))."""
    bank.eval()
    probs: dict[str, list[Tensor]] = {n: [] for n in bank.names}
    labels = []
    n_batches = -(-len(getattr(source.splits, split)) // source.config.eval_batch_size)
    for x, y in tqdm(
        source.evaluate(split),
        desc=split,
        unit="batch",
        total=n_batches,
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
    ):
        logits = bank.forward_normalized(x.to(source.backbone.device))
        for n, lg in logits.items():
            probs[n].append(lg.float().softmax(-1).cpu())
        labels.append(y)
    return {n: torch.cat(p) for n, p in probs.items()}, torch.cat(labels)


class OneToManyTrainer:
    """Trains every adapter of ``specs`` on ``splits`` from one backbone pass per batch."""

    def __init__(
        self,
        backbone: Backbone,
        splits: Splits,
        specs: list[AdapterSpec],
        config: TrainConfig,
        out_dir: str | Path,
        signature: dict[str, Any],
        caches: Mapping[str, ActivationCache] | None = None,
    ) -> None:
        self.backbone, self.splits, self.config = backbone, splits, config
        self.out_dir = Path(out_dir)
        # as JSON gives it back (tuples become lists), to compare with a saved checkpoint's
        self.signature = json.loads(json.dumps(signature | {"train": config.signature()}))
        num_classes = len(splits.class_names)
        self.bank = AdapterBank(
            specs,
            backbone.taps,
            num_classes,
            backbone.num_prefix_tokens,
            seed=config.seed,
            token_dtype=token_dtype(backbone),
        ).to(backbone.device)
        # fused: one kernel per parameter instead of ~10 element-wise passes (6x on this CPU)
        self.optimizer = torch.optim.AdamW(self.bank.param_groups(), fused=True)
        self.source = BatchSource(backbone, splits, self.bank.taps, config, caches)
        self.steps_per_epoch = len(splits.train) // config.batch_size
        if self.steps_per_epoch == 0:
            raise IncaError(
                f"the training split has {len(splits.train)} images, fewer than one "
                f"batch of {config.batch_size}; lower --batch-size"
            )
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = int(config.warmup * self.total_steps)
        self.epoch = 0  # epochs done
        self.step = 0
        self.best_acc = {n: -1.0 for n in self.bank.names}
        self.best_epoch = {n: 0 for n in self.bank.names}
        self.best_state = {n: self._adapter_state(n) for n in self.bank.names}
        self.best_val_probs: dict[str, Tensor] = {}
        self.val_labels: Tensor | None = None
        self.train_seconds = 0.0
        self.backbone_seconds = 0.0
        self.images_seen = 0

    # ------------------------------------------------------------------ state
    def _adapter_state(self, name: str) -> dict[str, Tensor]:
        return self.bank.adapter_state(name)

    def save_checkpoint(self) -> None:
        tensors = checkpoint.flatten("bank", self.bank.state_dict())
        for n in self.bank.names:
            tensors |= checkpoint.flatten(f"best/{n}", self.best_state[n])
        tensors |= {f"valprobs/{n}": p for n, p in self.best_val_probs.items()}
        if self.val_labels is not None:
            tensors["val_labels"] = self.val_labels
        optim_tensors, groups = checkpoint.optimizer_to_tensors(self.optimizer)
        meta = {
            "signature": self.signature,
            "epoch": self.epoch,
            "step": self.step,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "optimizer_groups": groups,
            "train_seconds": self.train_seconds,
            "backbone_seconds": self.backbone_seconds,
            "images_seen": self.images_seen,
        }
        checkpoint.save(self.out_dir, tensors | optim_tensors, meta)

    def load_checkpoint(self) -> None:
        tensors, meta = checkpoint.load(self.out_dir)
        if meta["signature"] != self.signature:
            diff = sorted(
                k
                for k in set(meta["signature"]) | set(self.signature)
                if meta["signature"].get(k) != self.signature.get(k)
            )
            raise IncaError(
                f"cannot resume {self.out_dir}: the run was started with other "
                f"settings ({', '.join(diff)} differ); use the same options or "
                "another --out"
            )
        self.bank.load_state_dict(checkpoint.unflatten(tensors, "bank"))
        for n in self.bank.names:
            self.best_state[n] = checkpoint.unflatten(tensors, f"best/{n}")
            if f"valprobs/{n}" in tensors:
                self.best_val_probs[n] = tensors[f"valprobs/{n}"]
        self.val_labels = tensors.get("val_labels")
        checkpoint.optimizer_from_tensors(self.optimizer, tensors, meta["optimizer_groups"])
        self.epoch, self.step = meta["epoch"], meta["step"]
        self.best_acc, self.best_epoch = meta["best_acc"], meta["best_epoch"]
        self.train_seconds, self.backbone_seconds = meta["train_seconds"], meta["backbone_seconds"]
        self.images_seen = meta["images_seen"]

    # ------------------------------------------------------------------ training
    def best_name(self) -> str | None:
        if self.epoch == 0:
            return None
        return rank(self.best_acc)[0]

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split: returns each adapter's mean training loss."""
        cfg = self.config
        self.bank.train()
        loss_sum = {n: 0.0 for n in self.bank.names}
        device = self.backbone.device
        start, seen, steps = time.perf_counter(), 0, 0
        backbone_before = self.source.backbone_seconds
        bar = tqdm(
            self.source.train(self.epoch),
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            total=self.steps_per_epoch,
            unit="batch",
            disable=not cfg.progress,
            dynamic_ncols=True,
        )
        for x, labels in bar:
            labels = labels.to(device)
            logits = self.bank.forward_normalized(x.to(device))
            losses = {
                n: F.cross_entropy(lg.float(), labels, label_smoothing=cfg.label_smoothing)
                for n, lg in logits.items()
            }
            factor = lr_factor(self.step, self.total_steps, self.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            torch.stack(list(losses.values())).sum().backward()  # ONE backward for all
            self.optimizer.step()
            # free gradients and this batch's tokens before the next backbone pass: they would
            # otherwise sit in memory beside its activations (peak memory, benchmark R4)
            self.optimizer.zero_grad(set_to_none=True)
            self.step, steps = self.step + 1, steps + 1
            for n, loss in losses.items():
                loss_sum[n] += loss.item()
            del x, logits, losses
            seen += len(labels)
            best = self.best_name()
            bar.set_postfix_str(
                f"{seen / (time.perf_counter() - start):.0f} img/s"
                + (f", best {best} {100 * self.best_acc[best]:.2f}%" if best else "")
            )
        bar.close()
        self.train_seconds += time.perf_counter() - start
        self.backbone_seconds += self.source.backbone_seconds - backbone_before
        self.images_seen += seen
        return {n: s / max(1, steps) for n, s in loss_sum.items()}

    def validate(self) -> dict[str, float]:
        probs, labels = predict_all(self.source, self.bank, "val", self.config.progress)
        self.val_labels = labels
        accs = {n: accuracy(p, labels) for n, p in probs.items()}
        for n, acc in accs.items():
            if acc > self.best_acc[n]:
                self.best_acc[n], self.best_epoch[n] = acc, self.epoch
                self.best_state[n] = self._adapter_state(n)
                self.best_val_probs[n] = probs[n]
        return accs

    def fit(self, resume: bool = False) -> None:
        """Train for the configured epochs (continuing from the checkpoint when ``resume``)."""
        log = self.out_dir / "log.jsonl"
        if resume and (self.out_dir / checkpoint.FILE).exists():
            self.load_checkpoint()
            print(f"resuming {self.out_dir} after epoch {self.epoch}/{self.config.epochs}")
        while self.epoch < self.config.epochs:
            t0 = time.perf_counter()
            losses = self.train_epoch()
            t_train = time.perf_counter() - t0
            self.epoch += 1
            accs = self.validate()
            self.save_checkpoint()
            best = self.best_name()
            entry = {
                "epoch": self.epoch,
                "step": self.step,
                "train_seconds": t_train,
                "val_seconds": time.perf_counter() - t0 - t_train,
                "train_loss": losses,
                "val_acc": accs,
                "best": {"name": best, "val_acc": self.best_acc[best]},
            }
            with open(log, "a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
            print(
                f"epoch {self.epoch}/{self.config.epochs}: best {best} "
                f"{100 * self.best_acc[best]:.2f}% val ({t_train:.0f} s train)"
            )

    def load_best(self) -> None:
        """Put every adapter back to its best validation epoch."""
        for n in self.bank.names:
            self.bank.load_adapter_state(n, self.best_state[n])
