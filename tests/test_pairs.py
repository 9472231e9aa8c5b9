"""support/pairs.py: RoPE's arithmetic of full turns, the phases and q.k shares read from a model with hooks
against hand computations, and the command on tiny trained checkpoints."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from carope import GPT, GPTConfig  # noqa: E402
from support import pairs  # noqa: E402
from test_train import TINY, make_data, run  # noqa: E402

TWO_PI = 2 * math.pi


def model(pe, base=10000.0, **kw):
    """The bytes recipe's head size and context, D = 32 and T = 64, in 2 layers x 2 heads."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=32, n_layer=2, n_head=2, n_embd=64, block_size=64, pe=pe, rope_base=base)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


ROWS = torch.randint(32, (3, 64), generator=torch.Generator().manual_seed(0))  # (B, T)


def test_the_arithmetic_of_full_turns():
    # D = 32, T = 64, base 1e4: pair i reaches 64 * 1e4^(-i/16); 64 * 1e4^(-4/16) = 6.4 >= 2 pi, 64 * 1e4^(-5/16) = 3.6
    assert pairs.rope_phase(32, 64, 1e4)[[0, 4, 8]].tolist() == pytest.approx([64.0, 6.4, 0.64])
    assert pairs.full_turns(32, 64, 1e4).tolist() == [True] * 5 + [False] * 11
    assert pairs.slow_count(32, 64, 1e4) == 11 and pairs.slow_count(32, 64, 10.0) == 0
    # PAPERS.md §6: the paper's GPT-Tiny, D = 64 and T = 512: 16 of 32 pairs do not turn; every one at base <= ~94
    assert pairs.slow_count(64, 512, 1e4) == 16 and round(pairs.critical_base(64, 512)) == 94
    critical = pairs.critical_base(32, 64)
    assert critical == pytest.approx((64 / TWO_PI) ** (32 / 30)) and round(critical, 1) == 11.9
    # the largest base at which every pair turns: at it the last pair reaches 2 pi exactly, a little above it falls short
    assert pairs.rope_phase(32, 64, critical)[-1].item() == pytest.approx(TWO_PI)
    assert pairs.slow_count(32, 64, critical * 0.999) == 0 and pairs.slow_count(32, 64, critical * 1.001) == 1
    with pytest.raises(ValueError):
        pairs.critical_base(32, 6)  # pair 0 turns 1 rad a token: 6 tokens are less than a turn at any base


@pytest.mark.parametrize("base, slow", [(1e4, 11), (10.0, 0), (100.0, 7)])
def test_a_rope_model_has_the_arithmetics_slow_pairs(base, slow):
    """Base 100: 64 * 100^(-i/16) >= 2 pi for i <= 16 log(64 / 2 pi) / log(100) = 8.06, so pairs 9..15 are slow."""
    r = pairs.measure_model(model("rope", base), ROWS)
    assert r["slow"] == [[slow, slow], [slow, slow]] and r["slow_total"] == 4 * slow and r["slow_mean"] == slow
    assert slow == pairs.slow_count(32, 64, base) == r["rope"]["slow"]
    expected = pairs.rope_phase(32, 64, base)
    for key in ("mean", "q1", "median", "q3"):  # every row reaches T theta_i
        assert torch.allclose(torch.tensor(r["phase"][key]), expected.float().expand(2, 2, -1), rtol=1e-6)
    token = torch.tensor(r["token_slow"])  # theta_1 at every token: a pair is slow at every token or at none
    assert token.tolist() == [[[0.0] * (16 - slow) + [1.0] * slow] * 2] * 2 and r["mixed"] == 0
    assert r["slow_qk_share_mean"] == pytest.approx(torch.tensor(r["qk_share"])[..., 16 - slow:].sum(-1).mean().item())


@pytest.mark.parametrize("pe", ["carope", "carope-static", "carope-embed"])
def test_carope_at_its_initialisation_reaches_ropes_phases(pe):
    """W = 0 and f = theta_1 for every token: sum over the T tokens of theta_1^i = T theta_i, RoPE's phase."""
    rope, carope = pairs.measure_model(model("rope"), ROWS), pairs.measure_model(model(pe), ROWS)
    assert torch.allclose(torch.tensor(carope["phase"]["mean"]), torch.tensor(rope["phase"]["mean"]), rtol=1e-5, atol=0)
    assert carope["slow"] == rope["slow"] == [[11, 11], [11, 11]] and carope["token_slow"] == rope["token_slow"]


