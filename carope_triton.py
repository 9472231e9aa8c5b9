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

Use: q_rot, k_rot = carope_rotate(q, k, f) when fused_available(q). It is the custom op
"carope::rotate_qk", so torch.compile sees one opaque op (with its own backward op).
"""

import os
import types

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
# The kernels


@_jit
def _rotate_fwd(q_ptr, k_ptr, f_ptr, qo_ptr, ko_ptr, T, H, P,
                sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sf_b, sf_t, sf_h,
                BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # one program per (b, h); int64 so offsets can't overflow
    b, h = pid // H, pid % H
    p = tl.arange(0, BLOCK_P)  # pair index i, padded to a power of two
    mask_p = p < P
    i = p.to(tl.float32)
    # The phase carried from tile to tile, as an unevaluated sum hi + lo (compensated
    # summation). A plain float32 carry drifts: measured in the interpreter with f near 1, it
    # ends 1.7e-3 rad from the exact phase after 4,500 tokens and 1.1e-2 after 16,384; this one
    # stays within one float32 step (3.5e-4 and 6.8e-4 rad), as torch.cumsum on the CPU does.
    carry_hi = tl.zeros([BLOCK_P], dtype=tl.float32)
    carry_lo = tl.zeros([BLOCK_P], dtype=tl.float32)
    out_base = pid * T * 2 * P  # the outputs are contiguous (B, H, T, D)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mask_t = t < T
        mask = mask_t[:, None] & mask_p[None, :]
        fv = tl.load(f_ptr + b * sf_b + t * sf_t + h * sf_h, mask=mask_t, other=1.0)  # f_t: (BLOCK_T,)
        # f_t^i = 2^(i log2 f_t): (BLOCK_T, BLOCK_P); i = 0 gives 2^0 = 1 exactly, a 1 rad step per token
        powers = tl.exp2(i[None, :] * tl.log2(fv)[:, None])
        powers = tl.where(mask, powers, 0.0)  # padding adds nothing to the running sums
        local = tl.cumsum(powers, axis=0)  # sum_{t0<=t'<=t} f_t'^i, small numbers, accurate
        phase = carry_hi[None, :] + (carry_lo[None, :] + local)  # phi_i(t) = sum_{t'<=t} f_t'^i
        # carry += sum of this tile, error-free: s = hi + x rounded, (hi - s) + x exactly recovered
        tile_sum = tl.sum(powers, axis=0)
        s = carry_hi + tile_sum
        x_seen = s - carry_hi
        carry_lo += (carry_hi - (s - x_seen)) + (tile_sum - x_seen)
        carry_hi = s
        # On CUDA tl.cos / tl.sin are libdevice's cosf / sinf (checked in the PTX of triton 3.9),
        # accurate for phases of thousands of radians, not the hardware approximations.
        cos, sin = tl.cos(phase), tl.sin(phase)
        tp = t[:, None] * (2 * P) + p[None, :]  # offset of x1 in the contiguous outputs
        # q and k: [x1', x2'] = [x1 cos(phi) - x2 sin(phi), x1 sin(phi) + x2 cos(phi)]
        src1 = q_ptr + b * sq_b + h * sq_h + t[:, None] * sq_t + p[None, :] * sq_d
        x1 = tl.load(src1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src1 + P * sq_d, mask=mask, other=0.0).to(tl.float32)
        tl.store(qo_ptr + out_base + tp, (x1 * cos - x2 * sin).to(qo_ptr.dtype.element_ty), mask=mask)
        tl.store(qo_ptr + out_base + tp + P, (x1 * sin + x2 * cos).to(qo_ptr.dtype.element_ty), mask=mask)
        src1 = k_ptr + b * sk_b + h * sk_h + t[:, None] * sk_t + p[None, :] * sk_d
        x1 = tl.load(src1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src1 + P * sk_d, mask=mask, other=0.0).to(tl.float32)
        tl.store(ko_ptr + out_base + tp, (x1 * cos - x2 * sin).to(ko_ptr.dtype.element_ty), mask=mask)
        tl.store(ko_ptr + out_base + tp + P, (x1 * sin + x2 * cos).to(ko_ptr.dtype.element_ty), mask=mask)


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
    # Pass 1: the total phase sum_t f_t^i, as hi + lo, exactly as the forward carries it.
    carry_hi = tl.zeros([BLOCK_P], dtype=tl.float32)
    carry_lo = tl.zeros([BLOCK_P], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mask_t = t < T
        fv = tl.load(f_ptr + b * sf_b + t * sf_t + h * sf_h, mask=mask_t, other=1.0)
        powers = tl.exp2(i[None, :] * tl.log2(fv)[:, None])
        powers = tl.where(mask_t[:, None] & mask_p[None, :], powers, 0.0)
        tile_sum = tl.sum(powers, axis=0)
        s = carry_hi + tile_sum
        x_seen = s - carry_hi
        carry_lo += (carry_hi - (s - x_seen)) + (tile_sum - x_seen)
        carry_hi = s
    # Pass 2: tiles from last to first.
    g_after = tl.zeros([BLOCK_P], dtype=tl.float32)  # sum_{m after this tile} G_i(m)
    n_tiles = tl.cdiv(T, BLOCK_T)
    out_base = pid * T * 2 * P  # dq, dk are contiguous (B, H, T, D)
    for back in range(0, n_tiles):
        t = (n_tiles - 1 - back) * BLOCK_T + tl.arange(0, BLOCK_T)
        mask_t = t < T
        mask = mask_t[:, None] & mask_p[None, :]
        fv = tl.load(f_ptr + b * sf_b + t * sf_t + h * sf_h, mask=mask_t, other=1.0)
        log2f = tl.log2(fv)[:, None]
        powers = tl.exp2(i[None, :] * log2f)  # f_t^i
        powers = tl.where(mask, powers, 0.0)
        # carry -= sum of this tile (error-free, as in the forward): the phase before the tile
        tile_sum = tl.sum(powers, axis=0)
        s = carry_hi - tile_sum
        x_seen = carry_hi - s
        carry_lo += (carry_hi - (s + x_seen)) + (x_seen - tile_sum)
        carry_hi = s
        phase = carry_hi[None, :] + (carry_lo[None, :] + tl.cumsum(powers, axis=0))
        cos, sin = tl.cos(phase), tl.sin(phase)
        tp = t[:, None] * (2 * P) + p[None, :]
        # q: dx = rotate(g, -phi) = [g1 cos + g2 sin, -g1 sin + g2 cos]; G = g2 y1 - g1 y2
        src1 = q_ptr + b * sq_b + h * sq_h + t[:, None] * sq_t + p[None, :] * sq_d
        x1 = tl.load(src1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src1 + P * sq_d, mask=mask, other=0.0).to(tl.float32)
        src1 = gq_ptr + b * sgq_b + h * sgq_h + t[:, None] * sgq_t + p[None, :] * sgq_d
        g1 = tl.load(src1, mask=mask, other=0.0).to(tl.float32)
        g2 = tl.load(src1 + P * sgq_d, mask=mask, other=0.0).to(tl.float32)
        tl.store(dq_ptr + out_base + tp, (g1 * cos + g2 * sin).to(dq_ptr.dtype.element_ty), mask=mask)
        tl.store(dq_ptr + out_base + tp + P, (g2 * cos - g1 * sin).to(dq_ptr.dtype.element_ty), mask=mask)
        G = g2 * (x1 * cos - x2 * sin) - g1 * (x1 * sin + x2 * cos)  # dL/dphi from q: (BLOCK_T, BLOCK_P)
        # k, the same way
        src1 = k_ptr + b * sk_b + h * sk_h + t[:, None] * sk_t + p[None, :] * sk_d
        x1 = tl.load(src1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src1 + P * sk_d, mask=mask, other=0.0).to(tl.float32)
        src1 = gk_ptr + b * sgk_b + h * sgk_h + t[:, None] * sgk_t + p[None, :] * sgk_d
        g1 = tl.load(src1, mask=mask, other=0.0).to(tl.float32)
        g2 = tl.load(src1 + P * sgk_d, mask=mask, other=0.0).to(tl.float32)
        tl.store(dk_ptr + out_base + tp, (g1 * cos + g2 * sin).to(dk_ptr.dtype.element_ty), mask=mask)
        tl.store(dk_ptr + out_base + tp + P, (g2 * cos - g1 * sin).to(dk_ptr.dtype.element_ty), mask=mask)
        G += g2 * (x1 * cos - x2 * sin) - g1 * (x1 * sin + x2 * cos)  # + dL/dphi from k
        # S_i(t) = sum_{m>=t} G_i(m): reverse cumsum within the tile, plus what came after it
        suffix = tl.cumsum(G, axis=0, reverse=True) + g_after[None, :]
        g_after += tl.sum(G, axis=0)
        # d f_t^i / d f_t = i f_t^(i-1); pair 0 (f^0 = 1) contributes nothing, and is kept out
        # of 2^((i-1) log2 f) = 1/f, which would only be multiplied by 0.
        dpow = tl.where(mask & (p[None, :] > 0), i[None, :] * tl.exp2((i[None, :] - 1.0) * log2f), 0.0)
        tl.store(df_ptr + b * sdf_b + t * sdf_t + h * sdf_h, tl.sum(dpow * suffix, axis=1), mask=mask_t)


def _tiles(P):
    """BLOCK_P = P rounded up to a power of two (tl.arange needs one, the rest is masked);
    BLOCK_T so that one (BLOCK_T, BLOCK_P) float32 tile is at most 2048 numbers, since the
    backward keeps several such tiles live at once (x, g, cos, sin, G). Not tuned on a GPU."""
    block_p = triton.next_power_of_2(P)
    return max(16, min(64, 2048 // block_p)), block_p


def fused_available(t):
    """True when the fused kernels can run on t: triton imports and t is on a CUDA device,
    or the Triton interpreter is on (TRITON_INTERPRET=1) and t is on the CPU."""
    if triton is None:
        return False
    return t.is_cuda or (t.device.type == "cpu" and INTERPRET)


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
    block_t, block_p = _tiles(P)
    _rotate_fwd[(B * H,)](q, k, f, qo, ko, T, H, P, *q.stride(), *k.stride(), *f.stride(),
                          BLOCK_T=block_t, BLOCK_P=block_p)
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
    block_t, block_p = _tiles(P)
    _rotate_bwd[(B * H,)](q, k, f, gq, gk, dq, dk, df, T, H, P, *q.stride(), *k.stride(), *f.stride(),
                          *gq.stride(), *gk.stride(), *df.stride(), BLOCK_T=block_t, BLOCK_P=block_p)
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
