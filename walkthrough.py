# %% [markdown]
# # From one rotation to CARoPE, in eleven small steps
#
# The read-and-learn path of this repository: README.md, then this walkthrough, then carope.py.
# Every step states one idea, prints a few numbers and checks the idea with carope.py's own code
# (`check` stops the walkthrough if a claim is false), so it cannot drift from the model.
#
# - As a script: `python walkthrough.py` (under a minute on a 2-core CPU; no GPU, no network).
# - As a notebook: `pip install jupytext`, then `jupytext --to notebook walkthrough.py` and open
#   walkthrough.ipynb in Jupyter; or open this file in VS Code and use "Run Cell" above each `# %%`.
# - Steps 4, 6 and 10 draw a picture each, saved under out/walkthrough/ in the folder you run from
#   (turns.png, rotation.png, clock.png); a notebook also shows them inline.
#
# Change a number and run a cell again: the checks say whether the idea still holds.
# Shapes: B batch, T tokens, C width, H heads, D head size, P = D/2 pairs.

# %%
import argparse
import math
import os
import re
import sys
import time
from pathlib import Path

if "ipykernel" not in sys.modules:  # a script: --help says what it does, and it takes no other flag
    parser = argparse.ArgumentParser(prog="walkthrough.py", description="From one rotation to CARoPE, in eleven small "
                                     "steps: each prints a few numbers and checks one idea with carope.py's own code; "
                                     "steps 4, 6 and 10 draw out/walkthrough/turns.png, rotation.png and clock.png. "
                                     "Under a minute "
                                     "on a 2-core CPU, no GPU, no network; it takes no flags.")
    parser.error = lambda message: parser.exit(2, f"walkthrough.py: {message} (it takes none but --help)\n")
    parser.parse_args()
import matplotlib
import torch

if "ipykernel" not in sys.modules:  # a script: pictures go to files only; a notebook keeps its inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

if os.environ.pop("TRITON_INTERPRET", "0") == "1":  # read when carope's kernel file is imported, just below
    print("note: TRITON_INTERPRET=1 is set; the walkthrough runs CARoPE's PyTorch path (Triton's interpreter "
          "would run the fused kernel in Python, ~100x slower on a CPU)")
import carope
from support import pairs, readers  # step 4's arithmetic of full turns; step 10's text: the embedded corpus
from carope import CARoPE, GPT, GPTConfig, LayerCache, RoPE, rope_frequencies, rotate

torch.manual_seed(0)
# The models here are tiny: on an idle 2-core CPU two threads train step 10 somewhat faster than one,
# but on a busy one they wait on each other, many times slower. One thread is the safe choice.
torch.set_num_threads(1)
started = time.time()
CHECKS = []  # the claims checked so far


def check(ok, claim):
    """The walkthrough's assert: stops with the claim if it is false (also under python -O)."""
    if not ok:
        raise AssertionError(f"claim is false: {claim}")
    CHECKS.append(claim)
    print(f"  checked: {claim}")


PICTURES = Path("out", "walkthrough")  # under the folder you run from, as train.py's out/


def save(fig, name):
    """Write the figure to out/walkthrough/name (whole or not at all); in a notebook, show it too."""
    PICTURES.mkdir(parents=True, exist_ok=True)
    path = PICTURES / name
    fig.savefig(f"{path}.tmp", format="png", dpi=110)
    os.replace(f"{path}.tmp", path)
    print(f"  drew {path}")
    if "ipykernel" in sys.modules:
        plt.show()
    else:
        plt.close(fig)


# %% [markdown]
# ## 1. A rotation of one pair keeps its length
# RoPE, CARoPE and Selective RoPE do one thing to a query or a key: they cut its D numbers into
# P = D/2 pairs and turn pair i by an angle φᵢ. `rotate` pairs dimension i with i + P. A turn
# changes a pair's direction, never its length.

# %%
print("\n1. A rotation of one pair keeps its length")
x = torch.tensor([3.0, 4.0]).view(1, 1, 1, 2)  # one pair: (B, H, T, D) = (1, 1, 1, 2), P = 1
quarter = torch.tensor(math.pi / 2)
y = rotate(x, quarter.cos(), quarter.sin())
print(f"(3, 4) turned by 90 degrees: ({y[0, 0, 0, 0]:.4f}, {y[0, 0, 0, 1]:.4f}), "
      f"length {x.norm():.4f} -> {y.norm():.4f}")
check(torch.allclose(y.flatten(), torch.tensor([-4.0, 3.0]), atol=1e-6), "(3, 4) turned by a quarter turn is (-4, 3)")

x = torch.randn(2, 3, 5, 8)  # (B, H, T, D), P = 4
phi = 100 * torch.randn(2, 3, 5, 4)  # any angle for every pair: (B, H, T, P)
y = rotate(x, phi.cos(), phi.sin())
pair_length = lambda v: (v[..., :4] ** 2 + v[..., 4:] ** 2).sqrt()  # |(v_i, v_{i+P})|: (B, H, T, P)
print(f"{pair_length(x).numel()} pairs turned by angles up to {phi.abs().max():.0f} rad: "
      f"largest change of a pair's length {(pair_length(y) - pair_length(x)).abs().max():.1e}")
check(torch.allclose(pair_length(x), pair_length(y), atol=1e-5), "every pair keeps its length, whatever the angle")

# %% [markdown]
# ## 2. RoPE: q·k depends only on the distance m − n
# RoPE turns pair i of the query at position m by m·θᵢ and of the key at n by n·θᵢ. Their dot
# product then sees only the difference of the angles, (m − n)·θᵢ: the same q and k give the same
# score at positions (5, 2) and (63, 60). Every diagonal of the score matrix is constant.

