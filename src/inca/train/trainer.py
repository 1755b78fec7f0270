"""The one training loop: every method trains as named *members* fed by one batch source.

One-to-many is the loop every method runs. Per batch: the source gives inputs (normalised tokens
from the backbone or the activation cache, or pixels), ``members.forward_batch`` gives each
member's logits, their cross-entropies are summed, ONE backward, ONE fused AdamW step with a
linear warm-up and cosine decay. Members' parameters are disjoint, so each gets exactly the
gradient its own run would (the equivalence tests keep this true). After every epoch each member
is validated and its best epoch kept; the checkpoint makes the run resumable, exactly.

What trains is anything satisfying :class:`Members`: an ``AdapterBank`` (InCA and linear probes
on frozen taps, many per pass), a fine-tuned model (one member), a VQT learning-rate sweep (one
member per rate). The budget (``TrainConfig.budget``) is the same for all: an epoch cap, and for
frozen-feature members optionally patience and successive halving (``Subsettable`` members).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from inca.errors import DivergedError, IncaError
from inca.train import checkpoint, trainer_state
from inca.train.budget import LOSS_MIN_DELTA, survivors
from inca.train.config import TrainConfig
from inca.train.grid_shard import Standing, resume_file, save_shard
from inca.train.metrics import score
from inca.train.protocols import BatchSource, Members, Subsettable
from inca.train.resume import refuse_other_signature, signed, truncate_log
from inca.train.schedule import lr_factor
from inca.train.select import rank
from inca.train.split_predictions import predict_all
from inca.train.trainer_state import Progress
from inca.utils.distributed import World, all_reduce_mean_, average_gradients_, gather_rows, world
from inca.utils.io import json_safe


class Trainer:
    """Trains ``members`` on batches of ``source`` until ``config``'s budget ends.

    Args:
        members: what trains (see :class:`Members`); :class:`Subsettable` ones only when the
            budget halves (frozen-feature members).
        source: where batches come from (see :class:`BatchSource`); None when only
            ``train_step`` is called (a benchmark of one step).
        config: the budget, schedule and loss; ``num_train`` images make an epoch.
        out_dir: ``log.jsonl`` (one line per epoch) and the checkpoint go here.
        signature: what must match for a checkpoint to be resumed (``config`` is added).
        device: where members compute.
        shard_adapters: under torchrun, ``members`` are this rank's slice of a grid that it
            trains over whole splits (see :mod:`inca.train.grid_shard`); otherwise the ranks
            share every batch and hold the same members (data-parallel).
    """

    def __init__(
        self,
        members: Members,
        source: BatchSource | None,
        config: TrainConfig,
        num_train: int,
        out_dir: str | Path,
        signature: dict[str, Any],
        device: torch.device,
        num_val: int | None = None,
        shard_adapters: bool = False,
    ) -> None:
        self.members, self.source, self.config = members, source, config
        self.all_members, self.device = members, device  # load_best returns to every member
        self.out_dir = Path(out_dir)
        self.signature = signed(signature, config)  # to compare with a saved checkpoint's
        self.all_names = list(members.names)
        self.world = world()
        self.grid = shard_adapters and self.world.distributed
        self.data_world = World() if self.grid else self.world  # the ranks sharing each batch
        if config.batch_size % self.data_world.size:
            raise IncaError(
                f"the batch of {config.batch_size} does not split evenly over "
                f"{self.data_world.size} processes; use a --batch-size divisible by it"
            )
        self.steps_per_epoch = num_train // config.batch_size
        if self.steps_per_epoch == 0:
            raise IncaError(
                f"the training split has {num_train} images, fewer than one batch of "
                f"{config.batch_size}; lower --batch-size"
            )
        self.val_batches = -(-num_val // config.eval_batch_size) if num_val else None
        self.budget = config.budget(self.steps_per_epoch)
        self.total_steps = self.budget.total_steps
        self.warmup_steps = int(config.warmup * self.total_steps)
        self.optimizer = self._optimizer()
        # epoch, step, best accuracies, timings, halving, divergence: kept by the checkpoint
        self.progress = Progress.start(self.all_names)
        self.best_state = {n: members.member_state(n) for n in self.all_names}
        self.best_val_probs: dict[str, Tensor] = {}
        self.val_labels: Tensor | None = None
        self.idle = False  # a grid shard whose members halving dropped, every one

    def _optimizer(self) -> torch.optim.Optimizer:
        # fused: one kernel per parameter instead of ~10 element-wise passes (6x on this CPU)
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.AdamW(self.members.param_groups(), fused=fused)

    @property
    def active(self) -> list[str]:
        """The members still training (all of them until a halving rung drops some)."""
        return [] if self.idle else list(self.members.names)

    def _shrink(self, keep: list[str], carry: bool = True) -> None:
        """Continue with members ``keep`` only; their weights and AdamW moments carry over."""
        old_members, old_opt = self.members, self.optimizer
        if not isinstance(old_members, Subsettable):
            raise IncaError(f"{type(old_members).__name__} members cannot drop any: no halving")
        self.members = old_members.subset(keep)
        self.optimizer = self._optimizer()
        if carry:
            old_members.carry_optimizer_state(old_opt, self.members, self.optimizer)
        self.source.serve(self.members)

    # ------------------------------------------------------------------ checkpoint
    def save_checkpoint(self) -> None:
        if not (self.world.is_main or self.grid):  # data-parallel: every rank holds the same
            return
        optim_tensors, groups = checkpoint.optimizer_to_tensors(self.optimizer)
        # held: the members whose state is saved (an idle grid shard keeps its last ones)
        meta = {"signature": self.signature, "optimizer_groups": groups, "active": self.active}
        meta["held"] = self.members.names
        meta |= self.progress.to_meta()
        if self.grid:  # each rank its own slice
            save_shard(self.out_dir, trainer_state.tensors(self) | optim_tensors, meta)
        else:
            checkpoint.save(self.out_dir, trainer_state.tensors(self) | optim_tensors, meta)

    def load_checkpoint(self, name: str = checkpoint.FILE) -> None:
        tensors, meta = checkpoint.load(self.out_dir, name)
        if "best_acc" in meta and not isinstance(meta["best_acc"], dict):
            raise IncaError(
                f"{self.out_dir / checkpoint.FILE} was written by the fine-tuning loop of an "
                "older inca, which this one cannot continue; delete it to train this run again"
            )
        refuse_other_signature(self.out_dir, meta["signature"], self.signature)
        active = meta.get("active", self.all_names)
        held = meta.get("held", active)  # what the saved members' state holds
        if held != self.all_names:
            self._shrink(held, carry=False)  # the state below fills it
        self.idle = not active
        trainer_state.restore_tensors(self, tensors)
        if not self.idle:  # an idle grid shard trains nothing more: its moments are moot
            checkpoint.optimizer_from_tensors(self.optimizer, tensors, meta["optimizer_groups"])
        self.progress = Progress.from_meta(meta)

    # ------------------------------------------------------------------ training
    def best_name(self, standing: Standing | None = None) -> str | None:
        """The member with the best validation accuracy so far (diverged members never), of
        this trainer's members or of the whole ``standing``."""
        progress = self.progress
        best_acc = standing.best_acc if standing else progress.best_acc
        healthy = {n: a for n, a in best_acc.items() if n not in progress.diverged}
        if progress.epoch == 0 or not healthy:
            return None
        return rank(healthy)[0]

    def _diverge(self, names: list[str], what: str) -> None:
        """Mark members whose training went non-finite: they train no further (their loss
        leaves the sum), are never selected or exported, and the user is told."""
        epoch, diverged = self.progress.epoch + 1, self.progress.diverged
        for n in names:
            if n not in diverged:
                diverged[n] = epoch
                print(f"warning: {n} diverged in epoch {epoch} ({what}); it is left out of "
                      "selection and export: lower its learning rate")  # fmt: skip

    def train_step(self, inputs: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """One optimizer step on one batch: every member's loss, summed, ONE backward."""
        logits = self._forward()(inputs.to(self.device))
        labels = labels.to(self.device)
        smoothing = self.config.label_smoothing
        weight = self.members.class_weights  # (C,): members that balance classes, or None
        losses = {
            n: F.cross_entropy(lg.float(), labels, weight=weight, label_smoothing=smoothing)
            for n, lg in logits.items()
        }
        factor = lr_factor(self.progress.step, self.total_steps, self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        names = list(losses)
        stacked = torch.stack([losses[n] for n in names])
        agreed = stacked.detach().clone()
        if self.data_world.distributed:
            all_reduce_mean_(agreed)  # every rank decides alike
        finite = torch.isfinite(agreed).tolist()  # one sync for every member
        if not all(finite):
            self._diverge([n for n, ok in zip(names, finite, strict=True) if not ok],
                          "non-finite training loss")  # fmt: skip
        keep = [i for i, n in enumerate(names) if finite[i] and n not in self.progress.diverged]
        if keep:  # a diverged member's loss leaves the sum: its NaN reaches no gradient
            stacked[keep].sum().backward()  # ONE backward for all
            if self.data_world.distributed:
                average_gradients_(self.optimizer)
            self.optimizer.step()
        # free gradients before the next backbone pass: they would otherwise sit in memory
        # beside its activations (peak memory)
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        return dict(zip(names, agreed, strict=True))

    def _forward(self) -> Any:
        """The members' batch forward: through torch.compile with ``config.compile`` (one
        compiled graph per set of members: a halving rung's subset compiles anew)."""
        if not self.config.compile:
            return self.members.forward_batch
        if getattr(self, "_compiled_for", None) is not self.members:
            self._compiled_for = self.members
            self._compiled = torch.compile(self.members.forward_batch, dynamic=False)
        return self._compiled

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split: returns each member's mean training loss."""
        if self.idle:
            return {}
        self.members.train()
        loss_sum = {n: 0.0 for n in self.members.names}
        start, seen, steps = time.perf_counter(), 0, 0
        backbone_before = self.source.backbone_seconds
        bar = tqdm(self.source.train(self.progress.epoch), total=self.steps_per_epoch,
                   desc=f"epoch {self.progress.epoch + 1}/{self.budget.max_epochs}", unit="batch",
                   disable=not self.config.progress, dynamic_ncols=True)  # fmt: skip
        for x, labels in bar:
            losses = self.train_step(x, labels)
            del x  # this batch's inputs go before the next backbone pass
            steps, seen = steps + 1, seen + len(labels)
            for n, loss in zip(losses, torch.stack(list(losses.values())).tolist(), strict=True):
                loss_sum[n] += loss
            best = self.best_name()
            bar.set_postfix_str(
                f"{seen / (time.perf_counter() - start):.0f} img/s"
                + (f", best {best} {100 * self.progress.best_acc[best]:.2f}%" if best else "")
            )
        bar.close()
        self.progress.train_seconds += time.perf_counter() - start
        self.progress.backbone_seconds += self.source.backbone_seconds - backbone_before
        self.progress.images_seen += seen
        return {n: s / max(1, steps) for n, s in loss_sum.items()}

    def predict(self, split: str, one_view: bool = False) -> tuple[dict[str, Tensor], Tensor]:
        """The current members' probabilities on ``split`` and its labels (under torchrun each
        rank predicts its block of the split; every rank gets the whole, in split order);
        averaged over the test views unless ``one_view``."""
        total = self.val_batches if split == "val" and not self.data_world.distributed else None
        probs, labels = predict_all(self.source, self.members, split, self.device,
                                    self.config.progress, total, one_view)  # fmt: skip
        if self.data_world.distributed:
            probs = {n: gather_rows(p) for n, p in probs.items()}
            labels = gather_rows(labels)
        return probs, labels

    def validate(self) -> dict[str, float]:
        if self.idle:
            return {}
        probs, labels = self.predict("val")
        self.val_labels = labels
        progress = self.progress
        broken = [
            n for n, p in probs.items() if n not in progress.diverged and not p.isfinite().all()
        ]
        if broken:
            self._diverge(broken, "non-finite validation output")
        probs = {n: p for n, p in probs.items() if n not in progress.diverged}
        accs = {n: score(self.config.metric, p, labels) for n, p in probs.items()}
        for n, p in probs.items():  # the tie-breaker of halving: plateaus share an accuracy
            picked = p.gather(1, labels.view(-1, 1)).clamp_min(1e-12)
            loss = progress.last_val_loss[n] = -picked.log().mean().item()
            if loss < progress.best_loss.get(n, math.inf) * (1 - LOSS_MIN_DELTA):
                progress.best_loss[n] = loss  # progress on a plateau, before accuracy moves
                progress.last_improved_step = progress.step
        for n, acc in accs.items():
            if acc > progress.best_acc[n]:
                progress.best_acc[n], progress.best_epoch[n] = acc, progress.epoch
                self.best_state[n] = self.members.member_state(n)
                self.best_val_probs[n] = probs[n]
                progress.last_improved_step = progress.step
        return accs

    def _halve(self, standing: Standing) -> list[str]:
        """At a halving rung: drop all but the best members (of the whole grid, when ranks
        train slices of it); returns the dropped names."""
        if self.progress.epoch not in self.budget.rungs:
            return []
        b = self.budget
        acc = {n: -1.0 if n in self.progress.diverged else a for n, a in standing.best_acc.items()}
        keep = survivors(standing.active, acc, standing.last_val_loss, b.keep, b.min_members)
        dropped = [n for n in standing.active if n not in keep]
        for n in dropped:
            self.progress.dropped_at[n] = self.progress.epoch
        mine = [n for n in self.active if n in keep]
        if mine and len(mine) < len(self.active):
            self._shrink(mine)
        self.idle = not mine
        return dropped

    def _standing(self, accs: dict[str, float], losses: dict[str, float]) -> Standing:
        """Where the grid stands after this epoch: this trainer's members, merged over the
        ranks when each holds a slice; the grid-wide facts are adopted here."""
        standing = Standing.of(self.progress, accs, losses, self.active).merged(self.grid)
        self.progress.diverged = standing.diverged
        self.progress.last_improved_step = standing.last_improved_step
        return standing

    def _out_of_patience(self) -> bool:
        patience = self.budget.patience_steps
        return bool(patience) and self.progress.step - self.progress.last_improved_step >= patience

    def fit(self, resume: bool = False) -> None:
        """Train until the budget ends (continuing from the checkpoint when ``resume``; a new
        run starts a new log)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log = self.out_dir / "log.jsonl"
        cap = self.budget.max_epochs
        saved = self._resume_file() if resume else None
        if saved:
            self.load_checkpoint(saved)
            if self.world.is_main:  # a kill between log line and checkpoint
                truncate_log(log, self.progress.epoch)
            print(f"resuming {self.out_dir} after epoch {self.progress.epoch}/{cap}")
        elif self.progress.epoch == 0 and self.world.is_main:
            log.unlink(missing_ok=True)
        progress = self.progress  # (the checkpoint's, when resumed)
        while progress.epoch < cap and not progress.stopped:
            t0 = time.perf_counter()
            losses = self.train_epoch()
            t_train = time.perf_counter() - t0
            progress.epoch += 1
            standing = self._standing(self.validate(), losses)
            accs, losses = standing.accs, standing.losses
            t_val = time.perf_counter() - t0 - t_train
            progress.val_seconds += t_val
            best = self.best_name(standing)
            if best is None:
                raise DivergedError(
                    f"every member of {self.out_dir} diverged (non-finite loss or output): "
                    "lower the learning rates"
                )
            seconds = progress.train_seconds + progress.val_seconds  # validation is a cost too
            progress.curve.append(
                {"epoch": progress.epoch, "seconds": seconds, "val_acc": standing.best_acc[best]}
            )
            dropped = self._halve(standing)
            if self._out_of_patience():
                since = progress.step - progress.last_improved_step
                progress.stopped = f"no better member for {since} steps"
            entry = {
                "epoch": progress.epoch,
                "step": progress.step,
                "seconds": seconds,
                "train_seconds": t_train,
                "val_seconds": t_val,
                "train_loss": losses,
                "val_acc": accs,
                "best": {"name": best, "val_acc": standing.best_acc[best]},
                "active": len(standing.active) - len(dropped),
            }
            metric = "" if self.config.metric == "accuracy" else self.config.metric
            # metric: what "val_acc" holds when it is not accuracy
            extra = {"metric": metric, "dropped": dropped, "stopped": progress.stopped,
                     "diverged": progress.diverged}  # fmt: skip
            entry |= {k: v for k, v in extra.items() if v}
            with open(log if self.world.is_main else os.devnull, "a") as f:
                f.write(json.dumps(json_safe(entry), sort_keys=True, allow_nan=False) + "\n")
            self.save_checkpoint()  # after the log line: a resume drops lines past it
            kept = len(standing.active) - len(dropped)
            note = f"; halving kept {kept} of {len(standing.active)}"
            print(
                f"epoch {progress.epoch}/{cap}: best {best} {100 * standing.best_acc[best]:.2f}% "
                f"val{' ' + metric if metric else ''} "
                f"({t_train:.0f} s train, {len(accs)} members{note if dropped else ''})"
                + (f"; stopping: {progress.stopped}" if progress.stopped else "")
            )

    def _resume_file(self) -> str | None:
        """The checkpoint to resume from (None: none yet, the run starts)."""
        if self.grid:
            return resume_file(self.out_dir)
        return checkpoint.FILE if (self.out_dir / checkpoint.FILE).exists() else None

    def load_best(self) -> None:
        """Every member, dropped ones included, back at its best validation epoch."""
        self.idle = False
        if self.members is not self.all_members:
            self.members = self.all_members
            self.source.serve(self.members)
        for n in self.all_names:
            self.members.load_member_state(n, self.best_state[n])
