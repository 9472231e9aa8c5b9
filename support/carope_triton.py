"""
CARoPE's phase and rotation fused into one Triton kernel per pass (forward, backward).

The readable reference (carope.py) builds the phase tensor of shape (B, H, T, P) in memory:

    f^i  ->  phi_i(m) = sum_{t<=m} f_t^i  ->  cos, sin  ->  rotate(q), rotate(k)

and autograd keeps cos and sin, two more (B, H, T, P) float32 tensors, for the backward.
Here one program per (batch, head) walks along time in tiles of BLOCK_T tokens, carrying
the running phase vector (P numbers) from one tile to the next, so the powers, the phase,
cos and sin only ever live in registers. Only q, k and f are saved for the backward, which
recomputes the phase.

Notation: B batch, T tokens, H = n_head, D = head_dim, P = D/2 pairs, pair i = dims (i, i + P)
(the half-split layout of carope.rotate). f has shape (B, T, H), float32, values in (0, 1).

Use: q_rot, k_rot = carope_rotate(q, k, f) when use_fused(q), which also runs a one-time self-check
against carope.rotate and, should the kernel fail it, warns once and answers False from then on.
carope_rotate is the custom op "carope::rotate_qk", so torch.compile sees one opaque op (with its
own backward op).
"""

import math
import os
import shutil
import sys
import sysconfig
import types
from contextlib import nullcontext

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: carope.py then uses the readable path
    triton = None
    tl = types.SimpleNamespace(constexpr=None)  # only so that the kernels' signatures below still parse

# Triton decides when it is imported, and when it wraps each kernel, whether kernels compile for
# the GPU or run in its interpreter on CPU tensors (TRITON_INTERPRET=1); read it the same way.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _jit(fn):
    return triton.jit(fn) if triton is not None else fn


# -----------------------------------------------------------------------------
# The kernels. Small @triton.jit helpers first: Triton inlines them into the kernels below.


@_jit
def _powers(f_ptr, sf_t, t, mask_t, i, mask):
    """f_t^i for a tile of tokens t and pairs i: (BLOCK_T, BLOCK_P), 0 in the padding (so it adds
    nothing to any sum), and log2 f_t: (BLOCK_T, 1). f_t^i = 2^(i log2 f_t): i = 0 gives exactly 1,
    the 1 rad step per token of pair 0."""
    log2f = tl.log2(tl.load(f_ptr + t * sf_t, mask=mask_t, other=1.0))[:, None]
    return tl.where(mask, tl.exp2(i[None, :] * log2f), 0.0), log2f


@_jit
def _add_exact(hi, lo, x):
    """hi + lo + x as a new unevaluated sum hi + lo (compensated summation): s = hi + x is rounded,
    and what the rounding lost, (hi - (s - x_seen)) + (x - x_seen), is kept in lo.

    A plain float32 carry of the running phase drifts: measured in the interpreter with f near 1, it
    ends 1.7e-3 rad from the exact phase after 4,500 tokens and 1.1e-2 after 16,384; this one stays
    within one float32 step (3.5e-4 and 6.8e-4 rad), as torch.cumsum on the CPU does."""
    s = hi + x
    x_seen = s - hi
    return s, lo + ((hi - (s - x_seen)) + (x - x_seen))


@_jit
def _rotate_tile(x_ptr, s_t, s_d, out_ptr, t, p, P, mask, cos, sin):
    """One tile of x (strides s_t, s_d) rotated into the contiguous out:
    [x1', x2'] = [x1 cos(phi) - x2 sin(phi), x1 sin(phi) + x2 cos(phi)]."""
    src = x_ptr + t[:, None] * s_t + p[None, :] * s_d
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + P * s_d, mask=mask, other=0.0).to(tl.float32)
    dst = out_ptr + t[:, None] * (2 * P) + p[None, :]
    tl.store(dst, (x1 * cos - x2 * sin).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + P, (x1 * sin + x2 * cos).to(out_ptr.dtype.element_ty), mask=mask)


