"""Tests of carope.py: the equations, causality, equivalences between encodings, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from carope import (GPT, PE_CHOICES, PRESETS, CARoPE, GPTConfig, LayerCache, RoPE, SelectiveRoPE, rotate,
                    sinusoidal_table, tapa_attention)

TINY = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def tiny_model(pe, seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, "pe": pe, **overrides})).eval()


def perturb_positional_params(model, seed=1):
    """Move the learnable encodings away from their RoPE-like init so input dependence shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, CARoPE) and m.weight is not None:
                m.weight.copy_(0.5 * torch.randn(m.weight.shape, generator=g))
            if isinstance(m, SelectiveRoPE):
                m.conv.copy_(torch.randn(m.conv.shape, generator=g))
                m.gain.fill_(2.0)
    return model


def sharpen_attention(model, scale=30.0):
    """At GPT-2's init, attention is nearly uniform and logits barely see the positional encoding.
    Larger q, k weights make attention sharp, so comparisons between encodings can fail."""
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[: 2 * model.config.n_embd] *= scale  # the q and k rows
    return model


def logits_with_weights_of(source, pe, idx, **overrides):
    """Logits of a model with encoding pe that carries source's weights (its own encoding params aside)."""
    model = tiny_model(pe, **overrides)
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    assert not unexpected and all(".rotary." in k for k in missing)
    with torch.no_grad():
        return model(idx)[0], model


# ----------------------------------------------------------------------------- causality

@pytest.mark.parametrize("pe", PE_CHOICES)
def test_causality(pe):
    model = perturb_positional_params(tiny_model(pe))
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    j = 9
    changed = idx.clone()
    changed[:, j] = (idx[:, j] + 1) % 64
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.allclose(a[:, :j], b[:, :j], rtol=0, atol=1e-6), "a later token changed an earlier logit"
    assert not torch.allclose(a[:, j], b[:, j]), "the changed token did not change its own logits"


# ----------------------------------------------------------------------------- CARoPE's equations

def test_carope_init_bias_gives_rope_base():
    # Reading: W = 0 and b = softplus^-1(base^(2/d) - 1) give f = base^(-2/d) = theta_1.
    cfg = GPTConfig(n_embd=512, n_head=8, pe="carope")  # head size 64
    carope = CARoPE(cfg)
    assert carope.bias[0].item() == pytest.approx(-0.9267, abs=1e-4)
    f = 1 / (F.softplus(carope.bias) + 1)
    assert torch.allclose(f, torch.full_like(f, 10000 ** (-2 / 64)))
    assert torch.count_nonzero(carope.weight) == 0


@pytest.mark.parametrize("pe", ["carope", "carope-static"])
@pytest.mark.parametrize("n_head", [4, 2])  # head size 32 (the CPU presets') and 64 (exercise 3's)
def test_carope_init_rope_starts_at_theta_1_and_zero_at_b_0(pe, n_head):
    # carope_init="rope": b = softplus^-1(base^(2/D) - 1), so f = theta_1 = base^(-2/D) (the RoPE model);
    # carope_init="zero": b = 0, so f = 1/(softplus(0) + 1) = 1/(1 + ln 2) whatever D.
    rope = CARoPE(GPTConfig(n_embd=128, n_head=n_head, pe=pe))
    zero = CARoPE(GPTConfig(n_embd=128, n_head=n_head, pe=pe, carope_init="zero"))
    x = torch.randn(2, 5, 128)
    D = 128 // n_head
    assert torch.allclose(rope.frequencies(x), torch.full((2, 5, n_head), 10000 ** (-2 / D)), rtol=1e-6, atol=0)
    assert torch.count_nonzero(zero.bias) == 0
    assert torch.allclose(zero.frequencies(x), torch.full((2, 5, n_head), 1 / (1 + math.log(2))), rtol=1e-6, atol=0)


