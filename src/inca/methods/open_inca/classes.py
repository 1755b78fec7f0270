"""Classes of an Open-InCA adapter, changed without retraining the others: remove one, put two
adapters side by side, fit the calibration of classes trained apart.

Every operation returns a NEW adapter; the rows of the classes it keeps are copied bit for bit,
so their logits on any input are unchanged (before a calibration, which changes only its own
``calib_scale``/``calib_shift`` buffers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from inca.errors import IncaError
from inca.methods.open_inca.adapter import (
    CLASS_BUFFERS,
    CLASS_PARAMS,
    SET_PARAMS,
    OpenInCAAdapter,
    OpenInCAConfig,
)


def _rebuilt(like: OpenInCAAdapter, sets: int, classes: int, state: dict[str, Tensor]
             ) -> OpenInCAAdapter:  # fmt: skip
    """A new adapter shaped like ``like`` (``sets`` projection sets, ``classes`` classes, class
    means kept when ``state`` has them) holding copies of ``state``."""
    means = state.get("token_means")
    stat_tokens = means.shape[1] if means is not None and means.shape[1] else 0
    if not stat_tokens:
        state = {k: v for k, v in state.items() if k != "token_means"}
    config = OpenInCAConfig(heads=like.heads, projection_sets=sets, stat_tokens=stat_tokens)
    out = OpenInCAAdapter(config, like.in_dim, classes, like.num_prefix_tokens)
    out.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return out.to(like.queries.device).eval()


def _class_rows(state: dict[str, Tensor]) -> list[str]:
    """The per-class entries a state dict holds (``token_means`` only when stored)."""
    return [k for k in CLASS_PARAMS + CLASS_BUFFERS if k in state]


def without_class(adapter: OpenInCAAdapter, index: int) -> OpenInCAAdapter:
    """``adapter`` less class ``index``: the others' rows (and logits) unchanged."""
    if adapter.num_classes == 1:
        raise IncaError("cannot remove the last class: a classifier needs one")
    keep = [i for i in range(adapter.num_classes) if i != index]
    state = adapter.state_dict()
    for name in _class_rows(state):
        state[name] = state[name][keep]
    return _rebuilt(adapter, adapter.config.projection_sets, len(keep), state)


def merged(a: OpenInCAAdapter, b: OpenInCAAdapter) -> OpenInCAAdapter:
    """The classes of ``a`` then those of ``b``, each side on its own projection sets (class
    means kept only when both sides stored them, at one token count)."""
    if a.in_dim != b.in_dim or a.heads != b.heads:
        raise IncaError(
            f"cannot merge open-inca adapters of width {a.in_dim} ({a.heads} heads) and "
            f"{b.in_dim} ({b.heads} heads); merge adapters trained on the same tap and heads"
        )
    sa, sb = a.state_dict(), b.state_dict()
    if a.config.stat_tokens != b.config.stat_tokens:
        sa.pop("token_means", None)
        sb.pop("token_means", None)
    state = {name: torch.cat([sa[name], sb[name]]) for name in SET_PARAMS + CLASS_PARAMS
             + CLASS_BUFFERS if name in sa}  # fmt: skip
    state["class_set"] = torch.cat([sa["class_set"], sb["class_set"] + a.config.projection_sets])
    sets = a.config.projection_sets + b.config.projection_sets
    return _rebuilt(a, sets, a.num_classes + b.num_classes, state)


def with_new_classes(base: OpenInCAAdapter, count: int, seed: int = 0,
                     new_set: bool = False) -> OpenInCAAdapter:  # fmt: skip
    """``base`` with ``count`` new classes, their query and output unit freshly initialised (to
    be trained; ``base``'s rows copied unchanged): on ``base``'s first projection set, or with
    ``new_set`` on a fresh set of their own (appended after ``base``'s sets)."""
    if count < 1:
        raise IncaError(f"add at least one class, got {count}")
    torch.manual_seed(seed)
    fresh = OpenInCAAdapter(
        OpenInCAConfig(heads=base.heads, stat_tokens=base.config.stat_tokens), base.in_dim,
        count, base.num_prefix_tokens,
    )  # fmt: skip
    state = base.state_dict()
    new = fresh.state_dict()
    sets = base.config.projection_sets
    if new_set:
        new["class_set"] = torch.full_like(new["class_set"], sets)
        for name in SET_PARAMS:
            state[name] = torch.cat([state[name], new[name].to(state[name].device)])
        sets += 1
    for name in _class_rows(state):
        state[name] = torch.cat([state[name], new[name].to(state[name].device)])
    return _rebuilt(base, sets, base.num_classes + count, state)


