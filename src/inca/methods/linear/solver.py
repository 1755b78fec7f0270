"""Linear probes fitted as linear-eval papers fit them (CLIP, DINOv2): frozen features, a
multinomial logistic regression solved to convergence by full-batch L-BFGS, its L2 penalty swept
on validation.

An SGD-trained probe reports its optimiser as much as its features (learning rate, epochs,
schedule); a converged convex fit has one answer per L2 strength, so the sweep over L2 alone
decides the number. The objective is sklearn's multinomial ``LogisticRegression`` on
standardised features: mean cross-entropy + ``l2/2 * ||W||^2`` (bias unpenalised), with
``l2 = 1 / (C * n_train)``. The fitted weights are folded back onto the raw pooled features, so
they load straight into :class:`~inca.adapters.LinearProbe`'s ``head``.

Speed: every objective evaluation is two passes over the (N, F) features, so the cost is the
number of evaluations. Pooled ViT features are strongly correlated (a few directions carry most
of the variance), which makes plain L-BFGS crawl along the weak directions for hundreds of
iterations at small l2. The solver therefore works in the eigenbasis of the features'
correlation, each direction rescaled so that the Hessian is close to a multiple of the identity
(:func:`preconditioner`): a change of variables, so the same problem and minimiser, reached in a
fraction of the iterations. Each l2 starts from the path extrapolated from the stronger ones
(:func:`warm_start`), and on CPU the two products go through oneDNN (:class:`Features`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

# Strongest to weakest. sklearn's C relates as l2 = 1 / (C * n_train): C = 0.1 on 10k images is
# l2 = 1e-3, the middle of the grid. Half decades where the optimum usually lies; whole decades at
# the weak end, where fits cost the most iterations and validation accuracy is flat or falling.
DEFAULT_L2: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6)
MAX_ITER = 1000  # L-BFGS iterations per l2 (the cap CLIP's linear eval gives sklearn)
# Converged when max |gradient| in the preconditioned coordinates falls below TOL. There the
# Hessian is near a multiple of the identity, so this bounds the distance to the optimum in every
# direction alike (a raw-gradient test is blind along weak directions). Along the strongest
# directions it is about sklearn's default (1e-4 on the raw gradient), everywhere else stricter.
TOL = 1e-5
TOL_CHANGE = 1e-9  # stop when the loss or the step changes less than this
HISTORY = 20  # L-BFGS memory: enough curvature pairs, little Python work per iteration
CONSTANT = 1e-5  # a feature whose std is below this times its |mean| is constant (float32)


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

    l2: float
    weight: Tensor  # (C, F)
    bias: Tensor  # (C,)
    iterations: int
    evaluations: int
    train_loss: float = float("nan")  # mean cross-entropy, without the penalty


# ---------------------------------------------------------------------------------------------
# features


def standardization(x: Tensor) -> tuple[Tensor, Tensor]:
    """Train features (N, F) -> mean (F,), std (F,): the penalty then weighs every feature
    alike, as sklearn's pipelines (StandardScaler, then LogisticRegression) do.

    A feature constant in train (its std within float32 rounding of its mean) keeps std 1, as
    in StandardScaler: it stays ~0 and its weight at ~0, where dividing by a clamped tiny std
    would turn its rounding noise, and any validation value it takes, into huge inputs.
    """
    x = x.float()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    return mean, torch.where(std > CONSTANT * mean.abs(), std, torch.ones_like(std))


def standardize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(N, F) -> (N, F) float32 contiguous: one dense buffer for the solver's matmuls."""
    return ((x.float() - mean) / std).contiguous()


def fold_standardization(
    weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor
) -> tuple[Tensor, Tensor]:
    """Weights on standardised features -> the same map on raw features:
    W' = W / std, b' = b - W' @ mean. In float64: the bias sums F products."""
    w = weight.double() / std.double()  # (C, F)
    b = bias.double() - w @ mean.double()  # (C,)
    return w.float(), b.float()


# ---------------------------------------------------------------------------------------------
# the objective and its solver


