"""The two readings of CARoPE's x_t (PAPERS.md): each layer's own normalised input (carope, the
project's reading) and the paper's literal words, the token embedding (carope-embed)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from carope import GPT, GPTConfig  # noqa: E402


def model(pe, seed=0):
    torch.manual_seed(seed)
    m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, pe=pe)).eval()
    for block in m.transformer.h:  # an input-dependent f: W away from its initial zeros
        with torch.no_grad():
            block.attn.rotary.weight.normal_(0, 3.0)
    return m


def frequencies(m, idx):
    """f(x_t)_h of every layer for tokens idx: (layers, B, T, H)."""
    seen = []
    hooks = [b.attn.rotary.register_forward_hook(lambda mod, inp, out: seen.append(mod.frequencies(inp[0])))
             for b in m.transformer.h]
    with torch.no_grad():
        m(idx)
    for h in hooks:
        h.remove()
    return torch.stack(seen)


@pytest.mark.parametrize("pe", ["carope", "carope-embed"])
def test_each_reading_starts_as_rope(pe):
    torch.manual_seed(0)
    rope = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, pe="rope")).eval()
    torch.manual_seed(0)
    other = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, pe=pe)).eval()
    other.load_state_dict(rope.state_dict(), strict=False)  # the same weights; W = 0, b = RoPE's base
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.allclose(rope(idx)[0], other(idx)[0], atol=1e-5)


def test_the_literal_reading_sees_the_token_alone_and_the_projects_sees_its_context():
    """Two sequences with the same last token after different prefixes: carope-embed gives that token the
    same f in every layer (it reads the embedding), carope gives it a different f from layer 1 on."""
    a = torch.tensor([[1, 2, 3, 4, 5, 9]])
    b = torch.tensor([[7, 7, 8, 8, 6, 9]])
    embed, ctx = model("carope-embed"), model("carope")
    fa, fb = frequencies(embed, a), frequencies(embed, b)
    assert torch.allclose(fa[:, :, -1], fb[:, :, -1], atol=1e-6)
    assert not torch.allclose(fa[:, :, -2], fb[:, :, -2], atol=1e-3)  # other tokens, other f
    emb = embed.transformer.wte(a)
    for layer, block in enumerate(embed.transformer.h):  # f is computed from wte(x_t) in every layer
        assert torch.allclose(fa[layer], block.attn.rotary.frequencies(emb), atol=1e-6)
    ca, cb = frequencies(ctx, a), frequencies(ctx, b)
    assert not torch.allclose(ca[1, :, -1], cb[1, :, -1], atol=1e-3)


def test_the_literal_readings_cache_equals_the_full_forward():
    m = model("carope-embed")
    idx = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        full = m(idx)[0]
        cache = m.new_cache()
        first = m(idx[:, :5], cache=cache)[0]
        steps = [m(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 12)]
    assert torch.allclose(first[:, -1], full[:, 4], atol=1e-4)
    assert all(torch.allclose(s[:, -1], full[:, t], atol=1e-4) for s, t in zip(steps, range(5, 12)))


@pytest.mark.parametrize("base", [1e4, 5e5, 1e30])
def test_the_initial_f_is_theta_1_for_any_base(base):
    """b = softplus^-1(base^(2/D) - 1) gives f = base^(-2/D) = theta_1, also where e^y overflows a float."""
    from carope import CARoPE
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=16, pe="carope", rope_base=base)
    f = CARoPE(cfg).frequencies(torch.randn(1, 3, 32))
    assert torch.allclose(f, torch.full_like(f, base ** (-2 / 16)), rtol=1e-5)
