"""
A GPT-2 style language model with a one-word switch between positional encodings:

    nope, learned, sinusoidal, rope, carope, carope-static, carope-embed, tapa, selective

The point of the file is CARoPE (Context-aware Rotary Position Embedding, arXiv 2507.23083).
RoPE rotates each (q, k) pair i at position m by the phase phi_i(m) = m * theta_i with
theta_i = base^(-2i/D): a geometric spectrum whose ratio theta_1 = base^(-2/D) is the same for
every token. Since theta_i = theta_1^i, the phase is also a running sum over the tokens so far,
sum_{t=0..m} theta_1^i = (m + 1) * theta_1^i (positions start at 0; the extra step is the same for
q and k, so it cancels in q . k). CARoPE replaces the fixed ratio theta_1 by a ratio f(x_t) that
each token t computes from its own hidden state, once per head:

    f(x_t)_h    = 1 / (softplus(x_t W + b)_h + 1)          in (0, 1), the token's ratio
    phi_i^h(m)  = sum_{t<=m} f(x_t)_h ^ i

so the angle between a query at m and a key at n, sum_{t=n+1..m} f(x_t)^i, depends on the
tokens in between, not only on the distance m - n.

Read it top to bottom: the shared pieces (rope_frequencies, rotate), RoPE, CARoPE, attention,
MLP, block, GPTConfig, GPT; the other input-dependent encodings (Selective RoPE, TAPA) come last.
Shapes: B batch, T tokens, C = n_embd, H = n_head, D = head_dim = C/H, P = D/2 pairs.
Where a paper leaves a choice open, the choice this project made is marked "Reading:".
"""

import inspect
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch.nn import functional as F

from support.carope_triton import carope_rotate, use_fused  # the fast path of CARoPE's rotation (CUDA)
from support.devices import peak_flops  # the GPU's peak bf16 flop/s, for MFU

PE_CHOICES = ("nope", "learned", "sinusoidal", "rope", "carope", "carope-static", "carope-embed", "tapa", "selective")
ROTARY_PE = ("rope", "carope", "carope-static", "carope-embed", "selective")  # the ones that rotate q and k
CAROPE_INITS = ("rope", "zero")  # CARoPE's initial bias b: RoPE's ratio theta_1, or b = 0 (exercise 3)
SINUSOIDAL_SCALE = 0.02  # the fixed table's amplitude relative to Vaswani's (see GPT.forward)


# -----------------------------------------------------------------------------
# Positional encodings: the shared pieces