def _close(a: Tensor, b: Tensor, rtol: float = 1e-4) -> bool:
    """Equal up to float32 rounding, relative to the largest entry."""
    return float((a - b).abs().max()) <= rtol * float(b.abs().max())


class Features:
    """The (N, F) float features and the two products the solver takes of them, logits
    x @ W^T + b and the gradient's R^T @ x: the whole cost of a fit.

    With ``fast``, on CPU, these skinny products (C ~ 10 columns) go through oneDNN, which runs
    them 2-3x faster than the BLAS behind addmm (2-core AMD EPYC, N = 10k, F = 768: about 2 ms
    each against 5-6 ms), at the price of two copies of x in its format. They are checked
    against addmm once and dropped if missing or different; otherwise one addmm each.
    """

    def __init__(self, x: Tensor, fast: bool = False) -> None:
        self.x = x.contiguous()  # (N, F)
        self.shape = self.x.shape
        self.dnn: tuple[Tensor, Tensor] | None = None
        if fast and x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] > 0:
            self.dnn = self._onednn_copies()

    def _onednn_copies(self) -> tuple[Tensor, Tensor] | None:
        """x and x^T in oneDNN's format if its products there match addmm's, else None."""
        g = torch.Generator().manual_seed(0)
        w = torch.randn(3, self.shape[1], generator=g)  # (3, F)
        b, r = torch.randn(3, generator=g), torch.randn(self.shape[0], 3, generator=g)
        plain = self.logits(w, b), self.gradient(r, w, 0.5)
        try:
            dnn = self.dnn = (self.x.to_mkldnn(), self.x.t().contiguous().to_mkldnn())
            fast = self.logits(w, b), self.gradient(r, w, 0.5)
        except (RuntimeError, AttributeError):  # a build without oneDNN
            return None
        finally:
            self.dnn = None
        same = all(_close(f, p) for f, p in zip(fast, plain, strict=True))
        return dnn if same else None

    def logits(self, weight: Tensor, bias: Tensor) -> Tensor:
        """weight (C, F), bias (C,) -> x @ weight^T + bias (N, C)."""
        if self.dnn is None:
            return torch.addmm(bias, self.x, weight.t())
        linear = torch._C._nn.mkldnn_linear
        return linear(self.dnn[0], weight.to_mkldnn(), bias.to_mkldnn()).to_dense()

    def gradient(self, residual: Tensor, weight: Tensor, l2: float) -> Tensor:
        """residual (N, C), weight (C, F) -> residual^T @ x / N + l2 * weight (C, F)."""
        n = self.shape[0]
        if self.dnn is None:
            return torch.addmm(weight, residual.t(), self.x, beta=l2, alpha=1.0 / n)
        # x^T @ residual with x^T as the big operand, as in the logits: faster than R^T @ x
        rt = residual.t().contiguous().to_mkldnn()  # (C, N)
        product = torch._C._nn.mkldnn_linear(self.dnn[1], rt, None).to_dense()  # (F, C)
        return product.t().div(n).add_(weight, alpha=l2)