def test_carope_init_unknown_is_one_line():
    with pytest.raises(ValueError, match=r"^unknown carope_init='one'; choose one of: rope, zero$"):
        GPTConfig(carope_init="one")


def test_carope_phase_equals_direct_sum():
    # phi_i^h(m) = sum_{t<=m} f(x_t)_h^i with f(x_t)_h = 1/(softplus(x_t W + b)_h + 1), by loops.
    cfg = GPTConfig(**{**TINY, "pe": "carope"})
    carope = CARoPE(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        carope.weight.normal_(0, 0.3)
    x = torch.randn(1, 6, cfg.n_embd)
    cos, sin = carope(x)  # (1, H, T, d/2)
    W, b = carope.weight.detach().double(), carope.bias.detach().double()
    for h in range(cfg.n_head):
        for m in range(6):
            for i in range(cfg.head_dim // 2):
                phi = 0.0
                for t in range(m + 1):
                    z = float(x[0, t].double() @ W[h] + b[h])
                    f = 1.0 / (math.log1p(math.exp(z)) + 1.0)
                    phi += f ** i
                assert cos[0, h, m, i].item() == pytest.approx(math.cos(phi), abs=1e-5)
                assert sin[0, h, m, i].item() == pytest.approx(math.sin(phi), abs=1e-5)


@pytest.mark.parametrize("pe", ["carope", "carope-static"])
def test_carope_at_init_equals_rope(pe):
    # Same seed, same weights: CARoPE's own parameters draw no random numbers.
    rope, carope = tiny_model("rope", seed=3), tiny_model(pe, seed=3)
    assert all(torch.equal(p, carope.state_dict()[k]) for k, p in rope.state_dict().items())
    sharpen_attention(rope)
    idx = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = rope(idx)[0]
    assert torch.allclose(logits_with_weights_of(rope, pe, idx)[0], expected, rtol=0, atol=1e-5)
    # The comparison has teeth: the same weights with no positions, or RoPE at another base, differ.
    assert not torch.allclose(logits_with_weights_of(rope, "nope", idx)[0], expected, atol=1e-2)
    assert not torch.allclose(logits_with_weights_of(rope, pe, idx, rope_base=500.0)[0], expected, atol=1e-2)


def rotated_scores(cos, sin, q, k):
    """S[m, n] = rot(q_m) . rot(k_n) for one head: the positional part of attention."""
    return rotate(q, cos, sin)[0, 0] @ rotate(k, cos, sin)[0, 0].T


def test_carope_score_depends_only_on_tokens_between():
    cfg = GPTConfig(**{**TINY, "pe": "carope", "n_head": 1})
    carope = CARoPE(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        carope.weight.normal_(0, 0.5)
    T, d = 10, cfg.head_dim
    x = torch.randn(1, T, cfg.n_embd)
    q, k = torch.randn(1, 1, T, d), torch.randn(1, 1, T, d)  # held fixed: only the phases move
    S = rotated_scores(*carope(x), q, k)
    t = 4
    x2 = x.clone()
    x2[0, t] = torch.randn(cfg.n_embd)
    S2 = rotated_scores(*carope(x2), q, k)
    for m in range(T):
        for n in range(m + 1):
            if n < t <= m:  # token t lies in (n, m]: the relative phase moves
                assert not torch.isclose(S[m, n], S2[m, n], atol=1e-4), (m, n)
            else:  # t outside (n, m]: absolute phases may move, their difference may not
                assert torch.isclose(S[m, n], S2[m, n], atol=1e-4), (m, n)


def test_carope_is_input_dependent_once_w_nonzero():
    model = perturb_positional_params(tiny_model("carope"))
    carope = model.transformer.h[0].attn.rotary
    x = torch.randn(2, 8, 32)
    cos, _ = carope(x)
    assert not torch.allclose(cos[0], cos[1])  # two inputs, two sets of phases
    static = perturb_positional_params(tiny_model("carope-static")).transformer.h[0].attn.rotary
    cos, _ = static(x)
    assert torch.equal(cos[0], cos[1])  # the ablation ignores its input


def test_rope_score_depends_only_on_distance():
    cfg = GPTConfig(**{**TINY, "pe": "rope", "n_head": 1})
    T, d = 12, cfg.head_dim
    torch.manual_seed(0)
    q = torch.randn(d).expand(1, 1, T, d)  # the same q and k at every position
    k = torch.randn(d).expand(1, 1, T, d)
    S = rotated_scores(*RoPE(cfg)(torch.zeros(1, T, cfg.n_embd)), q, k)
    for m in range(T):
        for n in range(T):
            assert torch.isclose(S[m, n], S[m - n, 0] if m >= n else S[0, n - m], atol=1e-5)
    assert not torch.isclose(S[3, 0], S[5, 0], atol=1e-3)  # and it does depend on the distance


def test_sinusoidal_table_matches_vaswani():
    T, C = 7, 10
    table = sinusoidal_table(T, C)
    for pos in range(T):
        for i in range(C // 2):
            angle = pos / 10000 ** (2 * i / C)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


# ----------------------------------------------------------------------------- precision, gradients

@pytest.mark.parametrize("pe", ["rope", "carope", "carope-static", "selective"])
def test_phases_float32_under_bf16_autocast_and_gradients_flow(pe):
    model = tiny_model(pe).train()
    dtypes = []
    for block in model.transformer.h:
        block.attn.rotary.register_forward_hook(lambda mod, inp, out: dtypes.extend(t.dtype for t in out))
    idx = torch.randint(0, 64, (2, 16))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16  # autocast is really on
    assert dtypes and all(dt == torch.float32 for dt in dtypes)
    loss.backward()
    rotary = model.transformer.h[0].attn.rotary
    for name, p in rotary.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


# ----------------------------------------------------------------------------- learning, length, errors

@pytest.mark.parametrize("pe", PE_CHOICES)
def test_every_encoding_learns(pe):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "pe": pe})).train()
    pattern = torch.randperm(64)[:12]  # a fixed 12-token phrase, repeated
    data = pattern.repeat(20)
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), "cpu")
    losses = []
    for step in range(40):
        starts = torch.randint(0, len(data) - 17, (8,))
        x = torch.stack([data[s:s + 16] for s in starts])
        y = torch.stack([data[s + 1:s + 17] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], (pe, losses[0], losses[-1])


@pytest.mark.parametrize("pe", [pe for pe in PE_CHOICES if pe != "learned"])
def test_forward_beyond_block_size(pe):
    model = tiny_model(pe)
    logits, _ = model(torch.randint(0, 64, (1, 32)))  # 2 x block_size
    assert logits.shape == (1, 32, 64) and torch.isfinite(logits).all()


def test_learned_refuses_longer_than_its_table():
    model = tiny_model("learned")
    assert model(torch.randint(0, 64, (1, 16)))[0].shape == (1, 16, 64)  # block_size itself works
    with pytest.raises(ValueError, match=r"17.*16 rows"):
        model(torch.randint(0, 64, (1, 17)))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown positional encoding.*nope.*carope-static.*selective"):
        GPTConfig(pe="alibi")
    with pytest.raises(ValueError, match="not divisible by n_head"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="head size.*odd"):
        GPTConfig(n_embd=30, n_head=2, pe="carope")
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.from_preset("gpt-huge")
    GPTConfig(n_embd=30, n_head=2, pe="nope")  # odd head sizes are fine without rotation


def test_targets_minus_one_ignored():
    model = tiny_model("carope")
    idx = torch.randint(0, 64, (2, 16))
    targets = idx.clone()
    targets[:, :8] = -1
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, 8:].reshape(-1, 64), idx[:, 8:].reshape(-1))
    assert torch.allclose(loss, expected)