def rope_frequencies(dim, base):
    """theta_i = base^(-2i/dim) for i = 0 .. dim/2 - 1 (float32, shape (dim/2,)).

    dim = D for the rotations (P frequencies), dim = C for the sinusoidal table.
    """
    i = torch.arange(dim // 2, dtype=torch.float32)
    return base ** (-2.0 * i / dim)


def rotate(x, cos, sin):
    """Rotate each pair (x_i, x_{i+P}) of x by the phase whose cos and sin are given.

    The one rotation shared by RoPE, CARoPE and Selective RoPE. Reading (layout): pairs are
    half-split (pair i = dims i and i + P), as Selective RoPE's code does; any layout works
    as long as q and k, and RoPE and CARoPE, agree.
    x: (B, H, T, D); cos, sin: float32, broadcastable to (B, H, T, P).
    The arithmetic is float32 (phases reach thousands of radians), the result has x's dtype.
    """
    half = x.size(-1) // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    # [x1', x2'] = [x1 cos(phi) - x2 sin(phi), x1 sin(phi) + x2 cos(phi)]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def no_autocast(x):
    """A context in which autocast is off, so the phase maths below stays in float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def sinusoidal_table(T, C, device=None):
    """Vaswani et al.: PE(pos, 2i) = sin(pos * 10000^(-2i/C)), PE(pos, 2i+1) = cos(same).

    The same frequencies as RoPE's, over the model width; computed for any length T.
    """
    phase = torch.arange(T, dtype=torch.float32, device=device)[:, None] * rope_frequencies(C, 10000.0).to(device)
    return torch.stack((phase.sin(), phase.cos()), dim=-1).view(T, C)  # interleave sin, cos: (T, C)


# -----------------------------------------------------------------------------
# Positional encodings that rotate q and k. Each returns (cos, sin) of its phases.
# (The third, Selective RoPE, is in the last section, with TAPA.)


class RoPE(nn.Module):
    """RoPE (Su et al., 2021): phi_i(m) = m * theta_i, theta_i = base^(-2i/D).

    cos and sin are tabulated for block_size positions and the table grows when a longer
    sequence arrives (evaluation beyond the training context, generation).
    """

    def __init__(self, config):
        super().__init__()
        self.register_buffer("theta", rope_frequencies(config.head_dim, config.rope_base), persistent=False)
        self._build_cache(config.block_size)

    def _build_cache(self, T):
        phase = torch.arange(T, dtype=torch.float32, device=self.theta.device)[:, None] * self.theta  # m * theta_i: (T, P)
        self.register_buffer("cos_cached", phase.cos(), persistent=False)
        self.register_buffer("sin_cached", phase.sin(), persistent=False)

    def forward(self, x, cache=None):
        start = 0 if cache is None else cache.pos  # generating: x's first token sits at position pos
        end = start + x.size(1)
        if end > self.cos_cached.size(0):
            self._build_cache(max(end, 2 * self.cos_cached.size(0)))  # doubling: rare rebuilds when generating
        return self.cos_cached[start:end], self.sin_cached[start:end]  # (T, P) each, broadcast over B and H


class CARoPE(nn.Module):
    """CARoPE: a per-token, per-head ratio f(x_t)_h replaces RoPE's fixed ratio theta_1.

    Reading (x_t): x_t is this attention layer's own input, the normalised hidden state that
    also feeds the q/k/v projection, and each layer has its own W and b.
    Reading (i):   pairs i = 0 .. P - 1, so pair 0 turns 1 rad per token, as in RoPE.
    Reading (init): W = 0 and b = softplus^-1(base^(2/D) - 1), so f = base^(-2/D) = theta_1 for
                   every token and the model starts as the RoPE model exactly. carope_init="zero"
                   starts from b = 0 instead, f = 1/(1 + ln 2) = 0.591: RoPE with the ratio 0.591,
                   near theta_1 = 0.562 at D = 32 but far from theta_1 = 0.750 at D = 64.
    input_dependent=False is the "carope-static" ablation: f_h = 1/(softplus(b_h) + 1), a learned
    per-head ratio with no W, initialised the same way. "carope-embed" is the paper's literal words,
    "the embedding of the token at position t": every layer computes f from the token embedding
    wte(x_t) itself (GPT.forward passes it in), each with its own W. Its f depends on token t alone,
    never on the tokens before it; and the embedding is ~0.02 in scale against the normalised
    input's ~1, so W must grow about 50-fold (against weight decay) for the same effect.
    """

    def __init__(self, config, input_dependent=True):
        super().__init__()
        n_head, head_dim = config.n_head, config.head_dim
        softplus_b = config.rope_base ** (2.0 / head_dim) - 1.0  # softplus(b) = 1/f - 1 with f = theta_1
        # softplus^-1(y) = log(e^y - 1) = y + log(1 - e^-y), the second form without overflow for a huge base;
        # -0.9267 for D=64, base 1e4
        b0 = softplus_b + math.log(-math.expm1(-softplus_b)) if config.carope_init == "rope" else 0.0
        self.bias = nn.Parameter(torch.full((n_head,), b0))
        self.weight = nn.Parameter(torch.zeros(n_head, config.n_embd)) if input_dependent else None
        self.register_buffer("i", torch.arange(head_dim // 2, dtype=torch.float32), persistent=False)

    def frequencies(self, x):
        """f(x_t)_h = 1 / (softplus(x_t W + b)_h + 1), float32, (B, T, H): each token's ratio per head."""
        B, T, C = x.size()
        with no_autocast(x):  # Reading (precision): f, f^i, the sums, cos and sin all in float32
            if self.weight is None:
                logits = self.bias.float().expand(B, T, -1)  # b_h, the same for every token
            else:
                # Reading (TF32): this one small matmul runs in float64, out of TF32's reach (MPS: float32);
                # why, with the numbers: tests/test_model.py::test_f_is_out_of_tf32
                wide = torch.float32 if x.device.type == "mps" else torch.float64
                logits = F.linear(x.to(wide), self.weight.to(wide), self.bias.to(wide)).float()  # x_t W + b: (B, T, H)
            return 1.0 / (F.softplus(logits) + 1.0)  # f(x_t)_h = 1 / (softplus(x_t W + b)_h + 1)

    def forward(self, x, cache=None):
        with no_autocast(x):
            powers = self.frequencies(x).unsqueeze(-1) ** self.i  # f(x_t)_h^i: (B, T, H, P)
            phase = torch.cumsum(powers, dim=1)  # phi_i^h(m) = sum_{t<=m} f(x_t)_h^i
            if cache is not None:  # generating: carry on from the tokens before x
                if cache.phase is not None:
                    phase = cache.phase.unsqueeze(1) + phase  # phi(m) = phi(m-1) + f(x_m)^i
                cache.phase = phase[:, -1]  # the last token's phase: (B, H, P)
            phase = phase.transpose(1, 2)  # (B, H, T, P), the layout of q and k
            return phase.cos(), phase.sin()


def make_rotary(config):
    """The module that gives (cos, sin) for the config's encoding, or None if q, k are not rotated."""
    if config.pe == "rope":
        return RoPE(config)
    if config.pe in ("carope", "carope-static", "carope-embed"):
        return CARoPE(config, input_dependent=(config.pe != "carope-static"))
    if config.pe == "selective":
        return SelectiveRoPE(config)
    return None


# -----------------------------------------------------------------------------
# The transformer


@dataclass
class LayerCache:
    """What one attention layer keeps between generation steps, so a step runs on the new token only.

    The first call with a cache takes the whole prompt (the prefill), every later call one token.
    k, v:  keys and values of every token so far, (B, H, T, D). Keys are stored rotated (RoPE,
           CARoPE, Selective): a key's rotation depends only on tokens up to it, so it never
           changes. TAPA's keys are raw; its score takes |m - n| from the positions.
    pos:   tokens so far, i.e. the position of the next token: RoPE's offset, TAPA's m, the row
           of the learned or sinusoidal table.
    phase: the running phase of the last token, (B, H, P). CARoPE: phi_i^h, so the next token's
           is phase + f(x_t)_h^i (no table: it depends on every token before). Selective: the
           running sum of rates (its phase divided by theta_i).
    rates: Selective: the last kernel-1 rates before its causal convolution, (B, H*P, kernel-1).
    """
    k: Optional[torch.Tensor] = None
    v: Optional[torch.Tensor] = None
    pos: int = 0
    phase: Optional[torch.Tensor] = None
    rates: Optional[torch.Tensor] = None

    def append(self, k, v):
        """Add this call's keys and values; returns all of them, (B, H, pos, D)."""
        if self.k is None:
            self.k, self.v = k, v
        elif k.size(2) == 1:
            self.k, self.v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        else:
            raise ValueError(f"a LayerCache takes a whole prompt once, then one token per call; got "
                             f"{k.size(2)} tokens after {self.pos}: start a new cache for a new prompt")
        self.pos += k.size(2)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.rotary = make_rotary(config)  # RoPE / CARoPE / Selective RoPE, each layer its own
        self.fused = config.fused_carope and isinstance(self.rotary, CARoPE)
        self.tapa = (config.tapa_theta, config.tapa_alpha, config.tapa_chunk) if config.pe == "tapa" else None

    def forward(self, x, cache=None, source=None):
        """source: what CARoPE computes f from, if not x (carope-embed: the token embeddings, (B, T, C))."""
        B, T, C = x.size()  # batch, sequence length, width (n_embd)
        source = x if source is None else source
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        if self.fused and cache is None and use_fused(q):  # use_fused: the kernel passed its self-check
            # the same rotation as below, fused into one Triton kernel (support/carope_triton.py): the
            # powers, running sums, cos and sin never leave the GPU's registers
            q, k = carope_rotate(q, k, self.rotary.frequencies(source))
        elif self.rotary is not None:
            cos, sin = self.rotary(source, cache)  # source: this layer's own (normalised) input, CARoPE's x_t
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        # A whole sequence (training, or a generation's prompt) is causal; one new token sees every key.
        # Decided from the cache, a Python value: a test on sizes would be a symbolic bool once
        # torch.compile marks T dynamic, and split the compiled graph there.
        causal = cache is None or cache.pos == 0
        if cache is not None:  # generating: the keys and values of the tokens before join: (B, H, pos, D)
            k, v = cache.append(k, v)
        dropout_p = self.dropout if self.training else 0.0
        if self.tapa is not None:
            theta, alpha, chunk = self.tapa
            y = tapa_attention(q, k, v, theta, alpha, chunk, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, source=None):
        x = x + self.attn(self.ln_1(x), cache, source)  # pre-norm: attention (and CARoPE) read ln_1(x)
        x = x + self.mlp(self.ln_2(x))
        return x


# -----------------------------------------------------------------------------
# Configuration and presets

# The paper's models (context 512). Reading: GPT-Small has 12 heads; the paper's "10 heads"
# gives a non-integer head size at width 768. "nano" trains on a laptop CPU in minutes.
PRESETS = {
    "nano": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "bytes": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=320),  # 257 UTF-8 ids, padded
    "task": dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=32),  # tasks.py's (train.py --task)
    "gpt-tiny": dict(n_layer=6, n_head=8, n_embd=512, block_size=512),
    "gpt-small": dict(n_layer=12, n_head=12, n_embd=768, block_size=512),
}


