"""Linear probes fitted as linear-eval papers fit them (CLIP, DINOv2): frozen features, a
multinomial logistic regression solved to convergence by full-batch L-BFGS, its L2 penalty swept
on validation.

An SGD-trained probe reports its optimiser as much as its features (learning rate, epochs,
schedule); a converged convex fit has one answer per L2 strength, so the sweep over L2 alone
decides the number. The objective is sklearn's multinomial ``LogisticRegression`` on
standardised features, mean cross-entropy + ``l2/2 * ||W||^2`` (bias unpenalised), with
``l2 = 1 / (C * n_train)``; the fitted weights are folded back onto the raw pooled features so
they load straight into :class:`~inca.adapters.LinearProbe`'s ``head``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# Strongest to weakest. sklearn's C relates as l2 = 1 / (C * n_train): C = 0.1 on 10k images is
# l2 = 1e-3, the middle of the grid. Half decades where the optimum usually lies; whole decades at
# the weak end, where fits cost the most iterations and validation accuracy is flat or falling.
DEFAULT_L2: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6)
MAX_ITER = 1000  # L-BFGS iterations per l2 (the cap CLIP's linear eval gives sklearn)
TOL = 1e-5  # converged when max |gradient| of the objective falls below this (sklearn: 1e-4)
HISTORY = 20  # L-BFGS memory: enough curvature pairs, little Python work per iteration
MIN_STD = 1e-6  # standardising never divides by less (constant features stay at zero)


@dataclass
class ProbeFit:
    """One probe fitted on one feature set: ``weight`` (C, F) and ``bias`` (C,) act on the raw
    pooled features; ``curve`` has one entry per l2 tried, strongest first."""

    weight: Tensor
    bias: Tensor
    l2: float
    val_acc: float
    curve: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Solution:
    """The minimiser for one l2, on standardised features."""

    weight: Tensor  # (C, F)
    bias: Tensor  # (C,)
    loss: float  # the objective: mean cross-entropy + l2/2 ||W||^2
    grad_max: float  # max |gradient| at the solution
    iterations: int


def pool_features(x: Tensor, num_prefix_tokens: int) -> dict[str, Tensor]:
    """Normalised tokens (B, T, D), any float dtype -> {"cls": (B, D), "mean": (B, D)} float32.

    The same operations as ``LinearProbe.stacked_forward`` (a matmul with averaging weights in
    the tokens' dtype, then float32), so a probe fitted on these features reproduces its logits.
    Without prefix tokens (CNN maps) there is no "cls".
    """
    T, p = x.shape[1], num_prefix_tokens
    weights = x.new_zeros(T)
    weights[p:] = 1.0 / (T - p)
    pools = {"mean": torch.matmul(weights, x).float()}  # (B, D)
    if p > 0:
        pools = {"cls": x[:, 0].float(), **pools}  # (B, D)
    return pools


def select_pool(pools: Mapping[str, Tensor], pool: str) -> Tensor:
    """{"cls", "mean"} features -> those of ``pool``; "cls+mean" concatenates them (B, 2D) in
    LinearProbe's order."""
    if pool == "cls+mean":
        return torch.cat([pools["cls"], pools["mean"]], 1)
    return pools[pool]


def standardization(x: Tensor) -> tuple[Tensor, Tensor]:
    """Train features (N, F) -> mean (F,), std (F,): the penalty then weighs every feature
    alike, and L-BFGS starts from a far better conditioned problem."""
    x = x.float()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(MIN_STD)
    return mean, std


def standardize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(N, F) -> (N, F) float32 contiguous: one dense buffer for the solver's matmuls."""
    return ((x.float() - mean) / std).contiguous()


def fold_standardization(
    weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor
) -> tuple[Tensor, Tensor]:
    """Weights on standardised features -> the same map on raw features:
    W' = W / std, b' = b - W' @ mean. Computed in float64 (the bias sums F products)."""
    w = weight.double() / std.double()  # (C, F)
    b = bias.double() - w @ mean.double()  # (C,)
    return w.float(), b.float()


def multinomial_objective(
    x: Tensor, onehot: Tensor, weight: Tensor, bias: Tensor, l2: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean cross-entropy + l2/2 ||W||^2 and its gradients, by hand (no autograd graph):
    x (N, F), onehot (N, C), weight (C, F), bias (C,) -> loss (), grad_w (C, F), grad_b (C,).

    Two passes over x per call, one addmm each: the whole cost of the solver.
    """
    n = x.shape[0]
    z = torch.addmm(bias, x, weight.t())  # (N, C) logits
    # Margins to the true logit, then per-sample cross-entropy, summed in float64: subtracting
    # two sums of large logits instead would leave the loss ~1e-6 noisy at weak l2, and the line
    # search would stall on that noise long before the minimum.
    margins = z.sub_((z * onehot).sum(1, keepdim=True))  # (N, C), 0 at the label
    per_sample = torch.logsumexp(margins, 1, keepdim=True)  # (N, 1) cross-entropy
    data = per_sample.sum(dtype=torch.float64) / n
    loss = data + 0.5 * l2 * weight.square().sum(dtype=torch.float64)
    residual = margins.sub_(per_sample).exp_().sub_(onehot)  # (N, C): softmax - onehot
    grad_w = torch.addmm(weight, residual.t(), x, beta=l2, alpha=1.0 / n)  # (C, F)
    grad_b = residual.sum(0) / n  # (C,)
    return loss, grad_w, grad_b


def solve_l2(
    x: Tensor,
    onehot: Tensor,
    l2: float,
    weight: Tensor,
    bias: Tensor,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> Solution:
    """Minimise the objective for one ``l2`` from (``weight``, ``bias``) (a warm start) with
    full-batch L-BFGS and a strong-Wolfe line search, until max |gradient| <= ``tol`` (or the
    loss / step stop changing, or ``max_iter`` iterations)."""
    C, F = weight.shape
    theta = torch.cat([weight.reshape(-1), bias]).float().requires_grad_(True)  # (C*F + C,)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-9,
        history_size=HISTORY,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        w, b = theta.detach()[: C * F].view(C, F), theta.detach()[C * F :]
        loss, grad_w, grad_b = multinomial_objective(x, onehot, w, b, l2)
        theta.grad = torch.cat([grad_w.reshape(-1), grad_b])
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = closure()
    theta = theta.detach()
    return Solution(
        weight=theta[: C * F].view(C, F).clone(),
        bias=theta[C * F :].clone(),
        loss=float(loss),
        grad_max=float(theta.grad.abs().max()) if theta.grad is not None else float("nan"),
        iterations=int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0)),
    )


def accuracy(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor) -> float:
    """Top-1 accuracy of the linear map on (N, F) features."""
    if len(y) == 0:
        return float("nan")
    return float((torch.addmm(bias, x, weight.t()).argmax(1) == y).float().mean())


def cross_entropy(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor) -> float:
    """Mean cross-entropy of the linear map (the data term alone, for the curve)."""
    return float(torch.nn.functional.cross_entropy(torch.addmm(bias, x, weight.t()), y))


def fit_multinomial(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> ProbeFit:
    """A converged multinomial logistic regression per l2 of ``l2_grid``, strongest first, each
    warm-started from the last; returns the one with the best validation accuracy (ties: the
    stronger l2), its weights folded onto the raw features (N, F)."""
    start = time.perf_counter()
    mean, std = standardization(train_x)
    xs, vs = standardize(train_x, mean, std), standardize(val_x, mean, std)  # (N, F), (M, F)
    ytr, yva = train_y.to(xs.device).long(), val_y.to(xs.device).long()
    onehot = torch.nn.functional.one_hot(ytr, num_classes).float()  # (N, C)
    weight = xs.new_zeros(num_classes, xs.shape[1])  # (C, F)
    bias = xs.new_zeros(num_classes)  # (C,)
    best: tuple[float, float, Tensor, Tensor] | None = None
    curve = []
    for l2 in sorted((float(v) for v in l2_grid), reverse=True):
        sol = solve_l2(xs, onehot, l2, weight, bias, max_iter, tol)
        weight, bias = sol.weight, sol.bias
        val_acc = accuracy(vs, yva, weight, bias)
        curve.append(
            {
                "l2": l2,
                "val_acc": val_acc,
                "train_loss": cross_entropy(xs, ytr, weight, bias),
                "iterations": sol.iterations,
            }
        )
        if best is None or val_acc > best[1]:  # strict: a tie keeps the stronger l2
            best = (l2, val_acc, weight, bias)
    if best is None:
        raise ValueError("fit_multinomial: l2_grid is empty")
    l2, val_acc, weight, bias = best
    w, b = fold_standardization(weight, bias, mean, std)
    return ProbeFit(w, b, l2, val_acc, curve, time.perf_counter() - start)


def fit_probes(
    train_feats: Mapping[str, Tensor],
    train_y: Tensor,
    val_feats: Mapping[str, Tensor],
    val_y: Tensor,
    num_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2,
) -> dict[str, ProbeFit]:
    """One :func:`fit_multinomial` per named feature set (e.g. "block.5/cls+mean"), silently."""
    return {
        name: fit_multinomial(x, train_y, val_feats[name], val_y, num_classes, l2_grid)
        for name, x in train_feats.items()
    }
