"""Tests of carope_triton.py: the fused kernels against the readable reference in carope.py.

With a CUDA device they run the compiled kernels. Without one they run in Triton's interpreter
on the CPU, which needs TRITON_INTERPRET=1 set before triton is first imported (triton.jit
reads it when it wraps a kernel, its own library functions included). pytest imports other
test files (and through them torch, carope, maybe triton) first, and a TRITON_INTERPRET=1 set
here would leak into their models, so this file then runs itself again in a fresh Python with
the variable set: the one test test_in_triton_interpreter, which reports the child's failures.
`TRITON_INTERPRET=1 python -m pytest tests/test_carope_triton.py` runs the tests directly.
"""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from carope import CARoPE, GPTConfig, rotate  # noqa: E402
from carope_triton import carope_rotate, fused_available  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
RUN_HERE = INTERPRETED or DEVICE == "cuda"
here = pytest.mark.skipif(not RUN_HERE, reason="run by test_in_triton_interpreter, in a child process")


@pytest.mark.skipif(RUN_HERE, reason="the tests run in this process")
def test_in_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__)],
                           env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-2000:]
    assert " passed" in child.stdout, child.stdout[-2000:]


def reference(q, k, f, dtype=torch.float32):
    """carope.py's maths step by step: f^i, cumulative sum over time, cos/sin, rotate."""
    P = q.size(-1) // 2
    i = torch.arange(P, dtype=dtype, device=q.device)
    phase = torch.cumsum(f.to(dtype).unsqueeze(-1) ** i, dim=1).transpose(1, 2)  # (B, H, T, P)
    cos, sin = phase.cos(), phase.sin()
    return rotate(q, cos, sin), rotate(k, cos, sin)


def qkf(B, H, T, D, dtype=torch.float32, f_low=0.05, f_high=0.95, seed=0):
    """q, k as the model makes them (a view + transpose of one (B, T, 3C) tensor, so not
    contiguous) and f in (f_low, f_high); qkv and f's base are leaves that require grad."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3 * H * D, generator=g).to(DEVICE, dtype).requires_grad_()
    q, k, _ = qkv.split(H * D, dim=2)
    q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D), strides of the model's q
    k = k.view(B, T, H, D).transpose(1, 2)
    f = (f_low + (f_high - f_low) * torch.rand(B, H, T, generator=g)).to(DEVICE).requires_grad_()
    return qkv, q, k, f.transpose(1, 2)  # (B, T, H), not contiguous either: the kernels read strides


def grads(outputs, inputs, seed=1):
    """d(sum of outputs * fixed random weights) / d inputs."""
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in outputs]
    return torch.autograd.grad(outputs, inputs, weights)


def assert_close(actual, expected, rel):
    """|actual - expected| <= rel * max|expected|: a tolerance relative to the values' scale."""
    scale = expected.detach().float().abs().max().item()
    err = (actual.detach().float() - expected.detach().float()).abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel:g} x scale {scale:.3g}"


# Phases here stay below T <= 150 rad, where float32 spacing is <= 1.6e-5: the two ways of
# summing agree to a few of those, far inside 1e-4 of the values' scale.
SHAPES = [
    (2, 3, 1, 32),  # one token
    (2, 2, 150, 32),  # T not a multiple of the tile (64 tokens): three tiles, the last partial
    (1, 4, 70, 16),  # the smallest head
    (2, 2, 100, 64),  # gpt-tiny / gpt-small head size: tiles of 32 tokens
    (1, 2, 90, 24),  # P = 12, not a power of two: padded to 16 and masked
    (1, 1, 40, 48),  # P = 24
]


@here
@pytest.mark.parametrize("B, H, T, D", SHAPES)
def test_matches_reference_float32(B, H, T, D):
    qkv, q, k, f = qkf(B, H, T, D)
    fused, ref = carope_rotate(q, k, f), reference(q, k, f)
    for a, r in zip(fused, ref):
        assert a.shape == r.shape and a.dtype == r.dtype
        assert_close(a, r, 1e-4)
    for a, r in zip(grads(fused, (qkv, f)), grads(ref, (qkv, f))):  # d/dqkv holds dq and dk
        assert_close(a, r, 1e-4)