@dataclass
class GPTConfig:
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64
    block_size: int = 512  # training context
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 512
    pe: str = "carope"  # one of PE_CHOICES
    rope_base: float = 10000.0
    carope_init: str = "rope"  # CARoPE's b at init: "rope" (f = theta_1, RoPE's start) or "zero" (b = 0)
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    tapa_theta: float = 0.5  # TAPA: share of each head's dims that form the amplitude part
    tapa_alpha: float = 0.1  # TAPA: exponent of the distance |m - n|
    tapa_chunk: int = 256  # TAPA: queries per chunk (memory, not maths)
    selective_conv: int = 4  # Selective RoPE: causal depthwise convolution kernel
    selective_bias: bool = True  # Selective RoPE: + exp(b) per token (b = 0: RoPE's clock)
    selective_gate: bool = False  # Selective RoPE: sigmoid phase gate per head
    # CARoPE on CUDA: the fused Triton kernel (same maths, less memory), used once it passes its
    # self-check (carope_triton.use_fused). A machine choice, not part of the model: the parameters
    # are the same either way, so a checkpoint from a fused run loads and runs on a CPU, and back.
    fused_carope: bool = True

    def __post_init__(self):
        if self.pe not in PE_CHOICES:
            raise ValueError(f"unknown positional encoding pe={self.pe!r}; choose one of: {', '.join(PE_CHOICES)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                             "choose n_embd a multiple of n_head")
        if self.pe in ROTARY_PE and self.head_dim % 2 != 0:
            raise ValueError(f"pe={self.pe!r} rotates pairs of dims, but the head size n_embd/n_head="
                             f"{self.head_dim} is odd; choose an even head size")
        if self.pe in ROTARY_PE and not self.rope_base > 1:  # theta_i = base^(-2i/D) must fall with i
            raise ValueError(f"rope_base={self.rope_base:g}: pe={self.pe!r} turns pair i at rope_base^(-2i/D), which "
                             f"needs a base above 1 (RoPE's is 10000); choose --rope-base > 1")
        if self.carope_init not in CAROPE_INITS:
            raise ValueError(f"unknown carope_init={self.carope_init!r}; choose one of: {', '.join(CAROPE_INITS)}")
        if self.pe == "sinusoidal" and self.n_embd % 2 != 0:
            raise ValueError(f"pe='sinusoidal' needs an even n_embd (sin/cos pairs), got {self.n_embd}")
        if self.pe == "tapa" and not 1 <= round(self.tapa_theta * self.head_dim) < self.head_dim:
            raise ValueError(f"tapa_theta={self.tapa_theta} leaves no amplitude or no phase dims in a head of "
                             f"{self.head_dim}; choose 0 < tapa_theta < 1")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @classmethod
    def from_preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# -----------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        layers = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        )
        if config.pe == "learned":
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)  # GPT-2's table
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying (GPT-2)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 L)
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        # Linear and Embedding only: CARoPE's W, b and Selective RoPE's parameters keep their own init.
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=False):
        """Parameters, the tied embedding counted once; non_embedding drops the position table."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, T, vocab_size) and the loss if targets are given.

        cache: generation only, a list of one LayerCache per layer (see new_cache): idx then holds
        the tokens after those the cache has seen, and the logits are the last position's, (B, 1, vocab_size).
        """
        B, T = idx.size()
        start = 0 if cache is None else cache[0].pos  # the position of idx's first token
        x = self.transformer.wte(idx)  # token embeddings: (B, T, C)
        source = x if self.config.pe == "carope-embed" else None  # the literal reading's x_t: the embedding
        if self.config.pe == "learned":
            if start + T > self.config.block_size:
                raise ValueError(f"sequence length {start + T} is longer than the learned position table "
                                 f"({self.config.block_size} rows): pe='learned' cannot extrapolate; "
                                 f"use sequences of at most {self.config.block_size} tokens")
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))  # (T, C) broadcast over B
        elif self.config.pe == "sinusoidal":
            # Our choice (the paper is silent): the table at GPT-2's embedding scale (std 0.02, as
            # a learned wpe starts). At Vaswani's amplitude 1 it drowns the 0.02-sized token
            # embeddings and a small model stalls (tests/test_model.py::test_every_encoding_learns).
            table = sinusoidal_table(start + T, self.config.n_embd, idx.device)[start:]  # rows start .. start+T-1
            x = x + SINUSOIDAL_SCALE * table.to(x.dtype)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache[i], source)
        x = self.transformer.ln_f(x)
        if cache is not None:
            x = x[:, [-1]]  # generating needs the next token's logits only: (B, 1, C)
        logits = self.lm_head(x)  # every position: (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, eps=1e-8):
        """AdamW; decay only tensors of 2 or more dims (matmuls, embeddings, CARoPE's W)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},  # biases, norms, b
        ]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=fused)

    def estimate_mfu(self, tokens_per_iter, dt, seq_len=None, device=None):
        """Model flops utilisation: achieved flops over the device's peak bf16 dense flop/s, or None
        where no peak is known (CPUs, Apple GPUs, a GPU not in PEAK_BF16_TFLOPS): a figure against an
        invented peak would mislead.

        Flops per token (PaLM appendix B, as nanoGPT): 6 N + 12 L H D T, with T the sequence
        length. The encodings' own work (CARoPE's powers and sums, TAPA's second product) is
        left out, so encodings are compared on the same yardstick.
        """
        cfg = self.config
        L, H, D, T = cfg.n_layer, cfg.n_head, cfg.head_dim, seq_len or cfg.block_size
        flops_per_token = 6 * self.num_params(non_embedding=True) + 12 * L * H * D * T
        peak = peak_flops(device or next(self.parameters()).device)
        return None if peak is None else flops_per_token * tokens_per_iter / dt / peak

    def new_cache(self):
        """An empty cache for generation: one LayerCache per layer."""
        return [LayerCache() for _ in self.transformer.h]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True):
        """Sample max_new_tokens tokens after idx (B, T); temperature 0 takes the argmax.

        Context: every encoding but 'learned' sees the whole sequence, past block_size too (they
        are relative, or for sinusoidal computable at any position; how well they extrapolate is
        what the papers measure). 'learned' has block_size positions and sees the last block_size tokens.
        use_cache=True runs the prompt once, then one token per step against each layer's cached
        keys, values and phase (LayerCache); use_cache=False runs the whole context every step.
        Both give the same logits, up to float rounding.
        """
        window = self.config.block_size if self.config.pe == "learned" else None
        cache = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = self(idx if window is None else idx[:, -window:])
            elif cache is None or cache[0].pos == window:
                # The prefill. For 'learned', also each step once the cache holds block_size tokens:
                # the window slides, every token's position row changes and no cached key stays
                # valid, so the cache falls back to recomputing the window, token for token as use_cache=False.
                cache = self.new_cache()
                logits, _ = self(idx if window is None else idx[:, -window:], cache=cache)
            else:
                logits, _ = self(idx[:, -1:], cache=cache)  # the newest token only
            logits = logits[:, -1, :].float()
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                # softmax(l / tau) = softmax((l - max l) / tau): shifted first, a tiny tau cannot make inf - inf
                tau = max(temperature, torch.finfo(logits.dtype).tiny)  # a float32 that is not 0
                logits = (logits - logits.amax(dim=-1, keepdim=True)) / tau
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


# -----------------------------------------------------------------------------
# Other input-dependent encodings: Selective RoPE and TAPA
#
# The comparisons of the paper's sections beyond RoPE. They sit behind the same switch as the
# rest (GPTConfig.pe): make_rotary returns SelectiveRoPE, and CausalSelfAttention calls
# tapa_attention; both are looked up when called, so defining them last is fine.


class SelectiveRoPE(nn.Module):
    """Selective RoPE (arXiv 2511.17388) for softmax attention, following the authors' code.

    Each token emits a rate per head and pair; the phase is the running sum of the rates
    times RoPE's fixed frequencies. With the projection's gain at 0, no gate and the bias on,
    every rate is exp(0) = 1 and the phase is (m + 1) * theta_i: RoPE, offset by one step
    that cancels in q.k.
    """

    def __init__(self, config):
        super().__init__()
        n_head, head_dim, n_embd = config.n_head, config.head_dim, config.n_embd
        self.n_head, self.n_pair, self.kernel = n_head, head_dim // 2, config.selective_conv
        chunk = n_embd // n_head  # each head reads its own slice of the layer input
        self.proj = nn.Parameter(0.02 * torch.randn(n_head, self.n_pair, chunk))  # direction only (weight norm)
        self.gain = nn.Parameter(torch.ones(n_head))  # per-head gain of the weight-normalised map
        # Causal depthwise convolution over time, one filter per (head, pair). Our choice (the
        # papers don't give it): start as the identity, tap 1 on the current token.
        conv = torch.zeros(n_head * self.n_pair, 1, self.kernel)
        conv[..., -1] = 1.0
        self.conv = nn.Parameter(conv)
        self.bias = nn.Parameter(torch.zeros(n_head, self.n_pair)) if config.selective_bias else None
        self.gate = nn.Linear(n_embd, n_head) if config.selective_gate else None
        self.register_buffer("theta", rope_frequencies(head_dim, config.rope_base), persistent=False)

    def forward(self, x, cache=None):
        B, T, C = x.size()
        H, P, K = self.n_head, self.n_pair, self.kernel  # K: the convolution's kernel size
        with no_autocast(x):
            xh = F.normalize(x.float().view(B, T, H, C // H), dim=-1)  # 1. L2-normalised chunk per head
            w = F.normalize(self.proj.float(), dim=-1)  # 2. weight norm: each rate's row has unit length
            rate = torch.einsum("bthc,hpc->bthp", xh, w) * self.gain.view(1, 1, H, 1)  # (B, T, H, P)
            rate = rate.reshape(B, T, H * P).transpose(1, 2)  # (B, H*P, T): channels first for conv1d
            if cache is None:
                rate = F.pad(rate, (K - 1, 0))  # 3. causal: the K-1 steps before the start are zeros
            else:  # generating: those K-1 steps are the rates cached from the tokens before x
                past = cache.rates if cache.rates is not None else rate.new_zeros(B, H * P, K - 1)
                rate = torch.cat((past, rate), dim=2)
                cache.rates = rate[:, :, rate.size(2) - (K - 1):]  # (B, H*P, K-1)
            rate = F.conv1d(rate, self.conv, groups=H * P)  # (B, H*P, T)
            rate = rate.transpose(1, 2).reshape(B, T, H, P)
            if self.bias is not None:
                rate = rate + self.bias.exp()  # 4. + exp(b): b = 0 is a clock of one step per token
            if self.gate is not None:
                rate = rate * torch.sigmoid(self.gate(x.float())).unsqueeze(-1)  # 5. phase gate per head
            total = torch.cumsum(rate, dim=1)  # sum_{t<=m} rate_t,i: (B, T, H, P)
            if cache is not None:  # generating: carry on from the sum of the tokens before x
                if cache.phase is not None:
                    total = cache.phase.unsqueeze(1) + total
                cache.phase = total[:, -1]  # (B, H, P)
            phase = total * self.theta  # 6. phi_i(m) = theta_i * sum_{t<=m} rate_t,i
            phase = phase.transpose(1, 2)  # (B, H, T, P)
            return phase.cos(), phase.sin()


# TAPA: no rotation; a phase term inside the attention score itself


def tapa_attention(q, k, v, theta=0.5, alpha=0.1, chunk_size=256, dropout_p=0.0):
    """Token-Aware Phase Attention (arXiv 2509.12635), causal, in chunks of queries.

    Each head's q and k split into an amplitude part (first theta*D dims) and a phase part:
        score(m, n) = (q_A.k_A)/sqrt(theta D) * cos(2 pi |m-n|^alpha (q_P.k_P)/sqrt((1-theta) D))
    then the causal mask and softmax. It needs two dot products per (m, n), so it cannot use
    the flash kernel; queries go in chunks so the (T, T) score matrix is never whole in memory.
    q: (B, H, Tq, D), the last Tq positions of k, v: (B, H, T, D); Tq = T but when generating with
    a cache. Scores in float32; the result has v's dtype, (B, H, Tq, D).
    """
    Tq, T, D = q.size(-2), k.size(-2), q.size(-1)
    past = T - Tq  # keys before the first query: 0 but when generating with a cache
    D_A = round(theta * D)
    q, k = q.float(), k.float()
    q_A, q_P, k_A, k_P = q[..., :D_A], q[..., D_A:], k[..., :D_A], k[..., D_A:]
    pos = torch.arange(T, dtype=torch.float32, device=q.device)
    out = []
    for start in range(past, T, chunk_size):
        end = min(start + chunk_size, T)  # queries at positions [start, end) see keys [0, end); c = end - start
        q_rows = slice(start - past, end - past)
        amplitude = q_A[:, :, q_rows] @ k_A[:, :, :end].transpose(-2, -1) / math.sqrt(D_A)  # (B, H, c, end)
        dot_P = q_P[:, :, q_rows] @ k_P[:, :, :end].transpose(-2, -1) / math.sqrt(D - D_A)
        distance = (pos[start:end, None] - pos[None, :end]).abs() ** alpha  # |m - n|^alpha: (c, end)
        scores = amplitude * torch.cos(2 * math.pi * distance * dot_P)
        future = pos[None, :end] > pos[start:end, None]  # key after query: masked
        att = F.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        att = F.dropout(att, p=dropout_p) if dropout_p > 0 else att
        out.append(att @ v[:, :, :end].float())
    return torch.cat(out, dim=2).type_as(v)  # (B, H, Tq, D)