# %%
print("\n2. RoPE: q.k depends only on the distance m - n")
rope_cfg = GPTConfig(n_layer=1, n_head=1, n_embd=16, block_size=64, pe="rope")  # D = 16, P = 8
cos, sin = RoPE(rope_cfg)(torch.zeros(1, 64, 16))  # RoPE looks only at how many tokens: (T, P) each
q, k = torch.randn(16), torch.randn(16)  # one query and one key vector, put at every position
q_m = rotate(q.expand(1, 1, 64, 16), cos, sin)[0, 0]  # q turned for each position m: (T, D)
k_n = rotate(k.expand(1, 1, 64, 16), cos, sin)[0, 0]  # (T, D)
score = q_m @ k_n.T  # score[m, n] = q_m . k_n: (T, T)
for m, n in ((5, 2), (30, 27), (63, 60), (5, 3)):
    print(f"  m = {m:2d}, n = {n:2d}, m - n = {m - n}: q.k = {score[m, n]:+.5f}")
diagonals = [score.diagonal(-d) for d in range(64)]  # the d-th holds every (m, m - d)
check(all(torch.allclose(s, s[0].expand_as(s), atol=1e-4) for s in diagonals),
      "RoPE's q.k is the same for every pair of positions at the same distance m - n")
check((diagonals[3][0] - diagonals[2][0]).abs() > 1e-3, "and it changes with the distance")

# %% [markdown]
# ## 3. RoPE's phase is a running sum
# The frequencies are powers of one number, the ratio θ₁ = base^(−2/D) of a geometric spectrum:
# θᵢ = base^(−2i/D) = θ₁ⁱ. So m·θᵢ = Σ_{t=1..m} θ₁ⁱ: RoPE's phase is a clock to which every token
# after the first adds θ₁ⁱ to pair i. CARoPE keeps this sum, and lets each token choose the ratio
# it adds (step 5; its sum starts at t = 0).

# %%
print("\n3. RoPE's phase is a running sum")
theta = rope_frequencies(16, 10000.0)  # theta_i = base^(-2i/D) for D = 16: (P,)
i = torch.arange(8, dtype=torch.float32)  # the pair index, i = 0 .. P - 1
print("theta_i          :", [round(v, 5) for v in theta.tolist()])
print("theta_1 ** i     :", [round(v, 5) for v in (theta[1] ** i).tolist()])
check(torch.allclose(theta, theta[1] ** i), "theta_i = theta_1^i: RoPE's frequencies are powers of theta_1")
running = torch.cumsum((theta[1] ** i).expand(63, 8), dim=0)  # row m - 1: sum_{t=1..m} theta_1^i: (T - 1, P)
print(f"pair 1 after 10 tokens: sum of ten theta_1 = {running[9, 1]:.5f}, 10 * theta_1 = {10 * theta[1]:.5f}")
check(torch.allclose(running.cos(), cos[1:], atol=1e-5) and torch.allclose(running.sin(), sin[1:], atol=1e-5),
      "the running sum of theta_1^i gives RoPE's table of m * theta_i")

# %% [markdown]
# ## 4. Why RoPE breaks past its context
# Over a training context of T tokens, pair i of RoPE turns T·θᵢ rad. Where that is less than a
# full turn, 2π, training showed the model only an arc of the pair's circle. Past T the pair turns
# on, into angles that no training window held.
# The byte recipe has D = 32 and T = 64: at base 10⁴ pairs 0–4 complete a turn and the other 11 do
# not. Pair 8 turns θ₈ = 0.01 rad a token, 0.64 rad in 64 tokens: a tenth of a turn. At 16× the
# context it reaches 10.24 rad, and most positions put it outside the arc it swept in training.
#
# A smaller base turns every pair faster. The last pair turns slowest, and it completes a turn in T
# tokens when base ≤ (T/2π)^(D/(D−2)), the critical base, ≈ 11.9 here: at base 10 every pair shows
# the model its whole circle within 64 tokens. Which of the two bases extrapolates better is
# exercise 12 (docs/exercises.md); `python -m support.pairs` counts the slow pairs of a trained run.
#
# CARoPE (the next step) keeps the running sum but lets each token set its own step: over T tokens,
# pair i reaches Σ_t f(x_t)ⁱ, f the token's ratio. A token with f = 0.9 turns pair 8 by 0.9⁸ = 0.43
# rad, one with f = 0.3 by 0.3⁸ ≈ 0.00007 rad. So a pair can stand nearly still at some tokens and
# turn fast at others, and how far it turns over T tokens depends on the text. Below, with a random
# W (no training yet), pair 8 is slow at most tokens, yet the few fast ones turn it further over each
# row than RoPE's 0.64 rad, and by amounts that differ from row to row.
#
# The picture (out/walkthrough/turns.png), left: the phase each pair reaches over 64 tokens (log
# scale) at base 10⁴ and 10, and in two rows of a CARoPE whose W reads the input. Right: pair 8's
# angle along 1,024 positions at base 10⁴, against the arc of angles it took in the first 64.

# %%
print("\n4. Why RoPE breaks past its context")
D, T = 32, 64  # the byte recipe's head size and training context
P = D // 2  # pairs
phase = pairs.rope_phase(D, T, 10000.0)  # T theta_i over the training context: (P,)
turns = pairs.full_turns(D, T, 10000.0)  # T theta_i >= 2 pi: (P,)
print(f"base 10^4, D = {D}, T = {T}: phase over {T} tokens by pair:",
      " ".join(f"{i}:{v:.3g}" for i, v in enumerate(phase.tolist())))
print(f"  pairs completing a full turn (2 pi = {2 * math.pi:.3f} rad): {turns.nonzero().flatten().tolist()}; "
      f"{pairs.slow_count(D, T, 10000.0)} do not")
check(turns.tolist() == [True] * 5 + [False] * 11 and pairs.slow_count(D, T, 10000.0) == 11,
      "at base 10^4 (D = 32, T = 64) pairs 0-4 complete a turn in training, the other 11 do not")