@pytest.mark.parametrize("pe", PE_CHOICES)
def test_generate(pe):
    model = tiny_model(pe)
    idx = torch.randint(0, 64, (2, 5))
    out = model.generate(idx, 20, temperature=0.8, top_k=10)  # runs past block_size (learned: a window)
    assert out.shape == (2, 25) and torch.equal(out[:, :5], idx)
    assert 0 <= out.min() and out.max() < 64
    greedy = model.generate(idx, 4, temperature=0)
    assert torch.equal(greedy, model.generate(idx, 4, temperature=0))


def test_presets_and_optimizer_groups():
    sizes = {name: GPT(GPTConfig.from_preset(name, pe="rope")).num_params() for name in ("gpt-tiny", "gpt-small")}
    assert 44e6 < sizes["gpt-tiny"] < 45e6 and 123e6 < sizes["gpt-small"] < 125e6
    assert PRESETS["gpt-small"]["n_embd"] % PRESETS["gpt-small"]["n_head"] == 0
    model = tiny_model("carope")
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()


def test_gpt2_init_and_weight_tying():
    model = GPT(GPTConfig(**{**TINY, "n_embd": 256, "n_head": 4, "n_layer": 8, "pe": "carope"}))
    assert model.lm_head.weight is model.transformer.wte.weight  # one matrix, counted once
    block = model.transformer.h[0]
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert torch.count_nonzero(block.attn.c_attn.bias) == 0


