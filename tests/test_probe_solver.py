"""The literature's linear probe: a converged L-BFGS fit per l2, equal to sklearn's, folded onto
raw features so that it loads into LinearProbe, the l2 chosen on validation."""

from __future__ import annotations

import pytest
import torch

from inca.adapters import adapter_config, build_adapter, normalize_tokens
from inca.errors import IncaError
from inca.methods.linear import pool_tokens, select_pool
from inca.methods.linear import solver as ps


def make_problem(
    n: int, m: int, dim: int, classes: int, separation: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian classes with correlated features on unequal scales and offsets (what the
    standardisation and the preconditioner are for): train (n, dim), val (m, dim), labels."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=g) * separation  # (C, F)
    mix = torch.randn(dim, dim, generator=g) / dim**0.5 + torch.eye(dim)  # (F, F) correlation
    scale = torch.logspace(-1, 1, dim)[torch.randperm(dim, generator=g)]  # (F,)
    offset = torch.randn(dim, generator=g) * 3  # (F,)

    def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (k,), generator=g)
        x = (torch.randn(k, dim, generator=g) + means[y]) @ mix * scale + offset  # (k, F)
        return x, y

    (xtr, ytr), (xva, yva) = draw(n), draw(m)
    return xtr, ytr, xva, yva


def objective_at(xs: torch.Tensor, y: torch.Tensor, sol: ps.Solution, classes: int):
    """The objective and its gradients at a solution on standardised features."""
    onehot = torch.nn.functional.one_hot(y, classes).float()
    return ps.multinomial_objective(xs, onehot, sol.weight, sol.bias, sol.l2)


def test_objective_gradient_matches_autograd() -> None:
    xtr, ytr, _, _ = make_problem(50, 1, 6, 4, separation=1.0)
    x = xtr.double()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    l2 = 0.3
    ref = torch.nn.functional.cross_entropy(x @ w.t() + b, ytr) + 0.5 * l2 * w.square().sum()
    ref_w, ref_b = torch.autograd.grad(ref, [w, b])

    onehot = torch.nn.functional.one_hot(ytr, 4).double()
    loss, grad_w, grad_b = ps.multinomial_objective(x, onehot, w.detach(), b.detach(), l2)
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad_w, ref_w)
    torch.testing.assert_close(grad_b, ref_b)


def test_fast_products_match_addmm() -> None:
    """oneDNN's products (when this build has it) give addmm's objective and gradients."""
    xtr, ytr, _, _ = make_problem(3000, 1, 96, 7, separation=0.5, seed=7)
    x = ps.standardize(xtr, *ps.standardization(xtr))
    onehot = torch.nn.functional.one_hot(ytr, 7).float()
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(7, 96, generator=g) * 0.3, torch.randn(7, generator=g)
    fast = ps.multinomial_objective(ps.Features(x, fast=True), onehot, w, b, 1e-3)
    plain = ps.multinomial_objective(x, onehot, w, b, 1e-3)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-6, atol=1e-7)
    for f, p in zip(fast[1:], plain[1:], strict=True):
        torch.testing.assert_close(f, p, rtol=1e-4, atol=1e-6)


# (a) --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("l2", [1e-2, 1e-4])
def test_solver_converges(l2: float) -> None:
    """Small gradient at the end, and a long plain L-BFGS run from there gains nothing."""
    xtr, ytr, _, _ = make_problem(600, 1, 24, 5, separation=0.6)
    mean, std = ps.standardization(xtr)
    xs = ps.standardize(xtr, mean, std)
    path = ps.fit_path(xs, ytr, 5, l2_grid=(1e-1, l2))
    sol = path[-1]
    assert sol.l2 == l2 and sol.iterations < ps.MAX_ITER
    loss, grad_w, grad_b = objective_at(xs, ytr, sol, 5)
    assert float(grad_w.abs().max()) < 1e-4 and float(grad_b.abs().max()) < 1e-4

    onehot = torch.nn.functional.one_hot(ytr, 5).float()
    polished = ps.solve_l2(xs, onehot, l2, sol.weight, sol.bias, max_iter=500, tol=1e-9)
    polished_loss, _, _ = objective_at(xs, ytr, polished, 5)
    assert float(loss - polished_loss) < 1e-6 * float(loss)


@pytest.mark.parametrize("tol, atol", [(ps.TOL, 5e-4), (1e-7, 1e-4)])
def test_preconditioned_solution_is_the_minimiser(monkeypatch, tol: float, atol: float) -> None:
    """The eigenbasis is a change of coordinates, not of problem: the same minimiser as plain
    L-BFGS finds in float64 run to the end, as close as the tolerance asks."""
    xtr, ytr, _, _ = make_problem(400, 1, 16, 3, separation=0.5, seed=3)
    xs = ps.standardize(xtr, *ps.standardization(xtr))
    (pre,) = ps.fit_path(xs, ytr, 3, l2_grid=(1e-3,), tol=tol)

    monkeypatch.setattr(ps, "TOL_CHANGE", 1e-15)
    x64, onehot = xs.double(), torch.nn.functional.one_hot(ytr, 3).double()
    zeros_w, zeros_b = torch.zeros(3, 16).double(), torch.zeros(3).double()
    ref = ps.solve_l2(x64, onehot, 1e-3, zeros_w, zeros_b, max_iter=5000, tol=1e-10)
    torch.testing.assert_close(pre.weight.double(), ref.weight, rtol=0, atol=2 * atol)
    p_pre = torch.addmm(pre.bias.double(), x64, pre.weight.double().t()).softmax(1)
    p_ref = torch.addmm(ref.bias, x64, ref.weight.t()).softmax(1)
    torch.testing.assert_close(p_pre, p_ref, rtol=0, atol=atol)