def multinomial_objective(
    x: Tensor | Features, onehot: Tensor, weight: Tensor, bias: Tensor, l2: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean cross-entropy + l2/2 ||W||^2 and its gradients, by hand (no autograd graph):
    x (N, F), onehot (N, C), weight (C, F), bias (C,) -> loss () float64, grad_w (C, F),
    grad_b (C,).

    Two passes over x, one product each: the whole cost of the solver.
    """
    x = x if isinstance(x, Features) else Features(x)
    n = x.shape[0]
    z = x.logits(weight, bias)  # (N, C)
    # Margins to the true logit, then per-sample cross-entropy, summed in float64: subtracting
    # two sums of large logits instead leaves the loss ~1e-6 noisy at weak l2, and the line
    # search stalls on that noise long before the minimum.
    margins = z.sub_((z * onehot).sum(1, keepdim=True))  # (N, C), 0 at the label
    per_sample = torch.logsumexp(margins, 1, keepdim=True)  # (N, 1) cross-entropy
    loss = per_sample.sum(dtype=torch.float64) / n
    loss = loss + 0.5 * l2 * weight.square().sum(dtype=torch.float64)
    residual = margins.sub_(per_sample).exp_().sub_(onehot)  # (N, C): softmax - onehot
    grad_w = x.gradient(residual, weight, l2)  # (C, F)
    grad_b = residual.sum(0) / n  # (C,)
    return loss, grad_w, grad_b


def eigenbasis(x: Tensor) -> tuple[Tensor, Tensor]:
    """Standardised (centred) features (N, F) -> the eigenvalues (F,) >= 0 and orthonormal
    eigenvectors (F, F) of their correlation x^T x / N."""
    eigenvalues, basis = torch.linalg.eigh(torch.mm(x.t(), x) / x.shape[0])
    return eigenvalues.clamp_min(0.0), basis


@dataclass
class Coordinates:
    """The solver's variables V for the weights W = (V * scale) @ basis^T: a change of
    variables, not of problem (the objective is always evaluated at W)."""

    scale: Tensor  # (F,)
    basis: Tensor | None = None  # (F, F) orthonormal; None: the features' own basis

    def weight(self, v: Tensor) -> Tensor:
        """V (C, F) -> W (C, F)."""
        w = v * self.scale
        return w if self.basis is None else w @ self.basis.t()

    def variables(self, weight: Tensor) -> Tensor:
        """W (C, F) -> V (C, F)."""
        w = weight if self.basis is None else weight @ self.basis
        return w / self.scale

    def gradient(self, grad_w: Tensor) -> Tensor:
        """dL/dW (C, F) -> dL/dV (C, F), by the chain rule."""
        g = grad_w if self.basis is None else grad_w @ self.basis
        return g * self.scale


def preconditioner(eigenvalues: Tensor, basis: Tensor, l2: float, num_classes: int) -> Coordinates:
    """Coordinates in which the objective's Hessian is close to a multiple of the identity.

    Along an eigen-direction of the features with variance lambda, the Hessian is about
    c * lambda + l2, where c is the softmax curvature (about 1/C at the start; less once the fit
    is confident). Scaling that direction by s = (lambda + l2 / c)^-1/2 makes it about c along
    every direction: one scale for L-BFGS to learn, instead of a condition number of
    lambda_max / l2.
    """
    curvature = 0.3 / num_classes
    return Coordinates((eigenvalues + l2 / curvature).rsqrt(), basis)


def solve_l2(
    x: Tensor | Features,
    onehot: Tensor,
    l2: float,
    weight: Tensor,
    bias: Tensor,
    coordinates: Coordinates | None = None,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> Solution:
    """Minimise the objective for one ``l2`` from (``weight``, ``bias``) (a warm start) with
    full-batch L-BFGS and a strong-Wolfe line search, over the variables of ``coordinates``
    (none: the weights themselves). Stops when max |gradient in those variables| <= ``tol``,
    when the loss or the step stop changing, or after ``max_iter`` iterations."""
    C, F = weight.shape
    x = x if isinstance(x, Features) else Features(x)
    coords = coordinates or Coordinates(weight.new_ones(F))
    theta = torch.cat([coords.variables(weight).reshape(-1), bias])  # (C*F + C,)
    theta.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta],
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=TOL_CHANGE,
        history_size=HISTORY,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        v, b = theta.detach()[: C * F].view(C, F), theta.detach()[C * F :]
        loss, grad_w, grad_b = multinomial_objective(x, onehot, coords.weight(v), b, l2)
        theta.grad = torch.cat([coords.gradient(grad_w).reshape(-1), grad_b])
        return loss

    opt.step(closure)
    state = opt.state[theta]
    v, b = theta.detach()[: C * F].view(C, F), theta.detach()[C * F :].clone()
    return Solution(l2, coords.weight(v), b, state["n_iter"], state["func_evals"])


def accuracy(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor) -> float:
    """Top-1 accuracy of the linear map on (N, F) features (NaN without samples)."""
    if len(y) == 0:
        return float("nan")
    return float((torch.addmm(bias, x, weight.t()).argmax(1) == y).float().mean())


def best_index(curve: Sequence[Mapping[str, float]]) -> int:
    """The entry with the best ``val_acc``; ties (and NaN, no validation) go to the larger
    ``l2``: the more regularised fit, when validation cannot tell them apart."""

    def key(i: int) -> tuple[float, float]:
        acc = curve[i]["val_acc"]
        return (float("-inf") if acc != acc else acc, curve[i]["l2"])

    return max(range(len(curve)), key=key)


# ---------------------------------------------------------------------------------------------
# the sweep


def strongest_first(l2_grid: Sequence[float]) -> list[float]:
    """The distinct l2 values, largest first; each must be > 0 (without a penalty separable
    features have no minimiser)."""
    grid = sorted({float(v) for v in l2_grid}, reverse=True)
    if not grid or grid[-1] <= 0:
        raise ValueError(f"l2_grid must hold values > 0, got {list(l2_grid)}")
    return grid


def warm_start(previous: Sequence[Solution], l2: float) -> tuple[Tensor, Tensor]:
    """The start for ``l2`` from the solutions so far: the last one, moved on along the line
    through the last two, linear in log l2. The path is smooth in log l2, so this lands nearer
    the next minimiser than the last solution does (about a quarter fewer evaluations)."""
    last = previous[-1]
    if len(previous) < 2:
        return last.weight, last.bias
    before = previous[-2]
    step = math.log(l2 / last.l2) / math.log(last.l2 / before.l2)
    weight = last.weight + step * (last.weight - before.weight)  # (C, F)
    return weight, last.bias + step * (last.bias - before.bias)


def fit_path(
    train_x: Tensor,
    train_y: Tensor,
    num_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> list[Solution]:
    """One converged fit per l2 on standardised features (N, F), strongest first, each
    warm-started from the ones before (the regularisation path)."""
    eigenvalues, basis = eigenbasis(train_x)  # (F,), (F, F)
    x = Features(train_x, fast=True)
    y = train_y.to(train_x.device).long()
    onehot = torch.nn.functional.one_hot(y, num_classes).to(train_x.dtype)  # (N, C)
    weight = train_x.new_zeros(num_classes, train_x.shape[1])  # (C, F)
    bias = train_x.new_zeros(num_classes)  # (C,)
    path: list[Solution] = []
    for l2 in strongest_first(l2_grid):
        if path:
            weight, bias = warm_start(path, l2)
        coordinates = preconditioner(eigenvalues, basis, l2, num_classes)
        sol = solve_l2(x, onehot, l2, weight, bias, coordinates, max_iter, tol)
        loss = torch.nn.functional.cross_entropy(x.logits(sol.weight, sol.bias), y)
        path.append(replace(sol, train_loss=float(loss)))
    return path


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
    """The regularisation path of :func:`fit_path` on standardised ``train_x`` (N, F); returns
    the fit with the best validation accuracy (ties: the larger l2), its weights folded onto the
    raw features."""
    start = time.perf_counter()
    mean, std = standardization(train_x)
    xs = standardize(train_x, mean, std)  # (N, F)
    vs = standardize(val_x.to(xs.device), mean, std)  # (M, F)
    ytr, yva = train_y.to(xs.device).long(), val_y.to(xs.device).long()
    path = fit_path(xs, ytr, num_classes, l2_grid, max_iter, tol)
    curve = [
        {
            "l2": s.l2,
            "val_acc": accuracy(vs, yva, s.weight, s.bias),
            "train_loss": s.train_loss,
            "iterations": s.iterations,
        }
        for s in path
    ]
    best = best_index(curve)
    weight, bias = fold_standardization(path[best].weight, path[best].bias, mean, std)
    seconds = time.perf_counter() - start
    return ProbeFit(weight, bias, path[best].l2, curve[best]["val_acc"], curve, seconds)


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
