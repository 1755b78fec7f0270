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
from inca.train.bank import AdapterBank, carry_optimizer_state, lr_factor
from inca.train.budget import Budget, resolve_budget, survivors
from inca.train.plan import AdapterSpec


@dataclass(frozen=True)
class TrainConfig:
    """What every training method shares. Frozen-feature training (adapter plans) reads
    ``epochs`` as a cap and may stop early or halve its grid (see ``inca.train.budget``);
    fine-tuning methods train exactly ``epochs``."""

    epochs: int = 4
    batch_size: int = 64
    eval_batch_size: int = 128
    warmup: float = 0.1  # fraction of all steps spent warming up
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    workers: int | None = None
    progress: bool = True
    min_steps: int = 0  # adapter plans: at least this many optimizer steps (small sets)
    patience: int = 0  # adapter plans: stop after this many steps without a better member
    halving_epochs: int = 0  # adapter plans: first successive-halving rung (0: no halving)
    halving_keep: float = 0.25  # fraction of members that continue after each rung
    halving_min: int = 8  # never fewer members than this after a rung

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise IncaError("epochs, batch_size and eval_batch_size must be at least 1")
        if not 0 <= self.warmup < 1:
            raise IncaError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not 0 <= self.label_smoothing < 1:
            raise IncaError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if min(self.min_steps, self.patience, self.halving_epochs) < 0:
            raise IncaError("min_steps, patience and halving_epochs must be >= 0 (0: off)")
        if not 0 < self.halving_keep <= 1 or self.halving_min < 1:
            raise IncaError(
                f"halving keeps a fraction in (0, 1] and at least 1 member, got "
                f"keep={self.halving_keep}, min={self.halving_min}"
            )

    def signature(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (progress display and workers may not).
        Options added after a run was made are left out while at their defaults, so its
        checkpoint still resumes."""
        later = {f: getattr(TrainConfig, f) for f in LATER_FIELDS}
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in ("progress", "workers") and not (k in later and v == later[k])
        }

    def to_options(self) -> dict[str, Any]:
        """As plain options (saved by `inca compare`): fields added later are left out while
        at their defaults, so options saved before them still compare equal."""
        later = {f: getattr(TrainConfig, f) for f in LATER_FIELDS}
        return {k: v for k, v in asdict(self).items() if not (k in later and v == later[k])}

    def budget(self, steps_per_epoch: int) -> Budget:
        return resolve_budget(
            steps_per_epoch,
            self.epochs,
            self.min_steps,
            self.patience,
            self.halving_epochs,
            self.halving_keep,
            self.halving_min,
        )


# Frozen-feature training (adapter plans, from the activation cache): epochs there cost a few
# percent of a backbone pass, so the budget is "until validation stops improving", counted in
# optimizer steps, with a grid halved early. Fine-tuning keeps TrainConfig()'s epoch budget.
FROZEN_DEFAULTS: dict[str, Any] = {
    "epochs": 20,  # a cap (the cosine schedule spans it); patience may end the run before
    "batch_size": 128,
    "label_smoothing": 0.1,
    "augment": False,  # one cached view per image
    "min_steps": 1000,
    "patience": 800,
    "halving_epochs": 2,
    "halving_keep": 0.25,
    "halving_min": 12,
}

LATER_FIELDS = ("min_steps", "patience", "halving_epochs", "halving_keep", "halving_min")


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
    """Trains every adapter of ``specs`` on ``splits`` from one backbone pass per batch.

    Runs until the budget (``TrainConfig.budget``) says stop: the epoch cap, patience, and the
    successive-halving rungs that shrink the bank to its best members. Every member keeps its
    best validation epoch, also after it is dropped.
    """

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
        self.specs = list(specs)
        self.bank = AdapterBank(
            specs,
            backbone.taps,
            num_classes,
            backbone.num_prefix_tokens,
            seed=config.seed,
            token_dtype=token_dtype(backbone),
        ).to(backbone.device)
        self.all_names = self.bank.names
        self.optimizer = self._optimizer()
        self.source = BatchSource(backbone, splits, self.bank.taps, config, caches)
        self.steps_per_epoch = len(splits.train) // config.batch_size
        if self.steps_per_epoch == 0:
            raise IncaError(
                f"the training split has {len(splits.train)} images, fewer than one "
                f"batch of {config.batch_size}; lower --batch-size"
            )
        self.budget = config.budget(self.steps_per_epoch)
        self.total_steps = self.budget.total_steps
        self.warmup_steps = int(config.warmup * self.total_steps)
        self.epoch = 0  # epochs done
        self.step = 0
        self.best_acc = {n: -1.0 for n in self.all_names}
        self.best_epoch = {n: 0 for n in self.all_names}
        self.best_state = {n: self._adapter_state(n) for n in self.all_names}
        self.best_val_probs: dict[str, Tensor] = {}
        self.val_labels: Tensor | None = None
        self.last_val_loss: dict[str, float] = {}
        self.last_improved_step = 0
        self.stopped = ""  # why training ended before the cap ("" while it has not)
        self.dropped_at: dict[str, int] = {}  # member -> the epoch after which halving dropped it
        self.train_seconds = 0.0
        self.val_seconds = 0.0
        self.backbone_seconds = 0.0
        self.images_seen = 0
        self.curve: list[dict[str, float]] = []  # per epoch: cumulative seconds, best val acc

    def _optimizer(self) -> torch.optim.Optimizer:
        # fused: one kernel per parameter instead of ~10 element-wise passes (6x on this CPU)
        return torch.optim.AdamW(self.bank.param_groups(), fused=True)

    # ------------------------------------------------------------------ state
    def _adapter_state(self, name: str) -> dict[str, Tensor]:
        return self.bank.adapter_state(name)

    @property
    def active(self) -> list[str]:
        """The members still training (all of them until a halving rung drops some)."""
        return self.bank.names

    def _shrink(self, keep: list[str], carry: bool = True) -> None:
        """Continue with members ``keep`` only; their weights and AdamW moments carry over."""
        old_bank, old_opt = self.bank, self.optimizer
        self.bank = old_bank.subset(keep)
        self.optimizer = self._optimizer()
        if carry:
            carry_optimizer_state(old_opt, old_bank, self.optimizer, self.bank)
        self.source.taps = self.bank.taps  # read only the taps the survivors need

    def save_checkpoint(self) -> None:
        tensors = checkpoint.flatten("bank", self.bank.state_dict())
        for n in self.all_names:
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
            "val_seconds": self.val_seconds,
            "active": self.active,
            "dropped_at": self.dropped_at,
            "last_val_loss": self.last_val_loss,
            "last_improved_step": self.last_improved_step,
            "stopped": self.stopped,
            "curve": self.curve,
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
        if meta.get("active", self.all_names) != self.all_names:
            self._shrink(meta["active"], carry=False)  # the state below fills it
        self.bank.load_state_dict(checkpoint.unflatten(tensors, "bank"))
        for n in self.all_names:
            self.best_state[n] = checkpoint.unflatten(tensors, f"best/{n}")
            if f"valprobs/{n}" in tensors:
                self.best_val_probs[n] = tensors[f"valprobs/{n}"]
        self.val_labels = tensors.get("val_labels")
        checkpoint.optimizer_from_tensors(self.optimizer, tensors, meta["optimizer_groups"])
        self.epoch, self.step = meta["epoch"], meta["step"]
        self.best_acc, self.best_epoch = meta["best_acc"], meta["best_epoch"]
        self.train_seconds, self.backbone_seconds = meta["train_seconds"], meta["backbone_seconds"]
        self.images_seen = meta["images_seen"]
        self.val_seconds = meta.get("val_seconds", 0.0)
        self.dropped_at = meta.get("dropped_at", {})
        self.last_val_loss = meta.get("last_val_loss", {})
        self.last_improved_step = meta.get("last_improved_step", self.step)
        self.stopped = meta.get("stopped", "")
        self.curve = meta.get("curve", [])

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
            desc=f"epoch {self.epoch + 1}/{self.budget.max_epochs}",
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
        for n, p in probs.items():  # the tie-breaker of halving: plateaus share an accuracy
            picked = p.gather(1, labels.view(-1, 1)).clamp_min(1e-12)
            self.last_val_loss[n] = -picked.log().mean().item()
        for n, acc in accs.items():
            if acc > self.best_acc[n]:
                self.best_acc[n], self.best_epoch[n] = acc, self.epoch
                self.best_state[n] = self._adapter_state(n)
                self.best_val_probs[n] = probs[n]
                self.last_improved_step = self.step
        return accs

    def _halve(self) -> list[str]:
        """At a halving rung: drop all but the best members; returns the dropped names."""
        if self.epoch not in self.budget.rungs:
            return []
        b = self.budget
        keep = survivors(self.active, self.best_acc, self.last_val_loss, b.keep, b.min_members)
        dropped = [n for n in self.active if n not in keep]
        if dropped:
            for n in dropped:
                self.dropped_at[n] = self.epoch
            self._shrink(keep)
        return dropped

    def _out_of_patience(self) -> bool:
        patience = self.budget.patience_steps
        return bool(patience) and self.step - self.last_improved_step >= patience

    def fit(self, resume: bool = False) -> None:
        """Train until the budget ends (continuing from the checkpoint when ``resume``)."""
        log = self.out_dir / "log.jsonl"
        cap = self.budget.max_epochs
        if resume and (self.out_dir / checkpoint.FILE).exists():
            self.load_checkpoint()
            print(f"resuming {self.out_dir} after epoch {self.epoch}/{cap}")
        while self.epoch < cap and not self.stopped:
            t0 = time.perf_counter()
            losses = self.train_epoch()
            t_train = time.perf_counter() - t0
            self.epoch += 1
            accs = self.validate()
            t_val = time.perf_counter() - t0 - t_train
            self.val_seconds += t_val
            best = self.best_name()
            self.curve.append(
                {
                    "epoch": self.epoch,
                    "seconds": self.train_seconds + self.val_seconds,  # validation is a cost too
                    "val_acc": self.best_acc[best],
                }
            )
            dropped = self._halve()
            if self._out_of_patience():
                self.stopped = f"no better member for {self.step - self.last_improved_step} steps"
            self.save_checkpoint()
            entry = {
                "epoch": self.epoch,
                "step": self.step,
                "train_seconds": t_train,
                "val_seconds": t_val,
                "train_loss": losses,
                "val_acc": accs,
                "best": {"name": best, "val_acc": self.best_acc[best]},
                "active": len(self.active),
            }
            if dropped:
                entry["dropped"] = dropped
            if self.stopped:
                entry["stopped"] = self.stopped
            with open(log, "a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
            note = f"; halving kept {len(self.active)} of {len(self.active) + len(dropped)}"
            print(
                f"epoch {self.epoch}/{cap}: best {best} {100 * self.best_acc[best]:.2f}% val "
                f"({t_train:.0f} s train, {len(accs)} members{note if dropped else ''})"
                + (f"; stopping: {self.stopped}" if self.stopped else "")
            )

    def load_best(self) -> None:
        """Every member of the plan, dropped ones included, back at its best validation epoch."""
        if self.active != self.all_names:
            self.bank = AdapterBank(
                self.specs,
                self.backbone.taps,
                len(self.splits.class_names),
                self.backbone.num_prefix_tokens,
                seed=self.config.seed,
                token_dtype=token_dtype(self.backbone),
            ).to(self.backbone.device)
            self.source.taps = self.bank.taps
        for n in self.bank.names:
            self.bank.load_adapter_state(n, self.best_state[n])
