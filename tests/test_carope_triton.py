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
import types

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from support import carope_triton  # noqa: E402
from carope import GPT, CARoPE, GPTConfig, rotate  # noqa: E402
from support.carope_triton import carope_rotate, fused_available, phase_error_bound, self_check, use_fused  # noqa: E402

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


def test_the_kernels_reference_is_the_models_rotation():
    """self_check compares the kernel with reference_rotate, the kernel file's own copy of carope.rotate
    (so that the kernel does not import the model); the two must agree bit for bit, bf16 included."""
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 3, 5, 8, generator=g).to(dtype)
        phase = 100 * torch.randn(2, 3, 5, 4, generator=g)
        assert torch.equal(carope_triton.reference_rotate(x, phase.cos(), phase.sin()), rotate(x, phase.cos(), phase.sin()))


def test_the_kernel_does_not_import_the_model():
    """No import circle, not even a lazy one: carope.py imports the kernel, never the reverse."""
    src = open(carope_triton.__file__).read()
    assert "import carope\n" not in src and "from carope import" not in src
    child = subprocess.run([sys.executable, "-c", "import sys; import support.carope_triton; "
                            "assert 'carope' not in sys.modules, 'the kernel imported carope'"],
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True, text=True)
    assert child.returncode == 0, child.stderr


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
    """T = 4500 with f near 1: phases reach 4,500 rad (pair 0 turns 1 rad a token), where float32
    numbers are 4.9e-4 apart (one ulp), so no float32 phase is closer to the exact one than half of that; torch.cumsum
    on the CPU gets there. The fused running sum, carried from tile to tile with compensation,
    must stay within phase_error_bound of the exact (float64) phase in the forward and in the
    backward (which rebuilds it from the end). Its error analysis (carope_triton.phase_error_bound):
    1.25 ulp where each f^i is rounded to nearest (the interpreter, numpy's exp2); on CUDA
    tl.exp2 is the hardware's ex2.approx (2 ulp), whose errors may all lean one way, so the
    bound adds their worst case, 4 * 2^-24 * max phase (2.2 ulp here). Without the compensation
    the interpreter's error is 1.8 (forward) or 2.5 (backward) ulp and fails the 1.25.
    q's pairs are (1, 0), so q_rot = (cos phi, sin phi) and dq = rotate(w, -phi) for w = (1, 0)
    show the kernels' phases directly."""
    B, H, T, D = 1, 1, 4500, 16
    P = D // 2
    _, _, k, f = qkf(B, H, T, D, f_low=0.98, f_high=0.9999)
    q = torch.cat((torch.ones(B, H, T, P), torch.zeros(B, H, T, P)), dim=-1).to(DEVICE).requires_grad_()
    i = torch.arange(P, dtype=torch.float64, device=DEVICE)
    exact = torch.cumsum(f.detach().double().unsqueeze(-1) ** i, dim=1).transpose(1, 2)  # (B, H, T, P)
    ulp = 2.0 ** (math.floor(math.log2(exact.max().item())) - 23)  # float32 spacing at the largest phase
    bound = phase_error_bound(exact.max().item(), DEVICE)
    assert bound == (1.25 * ulp if DEVICE == "cpu" else pytest.approx(1.25 * ulp + 2.0 ** -22 * exact.max().item()))

    def phase_error(c, s):  # |angle of (c, s) - exact phase|, modulo 2 pi
        d = torch.atan2(s.double(), c.double()) - exact
        return (torch.remainder(d + math.pi, 2 * math.pi) - math.pi).abs().max().item()

    q_rot, k_rot = carope_rotate(q, k, f)
    assert phase_error(q_rot[..., :P], q_rot[..., P:]) <= bound
    w_q, w_k = q.detach(), torch.randn(k.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    dq, dk, df = torch.autograd.grad((q_rot, k_rot), (q, k, f), (w_q, w_k))
    assert phase_error(dq[..., :P], -dq[..., P:]) <= bound  # dq = (cos phi, -sin phi)
    # dk and df against the reference, judged by their distance to a float64 computation
    ref = torch.autograd.grad(reference(q, k, f), (k, f), (w_q, w_k))
    exact_grads = torch.autograd.grad(reference(q, k, f, torch.float64), (k, f), (w_q, w_k))
    for a, r, e in zip((dk, df), ref, exact_grads):
        scale = e.abs().max().item()
        err_fused, err_ref = (a.double() - e).abs().max().item(), (r.double() - e).abs().max().item()
        assert err_fused <= 2 * err_ref + bound * scale, (err_fused, err_ref)


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
@pytest.mark.parametrize("pe", ["carope", "carope-embed"])  # f from each layer's input, or from the embedding
def test_model_with_fused_carope_equals_the_readable_model(pe):
    """GPT(fused_carope=True) takes the kernel in every layer and gives the readable model's loss and gradients."""
    from carope import GPT
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, pe=pe)
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


# ----------------------------------------------------------------------------- failing safely


@here
@pytest.mark.parametrize("D, dtype", [(16, torch.float32), (24, torch.float32), (16, torch.bfloat16)])
def test_self_check_passes_on_a_working_kernel(D, dtype):
    assert self_check(torch.device(DEVICE), D, dtype) is None


@here
def test_self_check_runs_once_per_kind_of_input(monkeypatch):
    monkeypatch.setattr(carope_triton, "_verdicts", {})
    runs = []
    real = carope_triton.self_check
    monkeypatch.setattr(carope_triton, "self_check", lambda *a: runs.append(a[1:]) or real(*a))
    q16, q24 = torch.zeros(1, 1, 3, 16, device=DEVICE), torch.zeros(1, 1, 3, 24, device=DEVICE)
    assert use_fused(q16) and use_fused(q16) and use_fused(q24)
    assert runs == [(16, torch.float32), (24, torch.float32)]


