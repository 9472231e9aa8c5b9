"""GPT.generate samples from softmax(logits / temperature): checked against that distribution itself."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from carope import GPT, GPTConfig  # noqa: E402

LOGITS = torch.tensor([0.0, 1.0, 2.0, -1.0])


def fixed_model(monkeypatch):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=4, pe="rope")).eval()
    monkeypatch.setattr(GPT, "forward", lambda self, idx, targets=None, cache=None:
                        (LOGITS.expand(idx.size(0), idx.size(1), -1).clone(), None))
    return model


@pytest.mark.parametrize("temperature, top_k", [(0.5, None), (2.0, None), (1.0, 2)])
def test_sampling_follows_softmax_of_logits_over_temperature(monkeypatch, temperature, top_k):
    model = fixed_model(monkeypatch)
    torch.manual_seed(0)
    n = 40_000
    out = model.generate(torch.zeros(n, 1, dtype=torch.long), 1, temperature=temperature, top_k=top_k)[:, 1]
    want = LOGITS / temperature
    if top_k is not None:
        want = want.masked_fill(want < want.topk(top_k).values[-1], -float("inf"))
    p = torch.softmax(want, dim=-1)
    seen = torch.bincount(out, minlength=4).float() / n
    assert torch.allclose(seen, p, atol=0.01), (seen, p)  # 40k draws: 3 sigma is under 0.008


def test_a_tiny_temperature_is_the_argmax_not_an_error(monkeypatch):
    model = fixed_model(monkeypatch)
    out = model.generate(torch.zeros(64, 1, dtype=torch.long), 3, temperature=1e-300)
    assert (out[:, 1:] == 2).all()