def test_estimate_mfu_counts_flops(monkeypatch):
    import carope
    model = tiny_model("learned")
    cfg = model.config
    assert model.estimate_mfu(1000, 1.0) is None  # a CPU has no known peak: no made-up MFU
    monkeypatch.setattr(carope, "peak_flops", lambda device: 1e12)
    n = model.num_params() - cfg.block_size * cfg.n_embd  # the position table is a lookup, not a matmul
    flops_per_token = 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * 8
    assert model.estimate_mfu(1000, 2.0, seq_len=8) == pytest.approx(flops_per_token * 1000 / 2.0 / 1e12)


# ----------------------------------------------------------------------------- TAPA and Selective RoPE

def tapa_by_loops(q, k, v, theta, alpha):
    """score(m, n) = (q_A.k_A)/sqrt(theta D) cos(2 pi |m-n|^alpha (q_P.k_P)/sqrt((1-theta) D)), n <= m."""
    B, H, T, D = q.shape
    D_A = round(theta * D)
    out = torch.zeros(B, H, T, D, dtype=torch.float64)
    q, k, v = q.double(), k.double(), v.double()
    for b in range(B):
        for h in range(H):
            for m in range(T):
                scores = []
                for n in range(m + 1):
                    amplitude = q[b, h, m, :D_A] @ k[b, h, n, :D_A] / math.sqrt(theta * D)
                    dot_P = q[b, h, m, D_A:] @ k[b, h, n, D_A:] / math.sqrt((1 - theta) * D)
                    scores.append(amplitude * math.cos(2 * math.pi * abs(m - n) ** alpha * dot_P))
                att = torch.softmax(torch.stack(scores), dim=0)
                out[b, h, m] = att @ v[b, h, :m + 1]
    return out


def test_tapa_equals_double_loop_and_chunks_agree():
    torch.manual_seed(0)
    q, k, v = (1.5 * torch.randn(2, 2, 9, 8) for _ in range(3))  # the cos term matters at this scale
    reference = tapa_by_loops(q, k, v, theta=0.5, alpha=0.1)
    whole = tapa_attention(q, k, v, theta=0.5, alpha=0.1, chunk_size=9)
    chunked = tapa_attention(q, k, v, theta=0.5, alpha=0.1, chunk_size=4)  # 4 + 4 + 1 queries
    assert torch.allclose(whole.double(), reference, atol=1e-5)
    assert torch.allclose(chunked, whole, atol=1e-6)
    plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.allclose(whole, plain, atol=1e-3)  # and it is not ordinary attention