@here
def test_matches_reference_bfloat16():
    """bf16 q, k: both sides rotate in float32 and convert once to bf16, so they differ by at
    most one bf16 step (2^-7 of the value). On a GPU both round to nearest and differ only
    where a float32 difference of ~1e-6 tips a rounding, rarely. Triton 3.9's interpreter
    truncates instead, so on the CPU about half the values are one step apart."""
    qkv, q, k, f = qkf(2, 2, 100, 32, dtype=torch.bfloat16)
    fused, ref = carope_rotate(q, k, f), reference(q, k, f)
    for a, r in zip(fused, ref):
        assert a.dtype == torch.bfloat16
        assert_close(a, r, 2 ** -7)
        if DEVICE == "cuda":
            assert (a.float() - r.float()).abs().gt(1e-6).float().mean() < 0.01
    (dqkv_a, df_a), (dqkv_r, df_r) = grads(fused, (qkv, f)), grads(ref, (qkv, f))
    assert dqkv_a.dtype == torch.bfloat16
    assert_close(dqkv_a, dqkv_r, 2 ** -7)
    assert_close(df_a, df_r, 1e-4)  # df is float32 throughout, from the same bf16 inputs


@here
def test_long_phases_as_accurate_as_reference():
    """T = 4500 with f near 1: phases reach ~4,490 rad, where float32 numbers are 4.9e-4 apart
    (one ulp), so no float32 phase is closer to the exact one than half of that; torch.cumsum
    on the CPU gets there. The fused running sum, carried from tile to tile with compensation,
    must stay within 1.25 ulp of the exact (float64) phase in the forward and in the backward
    (which rebuilds it from the end); without the compensation it is 1.8 (forward) or 2.5 (backward) ulp off and fails.
    q's pairs are (1, 0), so q_rot = (cos phi, sin phi) and dq = rotate(w, -phi) for w = (1, 0)
    show the kernels' phases directly."""
    B, H, T, D = 1, 1, 4500, 16
    P = D // 2
    _, _, k, f = qkf(B, H, T, D, f_low=0.98, f_high=0.9999)
    q = torch.cat((torch.ones(B, H, T, P), torch.zeros(B, H, T, P)), dim=-1).to(DEVICE).requires_grad_()
    i = torch.arange(P, dtype=torch.float64, device=DEVICE)
    exact = torch.cumsum(f.detach().double().unsqueeze(-1) ** i, dim=1).transpose(1, 2)  # (B, H, T, P)
    ulp = 2.0 ** (math.floor(math.log2(exact.max().item())) - 23)  # float32 spacing at the largest phase

    def phase_error(c, s):  # |angle of (c, s) - exact phase|, modulo 2 pi
        d = torch.atan2(s.double(), c.double()) - exact
        return (torch.remainder(d + math.pi, 2 * math.pi) - math.pi).abs().max().item()

    q_rot, k_rot = carope_rotate(q, k, f)
    assert phase_error(q_rot[..., :P], q_rot[..., P:]) <= 1.25 * ulp
    w_q, w_k = q.detach(), torch.randn(k.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    dq, dk, df = torch.autograd.grad((q_rot, k_rot), (q, k, f), (w_q, w_k))
    assert phase_error(dq[..., :P], -dq[..., P:]) <= 1.25 * ulp  # dq = (cos phi, -sin phi)
    # dk and df against the reference, judged by their distance to a float64 computation
    ref = torch.autograd.grad(reference(q, k, f), (k, f), (w_q, w_k))
    exact_grads = torch.autograd.grad(reference(q, k, f, torch.float64), (k, f), (w_q, w_k))
    for a, r, e in zip((dk, df), ref, exact_grads):
        scale = e.abs().max().item()
        err_fused, err_ref = (a.double() - e).abs().max().item(), (r.double() - e).abs().max().item()
        assert err_fused <= 2 * err_ref + ulp * scale, (err_fused, err_ref)


@here
def test_through_carope_parameters():
    """The model's use: f from CARoPE's W and b on the layer input x, then the fused rotation.
    Gradients reach x, W and b through f exactly as through CARoPE's own cos/sin."""
    config = GPTConfig(n_head=3, n_embd=48, pe="carope")  # D = 16
    rotary = CARoPE(config).to(DEVICE)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        rotary.weight.copy_(0.5 * torch.randn(rotary.weight.shape, generator=g))  # away from the RoPE init
    B, T, H, D = 2, 80, config.n_head, config.head_dim
    x = torch.randn(B, T, config.n_embd, generator=g).to(DEVICE).requires_grad_()
    qkv, q, k, _ = qkf(B, H, T, D, seed=3)
    if hasattr(rotary, "frequencies"):
        f = rotary.frequencies(x)
    else:  # f(x_t)_h = 1 / (softplus(x_t W + b)_h + 1), as CARoPE.forward computes it
        f = 1.0 / (F.softplus(F.linear(x, rotary.weight, rotary.bias)) + 1.0)
    fused = carope_rotate(q, k, f)
    cos, sin = rotary(x)
    ref = rotate(q, cos, sin), rotate(k, cos, sin)
    for a, r in zip(fused, ref):
        assert_close(a, r, 1e-4)
    wrt = (qkv, x, rotary.weight, rotary.bias)
    for a, r in zip(grads(fused, wrt), grads(ref, wrt)):
        assert_close(a, r, 1e-4)


@here
def test_one_output_used():
    """A loss on q alone: dk is zero and df comes from q's rotation alone."""
    qkv, q, k, f = qkf(1, 2, 70, 32)
    (a, _), (r, _) = carope_rotate(q, k, f), reference(q, k, f)
    for x, y in zip(grads([a], (qkv, f)), grads([r], (qkv, f))):
        assert_close(x, y, 1e-4)


@here
def test_saves_only_inputs_for_backward():
    """Nothing of the phase's size (B, H, T, P) is kept between forward and backward."""
    _, q, k, f = qkf(2, 2, 50, 32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        carope_rotate(q, k, f)
    assert sorted(saved) == sorted([tuple(q.shape), tuple(k.shape), tuple(f.shape)])


@here
def test_custom_op_registration():
    """torch.library.opcheck: schema, fake (meta) implementation and autograd registration agree
    with the real op, as torch.compile needs them to."""
    _, q, k, f = qkf(1, 2, 20, 16)
    q, k, f = (x.detach().contiguous().requires_grad_() for x in (q, k, f))
    torch.library.opcheck(torch.ops.carope.rotate_qk.default, (q, k, f))
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    torch.library.opcheck(torch.ops.carope.rotate_qk_backward.default, (q.detach(), k.detach(), f.detach(), gq, gk))


def test_fused_available():
    if DEVICE == "cuda":
        assert fused_available(torch.zeros(1, device="cuda"))
    assert fused_available(torch.zeros(1)) == INTERPRETED  # CPU tensors: only in the interpreter


@here
def test_model_with_fused_carope_equals_the_readable_model():
    """GPT(fused_carope=True) takes the kernel in every layer and gives the readable model's loss and gradients."""
    from carope import GPT
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, pe="carope")
    fused, plain = GPT(GPTConfig(**cfg, fused_carope=True)).to(DEVICE), GPT(GPTConfig(**cfg, fused_carope=False)).to(DEVICE)
    for block in fused.transformer.h:  # W = 0 would make f the same for every token: give it input dependence
        torch.nn.init.normal_(block.attn.rotary.weight, std=0.5)
    plain.load_state_dict(fused.state_dict())
    calls = []
    import carope
    real = carope.carope_rotate
    carope.carope_rotate = lambda *a: calls.append(1) or real(*a)
    try:
        idx = torch.randint(0, 64, (2, 40), device=DEVICE)  # past block_size too
        _, loss_fused = fused(idx[:, :-1], idx[:, 1:])
        loss_fused.backward()
    finally:
        carope.carope_rotate = real
    _, loss_plain = plain(idx[:, :-1], idx[:, 1:])
    loss_plain.backward()
    assert len(calls) == 2  # one fused call per layer
    assert abs(loss_fused.item() - loss_plain.item()) < 1e-5
    for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-6), name  # W and b of every layer included