long = RoPE(GPTConfig(n_layer=1, n_head=1, n_embd=D, block_size=T, pe="rope"))  # carope.py's RoPE at D = 32
cos, sin = long(torch.zeros(1, 16 * T, D))  # positions 0 .. 16T - 1: (16T, P) each
angle = torch.remainder(torch.atan2(sin, cos), 2 * math.pi)  # each pair's angle on its circle, in [0, 2 pi): (16T, P)
swept = (T - 1) * long.theta  # the arc each pair swept over positions 0 .. T - 1: (P,)
outside = (angle[T:] > swept + 1e-4).float().mean(0)  # the share of positions T .. 16T - 1 outside that arc: (P,)
print(f"pair 8: theta_8 = {long.theta[8]:.4f} rad a token, {phase[8]:.2f} rad over {T} tokens "
      f"({phase[8] / (2 * math.pi):.2f} of a turn), {16 * T * long.theta[8]:.2f} rad over {16 * T} (16x)")
print(f"  positions {T}..{16 * T - 1} outside the arc swept in training: pair 8 {outside[8]:.1%}, pair 2 {outside[2]:.1%}")
check(phase[8] < 2 * math.pi < 16 * T * long.theta[8] and outside[8] > 0.9 and outside[2] == 0,
      "at 16x the context, pair 8 spends over 90 % of the new positions at angles training never showed; pair 2 none")

critical = pairs.critical_base(D, T)  # (T / 2 pi)^(D / (D - 2))
print(f"critical base (T / 2 pi)^(D / (D - 2)) = {critical:.2f}; pairs that do not complete a turn at base 10: "
      f"{pairs.slow_count(D, T, 10.0)}, at {critical:.2f}: {pairs.slow_count(D, T, critical)}, "
      f"at {1.01 * critical:.2f}: {pairs.slow_count(D, T, 1.01 * critical)}")
check(pairs.slow_count(D, T, 10.0) == 0, "at base 10 every pair completes a turn within 64 tokens")
check(round(critical, 1) == 11.9 and pairs.slow_count(D, T, critical) == 0 and pairs.slow_count(D, T, 1.01 * critical) == 1,
      "the critical base, about 11.9, is the largest at which every pair turns: 1 % above it the last pair falls short")

g = torch.Generator().manual_seed(4)  # its own random numbers: the later steps' draws stay as they were
ca = CARoPE(GPTConfig(n_layer=1, n_head=1, n_embd=D, block_size=T, pe="carope"))  # one head of D = 32
with torch.no_grad():
    ca.weight.normal_(0.0, 0.3, generator=g)  # a W that reads the input, as step 5 makes one
x = 2 * torch.randn(2, T, D, generator=g)  # two rows of hidden states: (B, T, C)
f = ca.frequencies(x)  # each token's ratio: (B, T, H)
rows = pairs.layer_phase(ca, x, 1)  # sum_t f(x_t)^i over each row: (B, H, P)
slow_at = pairs.slow_share(f, ca.i, T)  # the share of tokens with f(x_t)^i T < 2 pi: (H, P)
print(f"CARoPE: a token with f = 0.9 turns pair 8 by 0.9^8 = {0.9 ** 8:.2f} rad, one with f = 0.3 by 0.3^8 = "
      f"{0.3 ** 8:.1e} rad")
print(f"  with a random W: f over two rows in [{f.min():.3f}, {f.max():.3f}]; pair 8 is slow "
      f"(f^8 * {T} < 2 pi) at {slow_at[0, 8]:.0%} of the tokens")
print(f"  pair 8 reaches {rows[0, 0, 8]:.2f} rad over row 0, {rows[1, 0, 8]:.2f} over row 1 (RoPE, base 10^4: {phase[8]:.2f})")
check(0.5 < slow_at[0, 8] < 1, "with a W that reads the input, pair 8 is slow at most tokens and fast at the others")
cos, sin = ca(x)  # carope.py's own rotation: (B, H, T, P) each
check(torch.allclose(cos[:, :, -1], rows.cos(), atol=1e-4) and torch.allclose(sin[:, :, -1], rows.sin(), atol=1e-4),
      "the phase CARoPE reaches over a row is the sum of its tokens' turns, sum_t f(x_t)^i")
check(rows[:, 0, 8].min() > phase[8] and (rows[0, 0, 8] - rows[1, 0, 8]).abs() > 1.0,
      "over each row the fast tokens turn pair 8 further than RoPE's 0.64 rad, by amounts more than 1 rad apart")

fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
i = torch.arange(P)
for base, style, color in ((10000.0, "o-", "C3"), (10.0, "s-", "C0")):
    left.plot(i, pairs.rope_phase(D, T, base), style, color=color,
              label=f"RoPE, base {base:g}: {pairs.slow_count(D, T, base)} pairs below $2\\pi$")
for row in range(2):
    left.plot(i, rows[row, 0], ".--", color="C2", alpha=0.8,
              label="CARoPE, a random W: $\\Sigma_t f(x_t)^i$ over one row" if row == 0 else None)
left.axhline(2 * math.pi, color="k", lw=1, ls=":", label="$2\\pi$: one full turn")
left.set(yscale="log", xlabel="pair i", ylabel=f"phase reached over T = {T} tokens (rad)",
         title=f"Which pairs complete a turn in training (D = {D}, T = {T})")
right.axhspan(0, swept[8], color="C2", alpha=0.25, label=f"the arc swept in training, 0..{swept[8]:.2f} rad")
right.plot(torch.arange(16 * T), angle[:, 8], ".", color="C3", ms=2, label="pair 8's angle, base $10^4$")
right.axvline(T, color="k", lw=1, ls=":", label=f"the training context, {T}")
right.set(xlabel="position m", ylabel="angle on the circle, mod $2\\pi$ (rad)", ylim=(0, 2 * math.pi),
          title=f"Pair 8 past the training context: {outside[8]:.0%} of positions {T}..{16 * T - 1} at unseen angles")
for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower left" if ax is left else "upper right")
fig.tight_layout()
save(fig, "turns.png")