def test_tapa_chunk_size_does_not_change_the_model():
    a = tiny_model("tapa", tapa_chunk=16)
    b = tiny_model("tapa", tapa_chunk=5)
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.allclose(a(idx)[0], b(idx)[0], atol=1e-5)


def zero_selective_projection(model):
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.rotary.gain.zero_()  # projection at zero
            block.attn.rotary.conv.normal_()  # any convolution of zero rates stays zero
    return model


def test_selective_with_zero_projection_equals_rope():
    rope = sharpen_attention(tiny_model("rope", seed=5))
    idx = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = rope(idx)[0]
    _, selective = logits_with_weights_of(rope, "selective", idx)  # no gate (default), bias exp(0) = 1
    with torch.no_grad():
        assert torch.allclose(zero_selective_projection(selective)(idx)[0], expected, rtol=0, atol=1e-5)
    _, gated = logits_with_weights_of(rope, "selective", idx, selective_gate=True)
    with torch.no_grad():  # the gate (sigmoid(0) = 1/2 at init) halves the clock: no longer RoPE
        assert not torch.allclose(zero_selective_projection(gated)(idx)[0], expected, atol=1e-2)


# ----------------------------------------------------------------------------- generation with a cache

def generation_model(pe):
    """Non-trivial encoding weights, sharp attention that weighs in the residual stream, and an untied
    random lm_head, so that greedy text does not just repeat a token and a wrong position or phase
    changes the tokens, not only the logits."""
    model = sharpen_attention(perturb_positional_params(tiny_model(pe)), scale=10.0)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight *= 3.0
    model.lm_head.weight = torch.nn.Parameter(torch.randn(64, 32, generator=torch.Generator().manual_seed(0)))
    return model


@pytest.mark.parametrize("pe", PE_CHOICES)
def test_cache_logits_equal_full_forward(pe):
    # Prefill 5 tokens, then one token per call: each call's logits are the full forward's at that
    # position. Past block_size (16) for every encoding but learned, whose table stops there.
    model = generation_model(pe)
    T = 16 if pe == "learned" else 35
    idx = torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = model(idx)  # (2, T, 64)
        cache = model.new_cache()
        steps = [model(idx[:, :5], cache=cache)[0]]  # the prefill gives the last position only
        steps += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, T)]
    assert all(s.shape == (2, 1, 64) for s in steps)
    assert torch.allclose(torch.cat(steps, dim=1), full[:, 4:], rtol=0, atol=2e-4)  # |logits| up to ~20
    assert all(c.pos == T and c.k.shape == (2, 2, T, 16) for c in cache)


@pytest.mark.parametrize("pe", PE_CHOICES)
def test_greedy_generation_with_cache_equals_recomputation(pe):
    # Batch 2, prompt 5, 30 new tokens with block_size 16. Reference: each token is the argmax of a
    # fresh forward over the whole sequence so far, or for learned over its last block_size tokens.
    model = generation_model(pe)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(4))
    cached = model.generate(prompt, 30, temperature=0, use_cache=True)
    assert torch.equal(cached, model.generate(prompt, 30, temperature=0, use_cache=False))
    context = 16 if pe == "learned" else None
    with torch.no_grad():
        for t in range(5, 35):
            start = 0 if context is None else max(0, t - context)
            expected = model(cached[:, start:t])[0][:, -1].argmax(dim=-1)
            assert torch.equal(cached[:, t], expected), (pe, t)


@pytest.mark.parametrize("pe", PE_CHOICES)
def test_sampling_with_seed_same_with_and_without_cache(pe):
    model = generation_model(pe)
    prompt = torch.randint(0, 64, (3, 4), generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)
    cached = model.generate(prompt, 24, temperature=1.0, top_k=20, use_cache=True)
    torch.manual_seed(7)
    assert torch.equal(cached, model.generate(prompt, 24, temperature=1.0, top_k=20, use_cache=False))
    torch.manual_seed(8)  # and the seed matters: the test compares samples, not a constant
    assert not torch.equal(cached, model.generate(prompt, 24, temperature=1.0, top_k=20, use_cache=True))