def test_a_constant_ratio_reaches_T_f_to_the_i():
    """b set so that f = 0.5 in head 0 and 0.8 in head 1 at every token: pair i reaches 64 * f^i, slow where it is
    below 2 pi: 2^i > 10.19 from i = 4 (12 slow pairs), 0.8^i < 0.0982 from i = 11 (5 slow pairs)."""
    m = model("carope")
    ratios = torch.tensor([0.5, 0.8])
    with torch.no_grad():
        for block in m.transformer.h:
            block.attn.rotary.bias.copy_(torch.log(torch.expm1(1 / ratios - 1)))  # softplus(b) = 1/f - 1
    r = pairs.measure_model(m, ROWS)
    expected = 64 * ratios[:, None].double() ** torch.arange(16)  # (H, P)
    assert torch.allclose(torch.tensor(r["phase"]["mean"]).double(), expected.expand(2, 2, 16), rtol=1e-5)
    assert r["slow"] == [[12, 5], [12, 5]] and r["slow_total"] == 34 and r["slow_mean"] == 8.5
    assert torch.tensor(r["token_slow"])[0].tolist() == [[0.0] * 4 + [1.0] * 12, [0.0] * 11 + [1.0] * 5]
    share = torch.tensor(r["qk_share"])
    assert r["slow_qk_share"][0] == pytest.approx([share[0, 0, 4:].sum().item(), share[0, 1, 11:].sum().item()])


def test_the_slow_share_of_tokens_by_hand():
    """Four tokens with f = 0.5, 0.5, 0.9, 0.8 in a context of 64: pair 4 turns 64 * 0.5^4 = 4 < 2 pi at the first
    two and 42.0, 26.2 at the others, so it is slow at half the tokens; pair 0 (f^0 = 1) at none; pair 15 at every
    one (64 * 0.9^15 = 13.1 >= 2 pi, but 64 * 0.8^15 = 2.25): three of four."""
    f = torch.tensor([0.5, 0.5, 0.9, 0.8]).view(1, 4, 1)  # (B, T, H)
    share = pairs.slow_share(f, torch.arange(16.0), 64)  # (H, P)
    assert share.shape == (1, 16) and share[0, 0] == 0 and share[0, 4] == 0.5 and share[0, 15] == 0.75


def test_qk_shares_by_hand():
    """c_attn's weight at 0 and its bias fixed: every token's q = (3, 1, 4, 0) and k = (1, 0, 0, 2), D = 4.
    Pairs (dims i, i + 2): |q_0| = |(3, 4)| = 5, |k_0| = 1, |q_1| = |(1, 0)| = 1, |k_1| = |(0, 2)| = 2: shares 5/7, 2/7."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=8, n_layer=1, n_head=1, n_embd=4, block_size=5, pe="rope")).eval()
    with torch.no_grad():
        m.transformer.h[0].attn.c_attn.weight.zero_()
        m.transformer.h[0].attn.c_attn.bias.copy_(torch.tensor([3.0, 1, 4, 0, 1, 0, 0, 2, 0, 0, 0, 0]))
    r = pairs.measure_model(m, torch.randint(8, (2, 5)))
    assert r["qk_share"] == [[pytest.approx([5 / 7, 2 / 7])]]


def test_qk_shares_of_every_layer_against_a_recomputation():
    """The hooks read each layer's own q and k: recomputed block by block, the shares agree and sum to 1 per head."""
    m = model("carope")
    with torch.no_grad():
        for block in m.transformer.h:
            block.attn.rotary.weight.normal_(0, 0.3)
        r = pairs.measure_model(m, ROWS)
        x = m.transformer.wte(ROWS)  # (B, T, C)
        for layer, block in enumerate(m.transformer.h):
            q, k, _ = block.attn.c_attn(block.ln_1(x)).split(64, dim=2)
            q, k = q.view(3, 64, 2, 2, 16), k.view(3, 64, 2, 2, 16)  # (B, T, H, 2, P): pair i is dims i and i + P
            both = q.norm(dim=3) * k.norm(dim=3)  # |q_i||k_i|: (B, T, H, P)
            share = (both / both.sum(-1, keepdim=True)).mean(dim=(0, 1))  # (H, P)
            assert torch.allclose(torch.tensor(r["qk_share"][layer]), share, rtol=1e-5, atol=1e-7)
            x = block(x)
    assert torch.allclose(torch.tensor(r["qk_share"]).sum(-1), torch.ones(2, 2), atol=1e-6)
    # a W that reads the input: some pairs are slow at some tokens and fast at others
    assert r["mixed"] > 0 and r["mixed"] == sum(0.1 <= s <= 0.9 for lh in r["token_slow"] for h in lh for s in h)