# %% [markdown]
# ## 5. CARoPE's f, its bounds, and why it starts as RoPE
# CARoPE: f(x_t)_h = 1 / (softplus(x_t W + b)_h + 1), the token's ratio, takes θ₁'s place, and
# φᵢʰ(m) = Σ_{t=0..m} f(x_t)_hⁱ (positions start at 0).
# softplus is positive, so 0 < f < 1: f → 1 where the logit falls, f → 0 where it rises. Then fⁱ
# falls with i, as RoPE's θ₁ⁱ does, and f⁰ = 1: pair 0 turns 1 rad per token whatever the token.
# The project starts from W = 0 and b = softplus⁻¹(base^(2/D) − 1), so f = θ₁ for every token
# (carope.py, "Reading (init)"). CARoPE then counts a token itself, φ(m) = Σ_{t=0..m} θ₁ⁱ =
# (m + 1)·θᵢ, one step ahead of RoPE's m·θᵢ; a shift that q and k share cancels in q·k, so the
# model is RoPE exactly (up to float rounding).

# %%
print("\n5. CARoPE's f, its bounds, and why it starts as RoPE")
cfg = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=32, pe="carope")  # D = 16, P = 8
cr = CARoPE(cfg)
x = torch.randn(1, 32, 32)  # any hidden states: (B, T, C)
f = cr.frequencies(x)  # (B, T, H)
theta_1 = rope_frequencies(cfg.head_dim, cfg.rope_base)[1]
print(f"at init: b = {[round(v, 4) for v in cr.bias.tolist()]}, |W| = {cr.weight.abs().max():.1f}; "
      f"f over {f.numel()} tokens x heads in [{f.min():.6f}, {f.max():.6f}], theta_1 = {theta_1:.6f}")
check(torch.allclose(f, theta_1.expand_as(f)), "at initialisation f(x_t) = theta_1 for every token and head")

with torch.no_grad():
    cr.weight.normal_(0.0, 0.3)  # a W as training might make one; every token now has its own f
x = 2 * torch.randn(1, 32, 32)  # (B, T, C)
f = cr.frequencies(x)  # (B, T, H)
cos, sin = cr(x)  # (B, H, T, P) each
powers = f.unsqueeze(-1) ** cr.i  # f^i: (B, T, H, P)
print(f"with a random W: f in [{f.min():.4f}, {f.max():.4f}]; one token's f^i:",
      [round(v, 4) for v in powers[0, 0, 0].tolist()])
check(bool((f > 0).all() and (f < 1).all()), "0 < f(x_t) < 1")
check(bool((powers[..., 1:] < powers[..., :-1]).all()), "f^i falls with i: pair 0 turns fastest, as in RoPE")
steps = torch.arange(1, 33, dtype=torch.float32)  # phi_0(m) = m + 1 for positions m = 0 .. T - 1
check(torch.allclose(cos[..., 0], steps.cos().expand_as(cos[..., 0]), atol=1e-5),
      "pair 0 turns exactly 1 rad per token, whatever the tokens")

torch.manual_seed(1)
rope_model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=32, pe="rope"))
carope_model = GPT(cfg)
# the same weights; CARoPE's own W and b stay at their init
missing, _ = carope_model.load_state_dict(rope_model.state_dict(), strict=False)
idx = torch.randint(64, (2, 32))  # (B, T) token ids
with torch.no_grad():
    gap = (rope_model(idx)[0] - carope_model(idx)[0]).abs().max()
print(f"{len(missing)} tensors of CARoPE's own (W and b of each layer) at init; "
      f"largest logit difference to RoPE: {gap:.1e}")
check(gap < 1e-5, "a GPT with CARoPE at its initialisation gives RoPE's logits")

# %% [markdown]
# ## 6. The angle between m and n depends on the tokens in between
# A query at m and a key at n differ by φ(m) − φ(n) = Σ_{t=n+1..m} f(x_t)ⁱ: the tokens after n up
# to m set the angle, not only how many there are. Two sequences with the same first and last
# token at the same distance, but different middles, give two different angles. RoPE gives both
# (m − n)·θᵢ.
#
# The picture (out/walkthrough/rotation.png) follows pair 1 of one query, (1, 0) before it turns,
# along each sentence: one arrow per position, labelled with the position and its character.
# Under RoPE the arrows are evenly spaced, θ₁ rad apart, whatever the text. Under CARoPE (with
# step 5's random W, as no training has happened yet) token t turns the arrow f(x_t) further,
# the token's ratio (pair 1 turns by f¹): look at how "cat" and "dog" space their arrows
# differently and leave "sat" at other angles. CARoPE's arrow at position 0 is already turned,
# by f(x_0): its sum starts at t = 0, step 5's one step ahead, which cancels in q·k.

# %%
print("\n6. The angle between m and n depends on the tokens in between")
table = torch.randn(128, 32)  # a made-up embedding for each character (by its code): (vocab, C)
embed = lambda s: table[[ord(c) for c in s]].unsqueeze(0)  # a string -> hidden states: (1, T, C)
n, m = 0, 8  # the key is the first "t", the query the last "s"


def angles(text):
    """The angle between the query at m and the key at n: by the equation, and from CARoPE's
    own rotation as (cos, sin) of phi(m) - phi(n). (H, P) each."""
    x = embed(text)  # (1, T, C)
    f = cr.frequencies(x)[0]  # (T, H)
    angle = (f[n + 1:m + 1].unsqueeze(-1) ** cr.i).sum(0)  # sum_{t=n+1..m} f(x_t)^i: (H, P)
    cos, sin = cr(x)  # (1, H, T, P)
    cos_mn = cos[0, :, m] * cos[0, :, n] + sin[0, :, m] * sin[0, :, n]  # cos(a - b) = cos a cos b + sin a sin b
    sin_mn = sin[0, :, m] * cos[0, :, n] - cos[0, :, m] * sin[0, :, n]  # sin(a - b) = sin a cos b - cos a sin b
    return angle, cos_mn, sin_mn


cat, dog = angles("the cat sat"), angles("the dog sat")
for text, (angle, _, _) in (("the cat sat", cat), ("the dog sat", dog)):
    print(f"  {text!r}: pair 1 turns from {text[n]!r} at {n} to {text[m]!r} at {m} by {angle[0, 1]:.4f} rad in head 0, "
          f"{angle[1, 1]:.4f} in head 1 (RoPE: {(m - n) * theta_1:.4f})")
