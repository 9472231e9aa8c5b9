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


def test_a_lower_temperature_agrees_with_the_argmax_more_often():
    """Through the real model (its own forward and cache): sampled tokens are the argmax of the last logits far
    more often at temperature 0.1 than at 10. Temperature divides the logits: a low one sharpens, a high one flattens."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=16, pe="carope")).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(50)  # logits some units apart, not the near-equal ones of a new model
    prompts = torch.randint(0, 16, (1000, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        best = model(prompts)[0][:, -1].argmax(dim=-1)
    agree = {}
    for temperature in (0.1, 10.0):
        torch.manual_seed(2)  # torch.multinomial draws from the global generator
        agree[temperature] = (model.generate(prompts, 1, temperature=temperature)[:, -1] == best).float().mean().item()
    assert agree[0.1] >= 0.95 and agree[10.0] <= 0.5, agree
