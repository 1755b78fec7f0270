"""What an adapter's training step must cost: a FLOP and byte model, and the matmul peak of this
machine at the same shapes, so ``inca bench`` can say how far the cached path is from the limit.

Folded InCA adapter (``methods.inca.adapter``) on a tap of T tokens × D, m queries, h heads,
C classes, per image and training step (forward + backward; the tokens are frozen, so their
matmuls have no input gradient: backward = forward for them, 2 × forward for projections)::

    token work        logits u x̂ᵀ and pooling α x̂      fwd 4·m·h·T·D    step  8·m·h·T·D
    projections       W_v and W_o on the pooled rows     fwd 4·m·D²       step 12·m·D²
    head              mean over queries, Linear(D, C)    fwd 2·D·C        step  6·D·C

Linear probe on pooled tokens (CLS + mean: 2·D features): fwd 2·2D·C plus the T·D sums of the
pooling; step 3 × the matmul. Checked against torch's FLOP counter (tests/test_bench.py).

Bytes. Two kinds of memory traffic, which the FLOPs do not show:

* per step, whatever the batch: the weights. An adapter of P float32 parameters reads them in
  the forward, reads them and writes their gradients in the backward, and fused AdamW reads
  weights, gradients and two moments and writes three: ``40·P`` bytes. The folded adapter at
  D = 384 has P ≈ 0.6 M (four D × D projections): 24 MB a step, as much as the token work of
  ~100 images at this CPU's speeds. This is why the cost per image falls with the batch.
* per image: the tap's tokens (T·D at the cache's dtype, read by the two token matmuls forward
  and two backward, shared by every adapter on the tap) and each adapter's pooled rows and
  attention weights (m·h·D and m·h·T, each written and read a few times).

``step_seconds`` puts both together as a roofline: FLOPs at the measured matmul peak plus bytes
at the measured copy bandwidth (the two do not overlap much on two cores).
"""

from __future__ import annotations

import time
from typing import Any

import torch


def inca_step_flops(tokens: int, width: int, queries: int = 1, heads: int = 6,
                    classes: int = 10) -> dict[str, float]:  # fmt: skip
    """FLOPs of one training step of a folded InCA adapter, per image, by part."""
    parts = {
        "tokens": 8.0 * queries * heads * tokens * width,
        "projections": 12.0 * queries * width * width,
        "head": 6.0 * width * classes,
    }
    return parts | {"total": sum(parts.values())}


def linear_step_flops(tokens: int, width: int, classes: int = 10, features: int = 2) -> float:
    """FLOPs of one training step of a linear probe on ``features`` pooled vectors, per image."""
    return 3 * 2.0 * features * width * classes + tokens * width


def step_flops(spec: Any, tokens: int, width: int, classes: int) -> float:
    """The model's FLOPs per image of one plan member (``train.plan.AdapterSpec``) on a tap of
    ``tokens`` × ``width``; 0 for kinds the model does not cover."""
    if spec.kind == "inca":
        _, h = spec.config.resolved(width)
        return inca_step_flops(tokens, width, spec.config.queries, h, classes)["total"]
    if spec.kind == "linear":
        return linear_step_flops(tokens, width, classes, 2 if "+" in spec.config.pool else 1)
    return 0.0


def inca_params(width: int, queries: int = 1, classes: int = 10) -> int:
    """Parameters of an InCA adapter (no MLP) at width D = d: four projections, norms, queries,
    head."""
    return 4 * width * width + 3 * width + queries * width + 4 * width + classes * (width + 1)


def inca_step_bytes(tokens: int, width: int, queries: int = 1, heads: int = 6,
                    classes: int = 10, token_size: int = 2) -> dict[str, float]:  # fmt: skip
    """Memory traffic of one training step of a folded InCA adapter: ``per_step`` (weights,
    gradients and AdamW moments, independent of the batch) and ``per_image`` (its pooled rows
    and attention weights, and the tap's tokens as if it read them alone)."""
    rows = queries * heads
    return {
        "per_step": 40.0 * inca_params(width, queries, classes),
        "per_image": 4.0 * tokens * width * token_size  # the tokens: 2 matmuls fwd, 2 bwd
        + 4.0 * rows * width * token_size  # pooled rows: written, read, and their gradient
        + 6.0 * rows * tokens * 4,  # attention weights in fp32: logits, softmax, backward
    }


def step_seconds(flops: float, bytes_moved: float, gflops: float, gbytes_per_s: float) -> float:
    """The roofline's time for ``flops`` at ``gflops`` plus ``bytes_moved`` at the bandwidth."""
    return flops / (gflops * 1e9) + bytes_moved / (gbytes_per_s * 1e9)


def copy_bandwidth(megabytes: int = 256, seconds: float = 0.5) -> float:
    """Measured GB/s of a large copy (bytes read + bytes written): the bandwidth element-wise
    work and the optimizer see. The best repeat over about ``seconds``."""
    a = torch.empty(megabytes * 2**20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)  # warm-up: pages touched
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        b.copy_(a)
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return 2 * a.numel() * 4 / best / 1e9


def token_bytes(tokens: int, width: int, dtype: torch.dtype) -> int:
    """Bytes of one image's normalised tokens at a tap, as the cache stores them."""
    return tokens * width * torch.empty((), dtype=dtype).element_size()


def matmul_gflops(rows: int, inner: int, cols: int, dtype: torch.dtype,
                  seconds: float = 0.5) -> float:  # fmt: skip
    """Measured GFLOP/s of (rows × inner) @ (inner × cols) in ``dtype`` on the CPU: the best
    repeat over about ``seconds`` (noise on a shared machine only ever adds time)."""
    a = torch.randn(rows, inner).to(dtype)
    b = torch.randn(inner, cols).to(dtype)
    a @ b  # warm-up
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return 2.0 * rows * inner * cols / best / 1e9


def gemm_peaks(tokens: int, width: int, batch: int, rows: int,
               seconds: float = 0.5) -> dict[str, dict[str, float]]:  # fmt: skip
    """Matmul GFLOP/s in bf16 and fp32 at the shapes a tap's shared pooling runs (``rows``
    folded query rows against ``batch`` images' tokens), and at a large square one."""
    out: dict[str, dict[str, float]] = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        out[name] = {
            "pooling_shape": matmul_gflops(rows, width, batch * tokens, dtype, seconds),
            "square_2048": matmul_gflops(2048, 2048, 2048, dtype, seconds),
        }
    return out