check(all(torch.allclose(c, a.cos(), atol=1e-5) and torch.allclose(s, a.sin(), atol=1e-5) for a, c, s in (cat, dog)),
      f"CARoPE turns the query at {m} against the key at {n} by sum_(t={n + 1}..{m}) f(x_t)^i")
check((cat[0] - dog[0]).abs().max() > 0.01, "the same distance with different tokens in between gives different angles")

pair, P = 1, cfg.head_dim // 2  # the picture follows pair 1 (its step is f itself) of head 0
q = torch.zeros(cfg.head_dim)
q[pair] = 1.0  # a query whose pair 1 is (1, 0) before it turns: (D,)


def turned(cos, sin):
    """Pair 1 of q turned by rotate at every position (head 0): (T, 2), and its angle: (T,)."""
    v = rotate(q.expand(1, 1, cos.size(-2), cfg.head_dim), cos, sin)[0, 0]  # (T, D)
    v = torch.stack([v[:, pair], v[:, pair + P]], dim=-1)  # (q_1, q_{1+P}) at each position: (T, 2)
    return v, torch.atan2(v[:, 1], v[:, 0])


wrap = lambda a: torch.remainder(a + math.pi, 2 * math.pi) - math.pi  # an angle into [-pi, pi)
texts = ("the cat sat", "the dog sat")
either = [a if a == b else f"{a}/{b}" for a, b in zip(*texts)]  # RoPE's arrows are the same for both
panels = [("RoPE, either sentence", either, RoPE(rope_cfg)(torch.zeros(1, 11, 16)))]  # (title, text, (cos, sin))
panels += [(f"CARoPE, {text!r}", text, cr(embed(text))) for text in texts]
drawn = [turned(cos, sin) for _, _, (cos, sin) in panels]  # (vectors (T, 2), angles (T,)) for each panel
steps = [wrap(angle[1:] - angle[:-1]) for _, angle in drawn]  # how far each token turns pair 1: (T - 1,) each
rope_angle, rope_step = drawn[0][1], steps[0]
check(rope_angle[0].abs() < 1e-6 and torch.allclose(rope_step, theta_1.expand_as(rope_step), atol=1e-5),
      "RoPE's arrows for pair 1 start at angle 0 and turn theta_1 further at every token")
f_texts = [cr.frequencies(embed(text))[0, :, 0] for text in texts]  # head 0's f(x_t) along each sentence: (T,)
check(all(torch.allclose(angle[0], f_t[0] ** pair, atol=1e-5) and torch.allclose(step, f_t[1:] ** pair, atol=1e-5)
          for (_, angle), step, f_t in zip(drawn[1:], steps[1:], f_texts)),
      "CARoPE's arrows for pair 1 start at f(x_0) and turn f(x_t), the token's ratio, further at token t")

fig, axes = plt.subplots(1, 3, figsize=(14, 5.4))
for ax, (title, text, _), (v, _), step in zip(axes, panels, drawn, steps):
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.85"))
    before = dict(arrowstyle="->", color="0.6", ls="--", shrinkA=0, shrinkB=0)
    ax.annotate("", xy=(1, 0), xytext=(0, 0), arrowprops=before)  # the query's pair 1 before any turn
    for t, c in enumerate(text):
        color = plt.cm.viridis(t / (len(text) - 1))
        ax.annotate("", xy=v[t].tolist(), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="->", color=color, lw=2.5 if t in (n, m) else 1.2, shrinkA=0, shrinkB=0))
        ax.text(*(1.17 * v[t]).tolist(), f"{t} {c if c != ' ' else '␣'}", color=color, ha="center", va="center")
    turn = step[n:m].sum()  # the steps of tokens n + 1 .. m
    ax.set_title(f"{title}\nfrom {texts[0][n]!r} at {n} to {texts[0][m]!r} at {m} (bold): {turn:.3f} rad", fontsize=11)
    ax.set(xlim=(-1.4, 1.4), ylim=(-1.4, 1.4), aspect="equal", xlabel="q$_1$", ylabel="q$_{1+P}$")
fig.suptitle("Pair 1 of one query, (1, 0) before turning (dashed), at positions 0..10 of each sentence\n"
             f"RoPE turns it $\\theta_1$ = {theta_1:.3f} rad at every token; "
             "CARoPE turns it $f(x_t)$, the token's ratio, at token $t$")
fig.tight_layout()
save(fig, "rotation.png")

# %% [markdown]
# ## 7. Causality: a later token leaves earlier phases alone
# φ(m) sums over t ≤ m only, so a token at position 10 cannot move the phases of positions 0..9,
# and with causal attention it cannot change the model's output there either. Rotating every
# token before attention is what lets CARoPE use ordinary causal (flash) attention.

# %%
print("\n7. Causality: a later token leaves earlier phases alone")
torch.manual_seed(2)
model = GPT(cfg)  # CARoPE, 2 layers x 2 heads x 32 wide
with torch.no_grad():
    for block in model.transformer.h:
        block.attn.rotary.weight.normal_(0.0, 0.3)  # input dependence switched on in every layer
model.eval()
idx = torch.randint(64, (1, 16))  # (B, T)
later = idx.clone()
later[0, 10] = (idx[0, 10] + 1) % 64  # another token at position 10 only
with torch.no_grad():
    layer0 = model.transformer.h[0]
    cos_a, _ = layer0.attn.rotary(layer0.ln_1(model.transformer.wte(idx)))  # layer 0's phases: (B, H, T, P)
    cos_b, _ = layer0.attn.rotary(layer0.ln_1(model.transformer.wte(later)))
    logits_a, logits_b = model(idx)[0], model(later)[0]  # (B, T, vocab)