def test_cache_takes_one_token_per_call_after_the_prompt():
    cache = LayerCache()
    cache.append(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4))
    with pytest.raises(ValueError, match="one token per call"):
        cache.append(torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))


def test_carope_frequencies_formula_and_precision():
    carope = perturb_positional_params(tiny_model("carope")).transformer.h[0].attn.rotary
    x = torch.randn(2, 7, 32)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        f = carope.frequencies(x)
    assert f.shape == (2, 7, 2) and f.dtype == torch.float32
    z = x.double() @ carope.weight.detach().double().T + carope.bias.detach().double()  # x_t W + b
    assert torch.allclose(f.double(), 1 / (torch.log1p(torch.exp(z)) + 1), atol=1e-6)
    assert 0 < f.min() and f.max() < 1


# ----------------------------------------------------------------------------- the gradient through the phase

class DetachedInput(torch.nn.Module):
    """Wraps a rotary module so that its input is detached: its phases stay, their gradient is cut."""

    def __init__(self, rotary):
        super().__init__()
        self.rotary = rotary

    def forward(self, x, cache=None):
        return self.rotary(x.detach(), cache)


def embedding_gradient(model, idx):
    """d loss / d (token embeddings), (B, T, C)."""
    captured = []

    def keep(module, inputs, out):
        out.retain_grad()
        captured.append(out)

    hook = model.transformer.wte.register_forward_hook(keep)
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    hook.remove()
    return loss.detach(), captured[0].grad


@pytest.mark.parametrize("pe", ["carope", "selective", "carope-static"])
def test_gradient_reaches_residual_stream_through_the_phase(pe):
    # CARoPE's f(x_t) and Selective's rates are functions of the residual stream, so the loss's
    # gradient must reach the embeddings through them too, not only through q, k, v. Cutting that
    # path (detaching the rotary module's input) must change d loss / d embeddings.
    idx = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(6))
    model = generation_model(pe)
    loss, grad = embedding_gradient(model, idx)
    for block in model.transformer.h:
        block.attn.rotary = DetachedInput(block.attn.rotary)
    model.zero_grad()
    loss_cut, grad_cut = embedding_gradient(model, idx)
    assert torch.equal(loss, loss_cut)  # the same forward values
    if pe == "carope-static":  # f_h ignores its input: nothing flows through it, the gradients agree
        assert torch.allclose(grad, grad_cut, rtol=0, atol=1e-9)
    else:
        assert (grad - grad_cut).abs().max() > 1e-3 * grad.abs().max(), "no gradient flows through the phase"


def test_rotate_pairs_dims_i_and_i_plus_half():
    # rotate's layout against an independent formula: pair i is the complex number x_i + j x_{i+D/2},
    # multiplied by e^{j phi_i}.
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 5, 8, generator=g)  # (B, H, T, D)
    phi = 10 * torch.randn(2, 3, 5, 4, generator=g)  # (B, H, T, P)
    z = torch.complex(x[..., :4].double(), x[..., 4:].double()) * torch.exp(1j * phi.double())
    expected = torch.cat((z.real, z.imag), dim=-1)
    assert torch.allclose(rotate(x, phi.cos(), phi.sin()).double(), expected, atol=1e-5)


# ----------------------------------------------------------------------------- GPU readiness, tested on the CPU