# (b) --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("l2", [1e-1, 1e-3, 1e-5])
def test_matches_sklearn(l2: float) -> None:
    """sklearn's multinomial LogisticRegression (lbfgs) with C = 1 / (l2 n) on standardised
    features: the same probabilities."""
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression
    xtr, ytr, xva, yva = make_problem(500, 200, 20, 4, separation=0.5, seed=1)
    mean, std = ps.standardization(xtr)
    xs, vs = ps.standardize(xtr, mean, std), ps.standardize(xva, mean, std)
    ref = LogisticRegression(C=1.0 / (l2 * len(xtr)), max_iter=10_000, tol=1e-10)
    ref.fit(xs.double().numpy(), ytr.numpy())
    ref_probs = torch.from_numpy(ref.predict_proba(vs.double().numpy())).float()  # (M, C)

    fit = ps.fit_multinomial(xtr, ytr, xva, yva, 4, l2_grid=(l2,))
    probs = torch.addmm(fit.bias, xva, fit.weight.t()).softmax(1)  # on raw features
    torch.testing.assert_close(probs, ref_probs, rtol=0, atol=1e-3)
    assert fit.val_acc == pytest.approx(float((ref_probs.argmax(1) == yva).float().mean()))
    # the slope matches sklearn's, unfolded: W = W' * std
    ref_w = torch.from_numpy(ref.coef_).float()
    torch.testing.assert_close(fit.weight * std, ref_w, rtol=0, atol=1e-3 * ref_w.abs().max())


# (c) --------------------------------------------------------------------------------------------


def test_folding_the_standardisation_is_exact() -> None:
    xtr, _, xva, _ = make_problem(300, 100, 12, 3, separation=1.0, seed=2)
    mean, std = ps.standardization(xtr)
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, 12, generator=g), torch.randn(3, generator=g)
    folded_w, folded_b = ps.fold_standardization(w, b, mean, std)
    for x in (xtr, xva):
        on_raw = torch.addmm(folded_b, x, folded_w.t())
        on_standardised = torch.addmm(b, ps.standardize(x, mean, std), w.t())
        torch.testing.assert_close(on_raw, on_standardised, rtol=1e-5, atol=1e-4)


def test_constant_features_do_not_blow_up() -> None:
    xtr, ytr, xva, yva = make_problem(200, 50, 6, 3, separation=1.0)
    xtr[:, 2], xva[:, 2] = 5.1, 7.0  # constant in train, different in val
    mean, std = ps.standardization(xtr)
    assert std[2] == 1.0 and float(ps.standardize(xtr, mean, std)[:, 2].abs().max()) < 1e-5
    fit = ps.fit_multinomial(xtr, ytr, xva, yva, 3, l2_grid=(1e-2,))
    assert torch.isfinite(fit.weight).all() and float(fit.weight[:, 2].abs().max()) < 1e-4


# (d) --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pool, prefix", [("cls+mean", 1), ("cls", 2), ("mean", 0)])
def test_fitted_probe_loads_into_linear_probe(pool: str, prefix: int, dtype) -> None:
    """Pool tokens, fit, load head.weight / head.bias: LinearProbe gives the solver's logits."""
    g = torch.Generator().manual_seed(0)
    B, T, D, C = 120, 7, 16, 3
    y = torch.randint(0, C, (B,), generator=g)
    tokens = torch.randn(B, T, D, generator=g) + torch.randn(C, 1, D, generator=g)[y]
    x = normalize_tokens(tokens).to(dtype)  # (B, T, D) as the taps' shared LayerNorm gives
    feats = select_pool(pool_tokens(x, prefix), pool)  # (B, F) float32
    assert feats.dtype == torch.float32
    fit = ps.fit_multinomial(feats[:80], y[:80], feats[80:], y[80:], C, l2_grid=(1e-2, 1e-3))

    config = adapter_config("linear", {"pool": pool})
    probe = build_adapter(config, in_dim=D, num_classes=C, num_prefix_tokens=prefix)
    probe.load_state_dict({"head.weight": fit.weight, "head.bias": fit.bias})
    with torch.no_grad():
        logits = probe(x)  # (B, C)
    torch.testing.assert_close(logits, torch.addmm(fit.bias, feats, fit.weight.t()))
    assert fit.val_acc == pytest.approx(float((logits[80:].argmax(1) == y[80:]).float().mean()))