before, after = (cos_a - cos_b).abs()[:, :, :10].max(), (cos_a - cos_b).abs()[:, :, 10:].max()
print(f"token 10 changed: layer 0's cos(phase) moves by {before:.1e} at positions 0..9, by {after:.3f} at 10..15")
check(before < 1e-6 and after > 1e-3, "changing token 10 changes the phases from position 10 on, and none before")
before, after = (logits_a - logits_b).abs()[:, :10].max(), (logits_a - logits_b).abs()[:, 10:].max()
print(f"the logits move by {before:.1e} at positions 0..9, by {after:.3f} at 10..15")
check(before < 1e-6 and after > 1e-3, "the model's outputs before position 10 do not see token 10")

# %% [markdown]
# ## 8. The KV cache keeps a running phase
# Generating one token at a time, RoPE can look its next row up in a table. CARoPE has no table:
# the next phase depends on every token so far. So each layer's `LayerCache` keeps the last
# token's phase, and the next token's is that phase + f(x_t)ⁱ. It must equal the phase computed
# over the whole sequence again, and so must the logits.

# %%
print("\n8. The KV cache keeps a running phase")
cache = model.new_cache()  # one LayerCache per layer
with torch.no_grad():
    model(idx[:, :8], cache=cache)  # the prompt, tokens 0..7, in one call (the prefill)
    worst_phase = worst_logits = 0.0
    for t in range(8, 16):  # then one token per call
        step_logits, _ = model(idx[:, t:t + 1], cache=cache)  # (B, 1, vocab)
        full_logits, _ = model(idx[:, :t + 1])  # everything again: (B, t + 1, vocab)
        cos_full, sin_full = layer0.attn.rotary(layer0.ln_1(model.transformer.wte(idx[:, :t + 1])))  # (B, H, t+1, P)
        phase = cache[0].phase  # layer 0's running phase after token t: (B, H, P)
        worst_phase = max(worst_phase, (phase.cos() - cos_full[:, :, -1]).abs().max().item(),
                          (phase.sin() - sin_full[:, :, -1]).abs().max().item())
        worst_logits = max(worst_logits, (step_logits[:, -1] - full_logits[:, -1]).abs().max().item())
print(f"{type(cache[0]).__name__} of layer 0 after {cache[0].pos} tokens: k {tuple(cache[0].k.shape)}, "
      f"phase {tuple(cache[0].phase.shape)} = (B, H, P)")
print(f"cached against recomputed, tokens 8..15: phase (cos, sin) {worst_phase:.1e}, logits {worst_logits:.1e}")
check(isinstance(cache[0], LayerCache) and cache[0].pos == 16, "the cache has seen all 16 tokens")
check(worst_phase < 1e-5, "the cache's running phase equals the phase recomputed over the whole sequence")
check(worst_logits < 1e-5, "cached generation gives the logits of the full recomputation")
sampled = []
for use_cache in (True, False):
    torch.manual_seed(3)  # the same random draws for both
    sampled.append(model.generate(idx[:, :8], 12, temperature=1.0, use_cache=use_cache)[0, 8:].tolist())
print("12 tokens sampled with the cache / without:", sampled[0], sampled[1], sep="\n  ")
check(sampled[0] == sampled[1], "generate samples the same tokens with and without the cache")

# %% [markdown]
# ## 9. carope-static against carope: what input dependence adds
# The ablation the paper lacks: `pe="carope-static"` keeps a learned ratio per head,
# f_h = 1/(softplus(b_h) + 1), and drops W. Every token then adds the same f_hⁱ, so the phase is
# (m + 1)·f_hⁱ: RoPE with base f_h^(−D/2), one base per head, and the angle between m and n
# depends on m − n again. What carope adds is W (H·C numbers per layer): an f for each token.

# %%
print("\n9. carope-static against carope: what input dependence adds")
static = CARoPE(cfg, input_dependent=False)
with torch.no_grad():
    static.bias[1] = 0.5  # head 0 keeps its init (RoPE's base 10000), head 1 gets another base
x_cat, x_dog = embed("the cat sat"), embed("the dog sat")  # (1, T, C)
cos_cat, sin_cat = static(x_cat)  # (1, H, T, P)
cos_dog, _ = static(x_dog)
f_h = static.frequencies(x_cat)[0, 0]  # one f per head: (H,)
bases = f_h ** (-cfg.head_dim / 2)  # f_h = base^(-2/D)
print(f"carope-static: f_h = {[round(v, 4) for v in f_h.tolist()]}, "
      f"i.e. RoPE bases {[round(v) for v in bases.tolist()]}")
print(f"phases of 'the cat sat' against 'the dog sat': carope-static {(cos_cat - cos_dog).abs().max():.1e}, "
      f"carope {(cr(x_cat)[0] - cr(x_dog)[0]).abs().max():.3f}")
check(torch.equal(cos_cat, cos_dog), "carope-static gives every input the same phases")
check((cr(x_cat)[0] - cr(x_dog)[0]).abs().max() > 1e-3, "carope's phases change with the input")
T = x_cat.size(1)


def rope_phases(base):
    """RoPE's (cos, sin) with this base for positions 0 .. T: (T + 1, P) each."""
    rope = RoPE(GPTConfig(n_layer=1, n_head=1, n_embd=cfg.head_dim, block_size=T + 1, rope_base=base, pe="rope"))
    return rope(torch.zeros(1, T + 1, cfg.head_dim))


rope_h = [rope_phases(base) for base in bases.tolist()]  # RoPE's row m + 1 is carope-static's row m (step 5's offset)
check(all(torch.allclose(cos_cat[0, h], c[1:], atol=1e-4) and torch.allclose(sin_cat[0, h], s[1:], atol=1e-4)
          for h, (c, s) in enumerate(rope_h)), "each head of carope-static is RoPE with that head's base")
extra = {pe: sum(p.numel() for p in CARoPE(cfg, input_dependent=(pe == "carope")).parameters())
         for pe in ("carope-static", "carope")}
print(f"parameters per layer beyond RoPE at H = {cfg.n_head}, C = {cfg.n_embd}: {extra}")
check(extra == {"carope-static": cfg.n_head, "carope": cfg.n_head * cfg.n_embd + cfg.n_head},
      "carope-static adds H numbers per layer (b), carope H*C + H (W and b)")