@pytest.mark.parametrize("pe", ["rope", "carope"])
def test_compiles_as_one_graph_at_two_lengths(pe):
    """torch.compile(fullgraph=True): the second length makes dynamo mark T dynamic; any Python
    decision on a size (is_causal=k.size(2) == T was one) then becomes a symbolic bool and breaks
    the graph, which fullgraph turns into an error. Both lengths give the eager logits."""
    model = perturb_positional_params(tiny_model(pe))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    for T in (8, 12):
        idx = torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            assert torch.allclose(compiled(idx)[0], model(idx)[0], rtol=0, atol=1e-6)


def tf32(x):
    """x rounded to nearest (even) at TF32's 10 mantissa bits, as a TF32 matmul rounds its inputs."""
    i = x.contiguous().view(torch.int32)
    return ((i + 0x0FFF + ((i >> 13) & 1)) & ~0x1FFF).view(torch.float32)


def test_f_is_out_of_tf32():
    """CARoPE's x_t W + b runs in float64 (carope.py's Reading (TF32)). Why: train.py's
    set_float32_matmul_precision("high") lets a float32 matmul on CUDA round its inputs to TF32's 10
    mantissa bits. With that rounding emulated on the CPU (this test's setting: C = 512, W ~ N(0, 0.1^2),
    T = 512) f is 4.7e-4 off and the phase 6.9e-3 rad (3.1e-2 at T = 4096), against 1.5e-5 rad in true
    float32. float64 is a dtype no TF32 setting touches; MPS has neither float64 nor TF32."""
    from torch.utils._python_dispatch import TorchDispatchMode
    cfg = GPTConfig(n_embd=512, n_head=8, pe="carope")  # the Reading's setting: C = 512, D = 64
    carope = CARoPE(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        carope.weight.normal_(0, 0.1)
    x = F.layer_norm(torch.randn(4, 512, 512), (512,))

    class MatmulDtypes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("mm", "addmm", "bmm", "matmul", "linear"):
                seen.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    seen = []
    with MatmulDtypes():
        f = carope.frequencies(x)
    assert seen == [torch.float64]  # the one matmul, in a precision TF32 never applies to

    W, b = carope.weight.detach(), carope.bias.detach()
    i = torch.arange(32, dtype=torch.float64)
    phase = lambda f: torch.cumsum(f.double().unsqueeze(-1) ** i, dim=1)  # (B, T, H, P)
    exact = phase(1 / (F.softplus(F.linear(x.double(), W.double(), b.double())) + 1))
    as_tf32 = phase(1 / (F.softplus(F.linear(tf32(x), tf32(W), b)) + 1))
    assert (as_tf32 - exact).abs().max() > 1e-3  # what TF32 would cost: 6.9e-3 rad measured
    assert (phase(f) - exact).abs().max() < 1e-4  # the model's f: float32 rounding of f only


def test_a_fused_runs_checkpoint_is_the_same_model_anywhere():
    """fused_carope is a machine choice: the same parameters, so a state dict moves either way, and on
    a CPU (no kernel) a fused-config model computes exactly what the reference model does."""
    fused = perturb_positional_params(tiny_model("carope", fused_carope=True))
    plain = tiny_model("carope", seed=5, fused_carope=False)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fused(idx)[0], plain(idx)[0])


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989),
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA L40S", 362), ("NVIDIA L40", 181), ("NVIDIA L4", 121),
    ("NVIDIA B200", 2250), ("NVIDIA H100 NVL 2", None), ("NVIDIA GeForce RTX 3060", None), ("Tesla T4", None),
])
def test_peak_flops_by_exact_device_name(monkeypatch, name, tflops):
    """Exact names, no substrings: L40S is not L40, H100 PCIe is not the SXM part, and a GPU the table
    does not know gets None (MFU "n/a"), not someone else's peak."""
    import carope
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    peak = carope.peak_flops("cuda:0")
    assert peak == (None if tflops is None else tflops * 1e12)
    model = tiny_model("rope")
    monkeypatch.setattr(carope, "peak_flops", lambda device: peak)
    assert (model.estimate_mfu(1000, 1.0) is None) == (tflops is None)
