"""Linear probes fitted as the literature fits them, on pooled features of the cached tokens.

One pass over each split reads every probed tap once and pools it (CLS, mean of the patch
tokens) exactly as :class:`~inca.adapters.LinearProbe` does; then each (tap, pooling) gets a
converged full-batch L-BFGS fit with its L2 penalty swept on validation (the linear method's
solver, :mod:`inca.methods.linear.solver`). The result is an ordinary ``LinearProbe`` adapter:
it is selected, ensembled, saved and served like any member.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from inca.adapters import build_adapter
from inca.methods.linear import pool_tokens, select_pool
from inca.methods.linear.probe import POOL_PARTS
from inca.methods.linear.solver import fit_probes
from inca.train.batch_sources import TokenSource
from inca.train.candidate import Candidate
from inca.train.plan import AdapterSpec
from inca.train.select import accuracy
from inca.utils.io import write_json


def pooled_features(
    source: TokenSource, split: str, progress: bool = True, every_view: bool = False
) -> tuple[dict[str, dict[str, Tensor]], Tensor]:
    """{tap: {"cls": (V, N, D), "mean": (V, N, D), "max": (V, N, D)}} float32 for every image
    of ``split`` (in the split's order, unaugmented; "cls" where the backbone has a prefix
    token; V: the test views of the split, or with ``every_view`` the run's views, 1
    without), and the labels (N,)."""
    prefix = source.backbone.num_prefix_tokens
    parts: dict[str, dict[str, list[Tensor]]] = {t: {} for t in source.taps}
    labels = []
    batches = source.evaluate(split, every_view=every_view)
    for x, y in tqdm(batches, desc=f"probe features {split}", leave=False, disable=not progress):
        for i, tap in enumerate(source.taps):  # x: (n_taps, V * b, T, D) normalised tokens
            for pool, f in pool_tokens(x[i], prefix, POOL_PARTS).items():
                parts[tap].setdefault(pool, []).append(f.cpu().reshape(-1, len(y), f.shape[-1]))
        labels.append(y)
    feats = {t: {p: torch.cat(v, dim=1) for p, v in d.items()} for t, d in parts.items()}
    return feats, torch.cat(labels)


def _select(feats: dict[str, dict[str, Tensor]], spec: AdapterSpec) -> Tensor:
    return select_pool(feats[spec.tap], spec.config.pool)


def fit_linear_probes(
    source: TokenSource,
    specs: Sequence[AdapterSpec],
    num_classes: int,
    out: Path,
    progress: bool = True,
) -> dict[str, Candidate]:
    """Fit every linear probe of ``specs`` (solver lbfgs) on ``source``'s splits; write
    ``probes.json`` (each fit's L2 curve) in ``out``; return them as members."""
    start = time.perf_counter()
    feats = {s: pooled_features(source, s, progress, every_view=s == "train")
             for s in ("train", "val", "test")}  # fmt: skip
    (tr, ytr), (va, yva), (te, _) = feats["train"], feats["val"], feats["test"]
    views = len(source.views)
    fits = fit_probes(  # on every training view (the views as augmentation); the L2 is picked
        {s.name: _select(tr, s).flatten(0, 1) for s in specs},  # (V * N, F), view-major
        ytr.repeat(views),  # on validation's first view; test views average below
        {s.name: _select(va, s)[0] for s in specs},
        yva,
        num_classes,
    )
    members, record = {}, {}
    for s in specs:
        fit = fits[s.name]
        dim = source.backbone.taps[s.tap].dim
        probe = build_adapter(s.config, dim, num_classes, source.backbone.num_prefix_tokens)
        probe.load_state_dict({"head.weight": fit.weight, "head.bias": fit.bias})
        probe.eval()

        def probs(x: Tensor, fit=fit) -> Tensor:  # (V, N, F) -> mean over views (N, C)
            return (x @ fit.weight.t() + fit.bias).softmax(-1).mean(0)

        val_probs = probs(_select(va, s))  # what selection reads: its accuracy, over views
        val_acc = fit.val_acc if va[s.tap][next(iter(va[s.tap]))].shape[0] == 1 else (
            accuracy(val_probs, yva))  # fmt: skip
        members[s.name] = Candidate(
            s, probe, val_acc, val_probs, probs(_select(te, s)), {"l2": fit.l2}
        )
        if va[s.tap][next(iter(va[s.tap]))].shape[0] > 1:  # test views: the first alone too
            members[s.name].one_view = {
                "val": probs(_select(va, s)[:1]),
                "test": probs(_select(te, s)[:1]),
            }
        record[s.name] = {"l2": fit.l2, "val_acc": fit.val_acc, "curve": fit.curve,
                          "seconds": fit.seconds}  # fmt: skip
    seconds = time.perf_counter() - start
    best = max(record, key=lambda n: record[n]["val_acc"])
    print(
        f"{len(specs)} linear probes fitted by L-BFGS in {seconds:.0f} s: best {best} "
        f"{100 * record[best]['val_acc']:.2f}% val (l2 {record[best]['l2']:g})"
    )
    write_json(out / "probes.json", {"seconds": seconds, "probes": record})
    return members