# %% [markdown]
# ## 10. Train a little, then look at what f learned
# A character-level model of Genesis (from the embedded King James corpus): 2 layers x 2 heads x
# 64 wide, 300 steps of 16 windows of 64 characters, with the model's own AdamW
# (`configure_optimizers`). Why not `train.py`: its default run trains a 4-layer model on bytes for
# 1,000 steps (minutes); this step must take seconds. With 71 characters a step is cheap.
# `python train.py` is the real run (README).
#
# Below, under each passage, f(x_t) of each layer and head for every character: digit d means
# d/10 <= f < (d+1)/10, and training started from 5 (θ₁ = 0.5623 at D = 32). A character with a
# higher f adds more to the phase of pairs i >= 1, a lower f less. Layer 0's x_t is the
# character's embedding alone, so there f is one number per character; context enters from
# layer 1 on. One small run and one seed: read the numbers as what this run did, no more.
#
# The picture (out/walkthrough/clock.png) is the phase clock along Genesis 1:3 for pair 3 of
# head 1. Top: the phase against the position. RoPE's is a straight line, m·θ₁³ (checked); the
# trained CARoPE's slope at each character is that character's f(x_t)³ (checked), so the line
# steepens and flattens with the text. Bottom: those slopes, one per character. Look at where the
# steep steps fall. In this run they fall on the spaces, and in layer 1 the clock slows inside a
# word and jumps at a space, as if it counted words more than characters (the mean steps on a
# space and on other characters are printed above the picture). Pair 3 shows it more plainly than
# pair 1, whose slope is f itself: the cube widens the gap between a small f and a large one.
# Set `pair` or `head` below and run the cell again.

# %%
print("\n10. Train a little, then look at what f learned")
genesis = readers.kjv_documents(readers.kjv_path())[0]  # book 1 as one string
chars = sorted(set(genesis))
stoi = {c: j for j, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in genesis])
split = int(0.9 * len(data))
train_data, val_data = data[:split], data[split:]  # the last tenth of Genesis is held out
torch.manual_seed(1337)
lm = GPT(GPTConfig(vocab_size=len(chars), n_layer=2, n_head=2, n_embd=64, block_size=64, pe="carope"))  # D = 32
optimizer = lm.configure_optimizers(weight_decay=0.1, learning_rate=3e-3, betas=(0.9, 0.95), device_type="cpu")
B, T = 16, 64


def windows(source, generator=None):
    """B random windows of T characters and the characters after them: (B, T) each."""
    start = torch.randint(len(source) - T - 1, (B,), generator=generator)
    return (torch.stack([source[s:s + T] for s in start]), torch.stack([source[s + 1:s + T + 1] for s in start]))


val_x, val_y = windows(val_data, torch.Generator().manual_seed(0))  # the same held-out windows before and after
with torch.no_grad():
    val_before = lm(val_x, val_y)[1].item()