@here
def test_both_launches_run_on_the_tensors_device(monkeypatch):
    """Each launch goes through _on_device(q), which makes q's GPU the current one (cuda:1 is not GPU 0)."""
    seen = []
    real = carope_triton._on_device
    monkeypatch.setattr(carope_triton, "_on_device", lambda t: seen.append(t) or real(t))
    _, q, k, f = qkf(1, 2, 20, 16)
    q_rot, k_rot = carope_rotate(q, k, f)
    torch.autograd.grad((q_rot, k_rot), (q, k, f), (torch.ones_like(q_rot), torch.ones_like(k_rot)))
    assert len(seen) == 2 and all(t.shape == q.shape and t.device == q.device for t in seen)


def test_on_device_names_the_tensors_gpu():
    gpu1 = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))
    assert carope_triton._on_device(gpu1).idx == 1  # torch.cuda.device(cuda:1): built without a GPU
    with carope_triton._on_device(torch.zeros(1)):  # CPU tensors (the interpreter): nothing to switch
        pass


def test_a_verdict_holds_for_its_dtype_only(monkeypatch):
    """The self-check's verdict is kept per device, head size and dtype: a kernel that passed in float32 is
    checked again for bf16 q, k, and a bf16 failure does not turn the float32 path off."""
    monkeypatch.setattr(carope_triton, "_verdicts", {})
    monkeypatch.setattr(carope_triton, "fused_available", lambda t: True)  # as on a GPU; no kernel is launched
    runs = []

    def check(device, head_dim, dtype=torch.float32):
        runs.append(dtype)
        return "q_rot differs from the reference" if dtype == torch.bfloat16 else None
    monkeypatch.setattr(carope_triton, "self_check", check)
    q32 = torch.zeros(1, 1, 3, 16)
    assert use_fused(q32) and not use_fused(q32.bfloat16()) and use_fused(q32)
    assert runs == [torch.float32, torch.bfloat16]


def wrong_kernel(how):
    """A stand-in for the fused op: raises, or returns q and k unrotated."""
    def op(q, k, f):
        if how == "raises":
            raise RuntimeError("ptxas fatal: something went wrong\nsecond line")
        zero = 0.0 * f.sum()  # keeps f in the graph, so the backward runs too
        return q.contiguous() + zero, k.contiguous() + zero
    return op


@pytest.mark.parametrize("how, why", [("raises", "RuntimeError: ptxas fatal: something went wrong"),
                                      ("disagrees", "q_rot differs from the reference")])
def test_a_failing_kernel_warns_once_and_the_model_uses_the_reference(monkeypatch, capsys, how, why):
    monkeypatch.setattr(carope_triton, "_verdicts", {})
    monkeypatch.setattr(carope_triton, "fused_available", lambda t: True)  # as on a GPU
    monkeypatch.setattr(carope_triton, "rotate_qk", wrong_kernel(how))
    cfg = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, pe="carope")
    torch.manual_seed(0)
    fused = GPT(GPTConfig(**cfg, fused_carope=True))
    plain = GPT(GPTConfig(**cfg, fused_carope=False))
    for block in fused.transformer.h:
        torch.nn.init.normal_(block.attn.rotary.weight, std=0.5)
    plain.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 64, (2, 33), generator=torch.Generator().manual_seed(1))
    capsys.readouterr()
    for _ in range(2):  # the second forward asks again: the verdict is kept, no second check or warning
        _, loss = fused(idx[:, :-1], idx[:, 1:])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the fused CARoPE kernel failed its self-check on cpu")
    assert why in err[0] and "second line" not in err[0] and "reference rotation" in err[0]
    assert torch.equal(loss, plain(idx[:, :-1], idx[:, 1:])[1])  # the reference path, exactly
    assert not use_fused(torch.zeros(1, 1, 2, 16))


def test_missing_launcher_tools_are_named(monkeypatch, tmp_path):
    """Triton compiles its CUDA launcher with cc and Python.h at the first launch: without them the
    self-check fails, and its reason says which one is missing and how to get it."""
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(carope_triton.shutil, "which", lambda name: None)
    monkeypatch.setattr(carope_triton.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    monkeypatch.setattr(carope_triton, "rotate_qk", wrong_kernel("raises"))  # fails on a GPU machine too
    why = self_check(torch.device("cuda"), 16)
    assert "a C compiler (install gcc, or set CC)" in why and f"no Python.h in {tmp_path}" in why
    assert "\n" not in why
    (tmp_path / "Python.h").write_text("")
    monkeypatch.setenv("CC", "cc")
    assert carope_triton.launcher_tools_missing() is None


@here
def test_compiled_model_with_the_fused_kernel_is_one_graph():
    """torch.compile(fullgraph=True) through the custom op and the self-check (which dynamo runs while
    tracing, assume_constant_result), at two lengths: the same loss as the eager model."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=32, pe="carope", fused_carope=True)
    model = GPT(GPTConfig(**cfg)).to(DEVICE)
    torch.nn.init.normal_(model.transformer.h[0].attn.rotary.weight, std=0.5)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for T in (12, 20):
        idx = torch.randint(0, 64, (2, T + 1), device=DEVICE)
        loss_c = compiled(idx[:, :-1], idx[:, 1:])[1]
        assert torch.allclose(loss_c, model(idx[:, :-1], idx[:, 1:])[1], rtol=1e-5, atol=1e-6)