def test_pool_features() -> None:
    x = torch.randn(4, 6, 5)
    pools = pool_tokens(x, 2)
    torch.testing.assert_close(pools["cls"], x[:, 0])
    torch.testing.assert_close(pools["mean"], x[:, 2:].mean(1))
    assert select_pool(pools, "cls+mean").shape == (4, 10)
    torch.testing.assert_close(pool_tokens(x, 0)["mean"], x.mean(1))
    # a CNN's map has no CLS token: global average and max pooling
    cnn = pool_tokens(x, 0, ("cls", "mean", "max"))
    assert set(cnn) == {"mean", "max"}
    torch.testing.assert_close(cnn["max"], x.amax(1))
    torch.testing.assert_close(select_pool(cnn, "mean+max"), torch.cat([x.mean(1), x.amax(1)], 1))


def test_a_probe_on_a_map_pools_mean_and_max_and_refuses_cls() -> None:
    from inca.adapters import adapter_config, build_adapter

    probe = build_adapter(adapter_config("linear", {"pool": "mean+max"}), 5, 3, 0)
    x = torch.randn(4, 6, 5)
    expected = torch.cat([x.mean(1), x.amax(1)], 1) @ probe.head.weight.T + probe.head.bias
    torch.testing.assert_close(probe(x), expected)
    with pytest.raises(IncaError, match="needs a CLS token.*mean"):
        build_adapter(adapter_config("linear", {"pool": "cls+mean"}), 5, 3, 0)
    with pytest.raises(IncaError, match="pool must be one of"):
        adapter_config("linear", {"pool": "min"})


# (e) --------------------------------------------------------------------------------------------


def test_best_index_prefers_accuracy_then_the_larger_l2() -> None:
    curve = [
        {"l2": 1e-1, "val_acc": 0.7},
        {"l2": 1e-2, "val_acc": 0.9},
        {"l2": 1e-3, "val_acc": 0.9},
        {"l2": 1e-4, "val_acc": 0.8},
    ]
    assert ps.best_index(curve) == 1
    assert ps.best_index(list(reversed(curve))) == 2  # order does not matter: l2 1e-2 again
    nan = [{"l2": 1e-3, "val_acc": float("nan")}, {"l2": 1e-2, "val_acc": float("nan")}]
    assert ps.best_index(nan) == 1


def test_the_best_validation_accuracy_chooses_the_l2() -> None:
    xtr, ytr, xva, yva = make_problem(300, 300, 10, 3, separation=0.4, seed=4)
    grid = (3.0, 1e-1, 1e-2, 1e-3, 1e-4)
    fit = ps.fit_multinomial(xtr, ytr, xva, yva, 3, l2_grid=grid[::-1])  # any order
    assert [c["l2"] for c in fit.curve] == list(grid)  # swept strongest first
    accs = [c["val_acc"] for c in fit.curve]
    best = max(accs)
    assert fit.val_acc == best
    assert fit.l2 == max(c["l2"] for c in fit.curve if c["val_acc"] == best)
    assert fit.curve[0]["val_acc"] < best  # l2 = 3 underfits: the sweep had a choice to make
    # the returned weights are those of the chosen l2
    probs = torch.addmm(fit.bias, xva, fit.weight.t())
    assert float((probs.argmax(1) == yva).float().mean()) == pytest.approx(best)


def test_ties_go_to_the_larger_l2() -> None:
    """Well separated classes: every l2 but an absurd one classifies validation perfectly."""
    xtr, ytr, xva, yva = make_problem(200, 100, 8, 3, separation=4.0, seed=5)
    fit = ps.fit_multinomial(xtr, ytr, xva, yva, 3, l2_grid=(1e-1, 1e-2, 1e-3))
    assert [c["val_acc"] for c in fit.curve] == [1.0, 1.0, 1.0]
    assert fit.l2 == 1e-1


def test_fit_probes_fits_every_feature_set_silently(capsys) -> None:
    xtr, ytr, xva, yva = make_problem(200, 100, 8, 3, separation=1.0, seed=6)
    train = {"block.1/cls": xtr, "block.1/mean": xtr[:, :4]}
    val = {"block.1/cls": xva, "block.1/mean": xva[:, :4]}
    fits = ps.fit_probes(train, ytr, val, yva, 3, l2_grid=(1e-2, 1e-3))
    assert set(fits) == set(train)
    assert fits["block.1/mean"].weight.shape == (3, 4) and fits["block.1/cls"].bias.shape == (3,)
    for fit in fits.values():
        assert len(fit.curve) == 2 and fit.seconds > 0
        assert set(fit.curve[0]) == {"l2", "val_acc", "train_loss", "iterations"}
    assert capsys.readouterr().out == ""


def test_l2_grid_must_be_positive() -> None:
    xtr, ytr, xva, yva = make_problem(50, 20, 4, 2, separation=1.0)
    for grid in ((), (1e-2, 0.0)):
        with pytest.raises(ValueError):
            ps.fit_multinomial(xtr, ytr, xva, yva, 2, l2_grid=grid)