def test_the_phase_of_carope_is_the_sum_of_its_tokens_turns():
    """With a W that reads the input, the phase a row reaches is sum_t f(x_t)_h^i, f from each layer's own input."""
    m = model("carope")
    with torch.no_grad():
        for block in m.transformer.h:
            block.attn.rotary.weight.normal_(0, 0.3)
        r = pairs.measure_model(m, ROWS)
        x = m.transformer.wte(ROWS)
        for layer, block in enumerate(m.transformer.h):
            rotary = block.attn.rotary
            logits = block.ln_1(x).double() @ rotary.weight.double().T + rotary.bias.double()  # x_t W + b: (B, T, H)
            f = 1 / (F.softplus(logits) + 1)  # (B, T, H)
            phase = (f.unsqueeze(-1) ** torch.arange(16.0, dtype=torch.float64)).sum(1)  # (B, H, P)
            assert torch.allclose(torch.tensor(r["phase"]["mean"][layer]).double(), phase.mean(0), rtol=1e-5)
            assert torch.allclose(torch.tensor(r["phase"]["median"][layer]).double(), phase.median(0).values, rtol=1e-5)
            x = block(x)


def test_encodings_without_a_readable_phase():
    """Selective RoPE: its phase from its cache's running sum, no per-token ratio; NoPE and TAPA: nothing to read."""
    r = pairs.measure_model(model("selective"), ROWS)
    assert r["phase"] is not None and r["qk_share"] is not None and r["token_slow"] is None and r["mixed"] is None
    for pe in ("nope", "tapa", "learned"):
        r = pairs.measure_model(model(pe), ROWS)
        assert r["phase"] is None and r["qk_share"] is None and r["slow"] is None
        json.dumps(r)  # still JSON-able


# -----------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A rope and a carope run of 3 steps on tiny data: D = 16, T = 16, 1 layer x 2 heads."""
    root = tmp_path_factory.mktemp("pairs")
    data = make_data(root / "data")
    for pe in ("rope", "carope"):
        run("--data", data, "--pe", pe, *TINY, "--max-steps", 3, "--eval-lens", 16, "--out-dir", root / f"{pe}-s1")
    return root


def test_the_command_writes_the_table_the_json_and_the_plot(two_runs, capsys):
    out, png = two_runs / "pairs.md", two_runs / "pairs.png"
    runs = [str(two_runs / "rope-s1"), str(two_runs / "carope-s1")]
    assert pairs.main([*runs, "--out", str(out), "--plot", str(png), "--tokens", "512"]) == 0
    table = out.read_text()
    assert capsys.readouterr().out.startswith(table)
    rows = [line for line in table.splitlines() if line.startswith(f"| {two_runs}")]
    # D = 16, T = 16, base 1e4: 16 * 1e4^(-i/8) >= 2 pi for pair 0 only, so 7 of 8 pairs do not turn, in both heads
    assert rows[0].startswith(f"| {two_runs / 'rope-s1'} | rope | 10000 | 32 × 16 | 7.0 of 8 (14 of 16) | ")
    assert rows[1].startswith(f"| {two_runs / 'carope-s1'} | carope | initialised at base 10000 | 32 × 16 | ")
    assert len(rows) == 2 and rows[0].endswith(" | 0 of 16 |")
    for d in runs:
        r = json.loads((two_runs / d / "pairs.json").read_text())
        assert r["step"] == 3 and r["tokens"] == 512 and r["rows"] == 32 and r["T"] == 16
        share = f"{100 * r['slow_qk_share_mean']:.1f} %"
        assert any(line.startswith(f"| {d} |") and f" | {share} | " in line for line in rows)
    assert r["pe"] == "carope" and r["text"].startswith("the first 512 validation tokens of")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in two_runs.rglob("*.tmp")]


@pytest.mark.parametrize("folder, words", [("missing", "no such folder"),
                                           ("data", "holds no ckpt.pt: not a run folder of train.py or compare.py"),
                                           ("fake", "fake/ckpt.pt: not a readable checkpoint")])
def test_the_command_refuses_bad_input_in_one_line(two_runs, folder, words):
    (two_runs / "fake").mkdir(exist_ok=True)
    (two_runs / "fake" / "ckpt.pt").write_text("not a checkpoint")
    r = subprocess.run([sys.executable, "-m", "support.pairs", str(two_runs / folder), "--out", str(two_runs / "bad.md")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("pairs: ") and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (two_runs / "bad.md").exists()