t0 = time.time()
for step in range(300):
    x, y = windows(train_data)
    _, loss = lm(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
    optimizer.step()
lm.eval()
with torch.no_grad():
    val_after = lm(val_x, val_y)[1].item()
print(f"{len(chars)} characters, {len(train_data):,} to train on; 300 steps in {time.time() - t0:.1f} s; "
      f"held-out loss {val_before:.3f} (ln {len(chars)} = {math.log(len(chars)):.3f}) -> {val_after:.3f}")
check(val_after < val_before - 1.5, "300 steps bring the held-out loss well below a uniform guess")


def frequencies_of(text):
    """f(x_t) of every layer for each character of text, read in windows of T (the training
    context) as CARoPE computes it: (n_layer, len(text), H)."""
    ids = torch.tensor([stoi[c] for c in text]).split(T)  # windows of at most T characters
    f = []
    with torch.no_grad():
        for window in ids:
            x = lm.transformer.wte(window.unsqueeze(0))  # (1, T, C)
            f.append([])
            for block in lm.transformer.h:
                f[-1].append(block.attn.rotary.frequencies(block.ln_1(x))[0])  # this layer's x_t: (T, H)
                x = block(x)
    return torch.stack([torch.cat(layer) for layer in zip(*f)])  # (n_layer, len(text), H)


passages = ("And God said, Let there be light: and there was light.",  # Genesis 1:3, trained on
            genesis[split + 1000:split + 1060].replace("\n", " "))  # 60 held-out characters
for text in passages:
    f = frequencies_of(text)  # (n_layer, T, H)
    print(f"\n  {'':15}{text}")
    for layer in range(f.size(0)):
        for h in range(f.size(2)):
            print(f"  layer {layer} head {h} " + "".join(str(min(int(10 * v), 9)) for v in f[layer, :, h].tolist()))

held_out = genesis[split:]  # the held-out tenth
f = frequencies_of(held_out)  # (n_layer, characters, H)
kinds = {"space": [c == " " for c in held_out], "letter": [c.isalpha() for c in held_out],
         "other": [not (c == " " or c.isalpha()) for c in held_out]}
print(f"\nmean f (min..max) over {len(held_out):,} held-out characters:")
for layer in range(f.size(0)):
    for name, mask in kinds.items():
        fk = f[layer, torch.tensor(mask)]  # (characters of this kind, H)
        print(f"  layer {layer} {name:6} ({len(fk):6,}): " + ", ".join(
            f"head {h} {fk[:, h].mean():.3f} ({fk[:, h].min():.3f}..{fk[:, h].max():.3f})" for h in range(f.size(2))))
ids = torch.tensor([stoi[c] for c in held_out])  # (T,)


def spread_within_characters(f_layer):
    """The largest range of f over the occurrences of one character (any character, any head)."""
    return max((f_layer[ids == j].amax(0) - f_layer[ids == j].amin(0)).max().item() for j in ids.unique().tolist())


same_char = [spread_within_characters(f[layer]) for layer in range(f.size(0))]
print("largest spread of f within one character, by layer:", [round(v, 4) for v in same_char])
check(same_char[0] < 1e-6, "in layer 0, f is a function of the character alone")
check(same_char[1] > 0.01, "in layer 1, the same character gets different f in different contexts")

pair, head = 3, 1  # the clock drawn: pair 3 (its step is f^3) of head 1, in each layer
sentence = passages[0]  # Genesis 1:3
with torch.no_grad():  # each layer's (cos, sin) as the model computes them: (1, H, T, P) each
    x = lm.transformer.wte(torch.tensor([[stoi[c] for c in sentence]]))  # (1, T, C)
    rotations = []
    for block in lm.transformer.h:
        rotations.append(block.attn.rotary(block.ln_1(x)))
        x = block(x)
rope_cos, rope_sin = RoPE(lm.config)(x)  # RoPE at the same head size, D = 32: (T, P) each


def clock(cos, sin):
    """Pair `pair`'s phase along the sentence, read back from (cos, sin) of shape (T, P): the first
    angle, then each token's step added on (every step is below pi, so no turn is lost): (T,)."""
    angle = torch.atan2(sin[:, pair], cos[:, pair])
    return torch.cat([angle[:1], angle[0] + torch.cumsum(wrap(angle[1:] - angle[:-1]), dim=0)])


rope_clock = clock(rope_cos, rope_sin)
carope_clocks = [clock(cos[0, head], sin[0, head]) for cos, sin in rotations]  # one per layer: (T,) each
f_sentence = frequencies_of(sentence)[:, :, head]  # (n_layer, T)
theta_1_32 = rope_frequencies(lm.config.head_dim, lm.config.rope_base)[1]  # RoPE's ratio at D = 32
positions = torch.arange(len(sentence), dtype=torch.float32)
space = torch.tensor([c == " " for c in sentence])
print(f"pair {pair} of head {head} along {sentence!r} ({len(sentence)} characters): "
      f"RoPE steps {theta_1_32 ** pair:.3f} rad at every character")
for layer, f_layer in enumerate(f_sentence):
    print(f"  CARoPE layer {layer}: mean step {(f_layer[space] ** pair).mean():.3f} rad on a space, "
          f"{(f_layer[~space] ** pair).mean():.3f} on another character; phase at the end "
          f"{carope_clocks[layer][-1]:.2f} rad (RoPE {rope_clock[-1]:.2f})")
check(torch.allclose(rope_clock, positions * theta_1_32 ** pair, atol=1e-4),
      f"RoPE's clock is a straight line along the sentence: m * theta_1^{pair} at position m")
check(all(torch.allclose(c, torch.cumsum(f_l ** pair, dim=0), atol=1e-4) for c, f_l in zip(carope_clocks, f_sentence)),
      f"the trained CARoPE's clock is sum_(t<=m) f(x_t)^{pair}: its slope at a character is its ratio^{pair}")

fig, (top, bottom) = plt.subplots(2, 1, figsize=(15, 7.5), sharex=True, height_ratios=(3, 2))
top.plot(positions, rope_clock, "k--", label=f"RoPE: $m\\,\\theta_1^{pair}$, $\\theta_1$ = {theta_1_32:.3f}")
bottom.axhline(theta_1_32 ** pair, color="k", ls="--", label=f"RoPE: $\\theta_1^{pair}$ at every character")
for layer, (c, f_layer) in enumerate(zip(carope_clocks, f_sentence)):
    top.plot(positions, c, ".-", color=f"C{layer}",
             label=f"CARoPE (trained), layer {layer}, head {head}: $\\Sigma_{{t \\leq m}}\\, f(x_t)^{pair}$")
    bottom.plot(positions, f_layer ** pair, "o-", color=f"C{layer}", ms=4, lw=0.8,
                label=f"CARoPE, layer {layer}: $f(x_t)^{pair}$, $f$ the token's ratio")
top.set(ylabel=f"phase of pair {pair} (rad)",
        title="The phase clock along Genesis 1:3 after step 10's 300 training steps: "
              "RoPE ticks evenly, CARoPE's slope changes with the text")
bottom.set(ylabel="slope: the step at\neach character (rad)", ylim=(0, 1.2),
           xlabel="the sentence, one character per position (␣ is a space)")
bottom.set_xticks(positions.tolist(), [c if c != " " else "␣" for c in sentence], fontsize=10)
for ax in (top, bottom):
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9, ncol=3)
fig.tight_layout()
save(fig, "clock.png")

# %% [markdown]
# ## 11. Where to go next
# - carope.py, top to bottom: the code behind every step above, the paper's equations beside it.
# - docs/exercises.md: which tokens slow the clock, what x_t should be, the initialisation,
#   carope against carope-static, the pair layout, the fused kernel's backward, TAPA's exponent,
#   the synthetic tasks, and which RoPE base breaks (step 4); each with its command and a measured
#   outcome to check against.
# - tasks.py: five synthetic tasks on which the encodings part ways (copy, flip-flop, counting,
#   parity, mqar), each trained at one length and tested at longer ones; `python tasks.py` prints an
#   example of each; `python train.py --task copy` trains on one, with accuracy by length.
# - `python train.py` (CARoPE on bytes, its bits per byte at 1x..16x beside RoPE's and CARoPE's
#   from the committed byte sweep), `python compare.py --pe rope,carope` (a table with spread),
#   `python sample.py --ckpt out/ckpt.pt` (text, with the KV cache of step 8).

# %%
print("\n11. Where to go next")
root = Path(carope.__file__).resolve().parent  # the repository
exercises = (root / "docs" / "exercises.md").read_text(encoding="utf-8")
named = ["carope.py", "tasks.py", "train.py", "compare.py", "sample.py"]
n_exercises = len(re.findall(r"^## [0-9]+[.] ", exercises, flags=re.M))  # one heading an exercise
print(f"docs/exercises.md: {n_exercises} exercises; files named here:", {name: (root / name).is_file() for name in named})
check(n_exercises > 0 and all((root / name).is_file() for name in named),
      "docs/exercises.md has its exercises and the files named here exist")
print(f"\nwalkthrough: {len(CHECKS)} checks passed in {time.time() - started:.0f} s")