@_jit
def _unrotate_tile(x_ptr, s_t, s_d, g_ptr, sg_t, sg_d, dx_ptr, t, p, P, mask, cos, sin):
    """The backward of _rotate_tile for one tile, g = dL/dy with y = rotate(x, phi):
    dL/dx = rotate(g, -phi) = [g1 cos + g2 sin, g2 cos - g1 sin], stored into the contiguous dx,
    and this tensor's share of dL/dphi, returned: G = g2 y1 - g1 y2."""
    src = x_ptr + t[:, None] * s_t + p[None, :] * s_d
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + P * s_d, mask=mask, other=0.0).to(tl.float32)
    src = g_ptr + t[:, None] * sg_t + p[None, :] * sg_d
    g1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    g2 = tl.load(src + P * sg_d, mask=mask, other=0.0).to(tl.float32)
    dst = dx_ptr + t[:, None] * (2 * P) + p[None, :]
    tl.store(dst, (g1 * cos + g2 * sin).to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + P, (g2 * cos - g1 * sin).to(dx_ptr.dtype.element_ty), mask=mask)
    return g2 * (x1 * cos - x2 * sin) - g1 * (x1 * sin + x2 * cos)


@_jit
def _rotate_fwd(q_ptr, k_ptr, f_ptr, qo_ptr, ko_ptr, T, H, P,
                sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sf_b, sf_t, sf_h,
                BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # one program per (b, h); int64 so offsets can't overflow
    b, h = pid // H, pid % H
    p = tl.arange(0, BLOCK_P)  # pair index i, padded to a power of two
    mask_p = p < P
    i = p.to(tl.float32)
    carry_hi = tl.zeros([BLOCK_P], dtype=tl.float32)  # the phase before this tile, as hi + lo (_add_exact)
    carry_lo = tl.zeros([BLOCK_P], dtype=tl.float32)
    out = pid * T * 2 * P  # this (b, h) in the contiguous (B, H, T, D) outputs
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mask_t = t < T
        mask = mask_t[:, None] & mask_p[None, :]
        powers, _ = _powers(f_ptr + b * sf_b + h * sf_h, sf_t, t, mask_t, i, mask)  # f_t^i
        local = tl.cumsum(powers, axis=0)  # sum_{t0<=t'<=t} f_t'^i, small numbers, accurate
        phase = carry_hi[None, :] + (carry_lo[None, :] + local)  # phi_i(t) = sum_{t'<=t} f_t'^i
        carry_hi, carry_lo = _add_exact(carry_hi, carry_lo, tl.sum(powers, axis=0))
        # On CUDA tl.cos / tl.sin are libdevice's cosf / sinf (checked in the PTX of triton 3.9),
        # accurate for phases of thousands of radians, not the hardware approximations.
        cos, sin = tl.cos(phase), tl.sin(phase)
        _rotate_tile(q_ptr + b * sq_b + h * sq_h, sq_t, sq_d, qo_ptr + out, t, p, P, mask, cos, sin)
        _rotate_tile(k_ptr + b * sk_b + h * sk_h, sk_t, sk_d, ko_ptr + out, t, p, P, mask, cos, sin)


@_jit
def _rotate_bwd(q_ptr, k_ptr, f_ptr, gq_ptr, gk_ptr, dq_ptr, dk_ptr, df_ptr, T, H, P,
                sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sf_b, sf_t, sf_h,
                sgq_b, sgq_h, sgq_t, sgq_d, sgk_b, sgk_h, sgk_t, sgk_d, sdf_b, sdf_t, sdf_h,
                BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    """Gradients of the rotation. With y = rotate(x, phi) and g = dL/dy:

    dL/dx            = rotate(g, -phi)                          (a rotation's inverse is its transpose)
    G_i(m)           = dL/dphi_i(m) = sum over q, k of g1 (-y2) + g2 y1
    dL/df_t          = sum_i i f_t^(i-1) sum_{m>=t} G_i(m)       (phi_i(m) sums f_t^i over t <= m)

    The inner sum runs over the future, so the tiles are visited from the last one back,
    carrying the suffix sum of G. The phase is needed on the way back too: a first light pass
    over f alone gives the total phase, and each tile's starting phase is the total minus the
    tiles after it, in the same compensated arithmetic as the forward pass.
    """
    pid = tl.program_id(0).to(tl.int64)
    b, h = pid // H, pid % H
    p = tl.arange(0, BLOCK_P)
    mask_p = p < P
    i = p.to(tl.float32)
    f_bh = f_ptr + b * sf_b + h * sf_h
    # Pass 1: the total phase sum_t f_t^i, as hi + lo, exactly as the forward carries it.
    carry_hi = tl.zeros([BLOCK_P], dtype=tl.float32)
    carry_lo = tl.zeros([BLOCK_P], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mask_t = t < T
        powers, _ = _powers(f_bh, sf_t, t, mask_t, i, mask_t[:, None] & mask_p[None, :])
        carry_hi, carry_lo = _add_exact(carry_hi, carry_lo, tl.sum(powers, axis=0))
    # Pass 2: tiles from last to first.
    g_after = tl.zeros([BLOCK_P], dtype=tl.float32)  # sum_{m after this tile} G_i(m)
    n_tiles = tl.cdiv(T, BLOCK_T)
    out = pid * T * 2 * P  # this (b, h) in the contiguous (B, H, T, D) dq, dk
    for back in range(0, n_tiles):
        t = (n_tiles - 1 - back) * BLOCK_T + tl.arange(0, BLOCK_T)
        mask_t = t < T
        mask = mask_t[:, None] & mask_p[None, :]
        powers, log2f = _powers(f_bh, sf_t, t, mask_t, i, mask)  # f_t^i
        # the phase before this tile: carry minus this tile's sum, as exactly as the forward added it
        carry_hi, carry_lo = _add_exact(carry_hi, carry_lo, -tl.sum(powers, axis=0))
        phase = carry_hi[None, :] + (carry_lo[None, :] + tl.cumsum(powers, axis=0))
        cos, sin = tl.cos(phase), tl.sin(phase)
        G = _unrotate_tile(q_ptr + b * sq_b + h * sq_h, sq_t, sq_d, gq_ptr + b * sgq_b + h * sgq_h, sgq_t, sgq_d,
                           dq_ptr + out, t, p, P, mask, cos, sin)  # dL/dphi from q: (BLOCK_T, BLOCK_P)
        G += _unrotate_tile(k_ptr + b * sk_b + h * sk_h, sk_t, sk_d, gk_ptr + b * sgk_b + h * sgk_h, sgk_t, sgk_d,
                            dk_ptr + out, t, p, P, mask, cos, sin)  # + dL/dphi from k
        # S_i(t) = sum_{m>=t} G_i(m): reverse cumsum within the tile, plus what came after it
        suffix = tl.cumsum(G, axis=0, reverse=True) + g_after[None, :]
        g_after += tl.sum(G, axis=0)
        # d f_t^i / d f_t = i f_t^(i-1); pair 0 (f^0 = 1) contributes nothing, and is kept out
        # of 2^((i-1) log2 f) = 1/f, which would only be multiplied by 0.
        dpow = tl.where(mask & (p[None, :] > 0), i[None, :] * tl.exp2((i[None, :] - 1.0) * log2f), 0.0)
        tl.store(df_ptr + b * sdf_b + t * sdf_t + h * sdf_h, tl.sum(dpow * suffix, axis=1), mask=mask_t)


def _tiles(P):
    """(BLOCK_T, BLOCK_P, num_warps). BLOCK_P = P rounded up to a power of two (tl.arange needs one,
    the rest is masked). The backward keeps several (BLOCK_T, BLOCK_P) float32 tiles live at once
    (x, g, cos, sin, G), so the tile is sized by registers, as ptxas reports them for sm_90a
    (python -m dev.gpu_check --registers, no GPU needed): with 8 tile elements a thread (1024 numbers on
    4 warps) the backward is spill-free for D = 16 .. 256, float32 and bf16, at 128-192 registers a
    thread with Triton 3.9 and 189-202 with 3.7.1 (D = 32, 64, 128); with 16 (D = 64 with 64 tokens on
    4 warps, the choice before) it hits the 255 cap and spills. Chosen for registers only: no speed
    has been measured on a GPU."""
    block_p = triton.next_power_of_2(P)
    block_t = max(16, min(64, 1024 // block_p))
    return block_t, block_p, max(4, min(16, block_t * block_p // 256))


def phase_error_bound(phi_max, device):
    """How far (radians) the kernels' phases may be from the exact ones, phases up to phi_max > 0 (each
    term f^i <= 1); the long-phase tests hold the kernels to it. Error analysis, with ulp the float32
    spacing at phi_max and u = 2^-24 float32's unit roundoff (ulp(x) <= 2u x):
      - 1.25 ulp: the phase is a float32 (0.5 ulp) and the compensated running sum (_add_exact) rounds
        its last additions; terms rounded to nearest (numpy's exp2 in the interpreter) err by <= u f^i
        each with random signs, which cancel. Measured in the interpreter on the long-phase test's
        input (T = 4,500, phases to 4,500 rad): 0.68 ulp forward and backward; 1.8 (forward) and
        2.5 (backward) ulp without the compensation.
      - On CUDA, tl.exp2 is the hardware ex2.approx.ftz.f32, good to 2 ulp (CUDA C++ Programming
        Guide, exp2f) = 4u f^i, with no known sign pattern: in the worst case all T terms err the same
        way, adding 4u sum_t f_t^i <= 4u phi_max (2.2 ulp at phi_max = 4,500).
    """
    ulp = 2.0 ** (math.floor(math.log2(phi_max)) - 23)
    worst_exp2 = 4 * 2.0 ** -24 * phi_max if torch.device(device).type == "cuda" else 0.0
    return 1.25 * ulp + worst_exp2


def fused_available(t):
    """True when the fused kernels can run on t: triton imports and t is on a CUDA device,
    or the Triton interpreter is on (TRITON_INTERPRET=1) and t is on the CPU."""
    if triton is None:
        return False
    return t.is_cuda or (t.device.type == "cpu" and INTERPRET)


def _on_device(t):
    """Triton launches on torch.cuda.current_device(), which is GPU 0 unless someone called set_device:
    make it t's GPU for the launch (cuda:1 in bench.py or sample.py), so the kernel runs where t lives."""
    return torch.cuda.device(t.device) if t.is_cuda else nullcontext()


# -----------------------------------------------------------------------------
# The custom ops: torch.compile and autograd see one op each way.


@torch.library.custom_op("carope::rotate_qk", mutates_args=())
def rotate_qk(q: torch.Tensor, k: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, T, D = q.shape
    P = D // 2
    qo = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
    ko = torch.empty((B, H, T, D), dtype=k.dtype, device=k.device)
    if q.numel() == 0:
        return qo, ko
    block_t, block_p, warps = _tiles(P)
    with _on_device(q):
        _rotate_fwd[(B * H,)](q, k, f, qo, ko, T, H, P, *q.stride(), *k.stride(), *f.stride(),
                              BLOCK_T=block_t, BLOCK_P=block_p, num_warps=warps)
    return qo, ko


@rotate_qk.register_fake
def _(q, k, f):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)


@torch.library.custom_op("carope::rotate_qk_backward", mutates_args=())
def rotate_qk_backward(q: torch.Tensor, k: torch.Tensor, f: torch.Tensor, gq: torch.Tensor,
                       gk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, T, D = q.shape
    P = D // 2
    dq = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, H, T, D), dtype=k.dtype, device=k.device)
    df = torch.empty((B, T, H), dtype=torch.float32, device=f.device)  # every entry is written
    if q.numel() == 0:
        return dq, dk, df.zero_()
    block_t, block_p, warps = _tiles(P)
    with _on_device(q):
        _rotate_bwd[(B * H,)](q, k, f, gq, gk, dq, dk, df, T, H, P, *q.stride(), *k.stride(), *f.stride(),
                              *gq.stride(), *gk.stride(), *df.stride(), BLOCK_T=block_t, BLOCK_P=block_p,
                              num_warps=warps)
    return dq, dk, df


@rotate_qk_backward.register_fake
def _(q, k, f, gq, gk):
    B, H, T, D = q.shape
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty((B, T, H), dtype=torch.float32, device=f.device))


def _setup_context(ctx, inputs, output):
    q, k, f = inputs
    ctx.save_for_backward(q, k, f)  # nothing of size (B, H, T, P): the phase is recomputed


def _backward(ctx, gq, gk):
    q, k, f = ctx.saved_tensors
    gq = torch.zeros_like(q) if gq is None else gq
    gk = torch.zeros_like(k) if gk is None else gk
    return rotate_qk_backward(q, k, f, gq, gk)


rotate_qk.register_autograd(_backward, setup_context=_setup_context)


def carope_rotate(q, k, f):
    """Rotate q and k by CARoPE's phase phi_i(m) = sum_{t<=m} f_t^i, in one fused pass.

    q, k: (B, H, T, D), any strides, any float dtype (the arithmetic is float32, the results
    have q's and k's dtype and are contiguous); f: (B, T, H), the per-token, per-head base
    f(x_t)_h in (0, 1). Equal to carope.rotate(q, cos, sin), carope.rotate(k, cos, sin) with
    cos, sin of that phase, and differentiable in q, k and f.
    """
    assert q.shape == k.shape and q.dim() == 4 and q.size(-1) % 2 == 0, "q, k: (B, H, T, D), D even"
    B, H, T, D = q.shape
    assert f.shape == (B, T, H), f"f must be (B, T, H) = {(B, T, H)}, got {tuple(f.shape)}"
    return rotate_qk(q, k, f.float())


# -----------------------------------------------------------------------------
# Failing safely: the kernel checks itself once before the model trusts it.

_verdicts = {}  # (device, head size, dtype) -> None if the kernel agreed with the reference, else why not


def launcher_tools_missing():
    """What Triton needs at run time to build its CUDA launcher (a C compiler, Python's headers) and
    this machine lacks, in words; None if it has both."""
    lacks = []
    if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
        lacks.append("a C compiler (install gcc, or set CC)")
    include = sysconfig.get_paths()["include"]
    if not os.path.isfile(os.path.join(include, "Python.h")):
        v = sys.version_info
        lacks.append(f"Python's headers (no Python.h in {include}: install python{v.major}.{v.minor}-dev)")
    if not lacks:
        return None
    return "Triton builds its launcher with a C compiler and Python's headers, and this machine lacks " + " and ".join(lacks)


def reference_rotate(x, cos, sin):
    """The rotation the kernel must match, in plain PyTorch: pair i = dims (i, i + P) turned by the phase
    whose cos and sin are given, in float32. It is carope.rotate (tests/test_carope_triton.py checks
    that the two agree exactly); it lives here so that this file does not import the model."""
    x1, x2 = x[..., : x.size(-1) // 2].float(), x[..., x.size(-1) // 2:].float()
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def self_check(device, head_dim, dtype=torch.float32):
    """Why the fused kernel cannot be trusted on `device` for heads of size head_dim and q, k of dtype;
    None if it can. Forward and backward on a small input (two tiles, the second partial; q, k strided
    as the model makes them) against reference_rotate (= carope.rotate) with the same phases, within the tests' tolerances:
    1e-4 of the values' scale for float32 results, one bf16 step (2^-7) for 16-bit q, k and their
    gradients. Any exception is a failure too, and is named."""
    device = torch.device(device)
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            B, H, T, P = 2, 2, _tiles(head_dim // 2)[0] + 7, head_dim // 2
            g = torch.Generator().manual_seed(0)
            q, k = (torch.randn(B, T, H, head_dim, generator=g).to(device, dtype).transpose(1, 2).requires_grad_()
                    for _ in range(2))  # (B, H, T, D), strided like the model's q, k
            f = (0.05 + 0.9 * torch.rand(B, T, H, generator=g)).to(device).requires_grad_()  # (B, T, H)
            wq, wk = (torch.randn(B, H, T, head_dim, generator=g).to(device, dtype) for _ in range(2))
            phase = torch.cumsum(f.unsqueeze(-1) ** torch.arange(P, dtype=torch.float32, device=device), dim=1).transpose(1, 2)
            cos, sin = phase.cos(), phase.sin()  # phi_i(m) = sum_{t<=m} f_t^i: (B, H, T, P)
            expected = reference_rotate(q, cos, sin), reference_rotate(k, cos, sin)
            got = carope_rotate(q, k, f)
            expected += torch.autograd.grad(expected, (q, k, f), (wq, wk))
            got += torch.autograd.grad(got, (q, k, f), (wq, wk))
        rel = 1e-4 if dtype == torch.float32 else 2 ** -7
        for name, a, e in zip(("q_rot", "k_rot", "dq", "dk", "df"), got, expected):
            scale = e.float().abs().max().item()
            err = (a.float() - e.float()).abs().max().item()
            if a.shape != e.shape or not err <= (1e-4 if name == "df" else rel) * scale:  # NaN fails too
                return f"{name} differs from the reference by {err:.3g} (scale {scale:.3g})"
    except Exception as e:  # a compiler, a launcher or the kernel itself: all mean "don't use it"
        lines = str(e).strip().splitlines()
        why = f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
        missing = launcher_tools_missing() if device.type == "cuda" else None
        return f"{why}; {missing}" if missing else why
    return None


@torch.compiler.assume_constant_result  # torch.compile runs it while tracing and keeps the answer
def _trusted(device, head_dim, dtype):
    key = (device, head_dim, dtype)
    if key not in _verdicts:
        _verdicts[key] = why = self_check(device, head_dim, getattr(torch, dtype))
        if why is not None:
            print(f"warning: the fused CARoPE kernel failed its self-check on {device} (head size {head_dim}, "
                  f"{dtype}): {why}. Using the reference rotation for the rest of this run.",
                  file=sys.stderr, flush=True)
    return _verdicts[key] is None


def use_fused(q):
    """True when carope_rotate can rotate q: fused_available(q), and the kernel passed self_check for q's
    device, head size and dtype. The first call for a kind of q runs the check; a failure prints one
    warning line, and the answer stays False for the rest of the process (the reference path is used)."""
    return fused_available(q) and _trusted(str(q.device), int(q.size(-1)), str(q.dtype).removeprefix("torch."))