def with_token_means(adapter: OpenInCAAdapter, means: Tensor) -> OpenInCAAdapter:
    """``adapter`` storing ``means`` (C, T, D), each class's mean normalised token map (its
    rows otherwise unchanged)."""
    if means.shape[0] != adapter.num_classes or means.shape[2] != adapter.in_dim:
        raise IncaError(
            f"class means of shape {tuple(means.shape)} do not fit an adapter of "
            f"{adapter.num_classes} classes and width {adapter.in_dim}"
        )
    state = adapter.state_dict()
    state["token_means"] = means.float().to(adapter.queries.device)
    return _rebuilt(adapter, adapter.config.projection_sets, adapter.num_classes, state)


def raw_logits(adapter: OpenInCAAdapter, tokens: Tensor, batch: int = 256) -> Tensor:
    """Logits before calibration: normalised tokens (M, T, D) -> (M, C)."""
    scale, shift = adapter.calib_scale.clone(), adapter.calib_shift.clone()
    adapter.calib_scale.fill_(1.0)
    adapter.calib_shift.zero_()
    try:
        with torch.no_grad():
            return torch.cat([adapter(tokens[i : i + batch].to(adapter.queries.device)).float()
                              for i in range(0, len(tokens), batch)]).cpu()  # fmt: skip
    finally:
        adapter.calib_scale.copy_(scale)
        adapter.calib_shift.copy_(shift)


def fit_calibration(
    adapter: OpenInCAAdapter,
    tokens: Tensor,
    labels: Tensor,
    steps: int = 200,
    only: Tensor | None = None,
) -> dict[str, float]:
    """Fit ``calib_scale``/``calib_shift`` (a scale and a bias per class, and nothing else) by
    L-BFGS on the cross-entropy of held-out normalised tokens (M, T, D) with ``labels`` (M,);
    returns the accuracy before and after."""
    return fit_calibration_on_logits(adapter, raw_logits(adapter, tokens), labels, steps, only)


def fit_calibration_on_logits(
    adapter: OpenInCAAdapter,
    logits: Tensor,
    labels: Tensor,
    steps: int = 200,
    only: Tensor | None = None,
) -> dict[str, float]:
    """``fit_calibration`` from the adapter's uncalibrated logits (M, C) of held-out images.
    ``only`` (class indices): fit those classes' pairs, every other class keeping its own (how
    ``inca classes add`` puts its new classes on the old ones' scale without touching them)."""
    logits, labels = logits.float().cpu(), labels.long().cpu()
    fixed_scale, fixed_shift = adapter.calib_scale.cpu().clone(), adapter.calib_shift.cpu().clone()
    rows = torch.arange(adapter.num_classes) if only is None else torch.as_tensor(only)
    scale = torch.ones(len(rows), requires_grad=True)  # the fitted classes' pairs only
    shift = torch.zeros(len(rows), requires_grad=True)
    opt = torch.optim.LBFGS([scale, shift], max_iter=steps, line_search_fn="strong_wolfe")

    def pairs() -> tuple[Tensor, Tensor]:
        return fixed_scale.index_put((rows,), scale), fixed_shift.index_put((rows,), shift)

    def closure() -> Tensor:
        opt.zero_grad()
        s, b = pairs()
        loss = F.cross_entropy(logits * s + b, labels)
        loss.backward()
        return loss

    opt.step(closure)
    if not (torch.isfinite(scale).all() and torch.isfinite(shift).all()):
        raise IncaError("the calibration diverged; give more held-out images")
    with torch.no_grad():
        s, b = pairs()
    before = ((logits * fixed_scale + fixed_shift).argmax(-1) == labels).float().mean().item()
    after = ((logits * s + b).argmax(-1) == labels).float().mean().item()
    adapter.calib_scale.copy_(s)
    adapter.calib_shift.copy_(b)
    return {"acc_before": before, "acc_after": after, "images": len(labels)}
