"""
RoPE's pairs within the training context (support module): which complete a turn, and how much of
q.k the others carry. The measurement behind "why RoPE breaks past its context" (walkthrough step 4,
exercise 12, PAPERS.md §6).

Pair i of RoPE turns theta_i = base^(-2i/D) rad a token, so over a training context of T tokens it
reaches the phase T theta_i. It completes a full turn iff T theta_i >= 2 pi; a pair that does not
has shown the model only an arc of its circle, and past T it turns into angles no training window
held. Every pair turns fully when base <= (T / 2 pi)^(D / (D - 2)), the critical base. CARoPE's
pair i reaches sum_t f(x_t)_h^i over the same T tokens, so whether it turns depends on the text.

    the arithmetic    rope_phase, full_turns, slow_count, critical_base
    a model's pairs   read_layers (hooks), layer_phase, pair_norms, token_slow_share, measure_model
    a checkpoint      measure(ckpt_path): its validation text, a small JSON-able dict
    the command       python -m support.pairs RUN_DIR [RUN_DIR ...] --out FILE.md [--plot FILE.png]

The command writes a markdown table (one row a run), RUN_DIR/pairs.json beside each run, and with
--plot the phase each pair reaches over the training context, one line a run.
Shapes: B rows, T tokens, C width, H heads, D head size, P = D/2 pairs, L layers.
"""

import json
import math
import os
import sys

import numpy as np
import torch

from carope import CARoPE, GPT, GPTConfig, LayerCache, RoPE, SelectiveRoPE
from support import checkpoints, cli, files, shards

TURN = 2 * math.pi  # a full turn (rad)
TOKENS = 4096  # validation tokens measured by default: rows of the model's block_size
MIXED = 0.1  # a pair is slow for some tokens and fast for others if 10-90 % of the tokens leave it slow
PROG = "pairs"  # the name that starts every one-line error


# -----------------------------------------------------------------------------
# The arithmetic: RoPE at (D, T, base)


def rope_phase(D, T, base):
    """T theta_i, the phase pair i of RoPE reaches over T tokens, float64: (P,)."""
    i = torch.arange(D // 2, dtype=torch.float64)
    return T * base ** (-2 * i / D)  # T theta_i = T base^(-2i/D)


def full_turns(D, T, base):
    """Which pairs complete a full turn over T tokens, T theta_i >= 2 pi: bool (P,), the first ones (theta_i falls)."""
    return rope_phase(D, T, base) >= TURN


def slow_count(D, T, base):
    """How many of the P pairs do not complete a full turn over T tokens (T theta_i < 2 pi)."""
    return int((~full_turns(D, T, base)).sum())


def critical_base(D, T):
    """(T / 2 pi)^(D / (D - 2)): the largest base at which every pair completes a turn over T tokens.

    The last pair, i = P - 1, turns slowest: T base^(-(D - 2)/D) >= 2 pi solved for base. Pair 0 turns
    1 rad a token whatever the base, so T must be at least 2 pi.
    """
    if D < 4 or T < TURN:
        raise ValueError(f"D={D}, T={T}: needs D >= 4 (two pairs) and T >= 2 pi (pair 0 turns 1 rad a token)")
    return (T / TURN) ** (D / (D - 2))


# -----------------------------------------------------------------------------
# A model's pairs, read with forward hooks


@torch.no_grad()
def read_layers(model, idx):
    """What each attention layer sees for rows idx (B, T), read with forward hooks: a list of L dicts,
    "x" the rotary's input (x_t: the normalised hidden state, carope-embed's embedding; absent if q and k
    are not rotated) and "q", "k" the heads' queries and keys before rotation, (B, H, T, D) each.
    On the CPU: on CUDA the fused CARoPE kernel rotates without calling the rotary module."""
    seen = [{} for _ in model.transformer.h]
    hooks = []
    for store, block in zip(seen, model.transformer.h):
        hooks.append(block.attn.c_attn.register_forward_hook(lambda m, inp, out, s=store: s.update(qkv=out)))
        if block.attn.rotary is not None:
            hooks.append(block.attn.rotary.register_forward_hook(lambda m, inp, out, s=store: s.update(x=inp[0])))
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    B, T = idx.size()
    C, H = model.config.n_embd, model.config.n_head
    for store in seen:
        q, k, _ = store.pop("qkv").split(C, dim=2)
        store["q"] = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        store["k"] = k.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
    return seen


@torch.no_grad()
def layer_phase(rotary, x, H):
    """The phase each pair reaches over the T tokens of each row: (B, H, P), or None where it is not read.

    RoPE: T theta_i, the same for every row and head. CARoPE and carope-static: sum_t f(x_t)_h^i.
    Selective RoPE: theta_i sum_t rate_t,i, the running sum its cache keeps after the last token.
    """
    B, T, _ = x.size()
    if isinstance(rotary, RoPE):
        return (T * rotary.theta).expand(B, H, -1)  # T theta_i: (B, H, P)
    if isinstance(rotary, CARoPE):
        return (rotary.frequencies(x).unsqueeze(-1) ** rotary.i).sum(1)  # sum_t f(x_t)_h^i: (B, H, P)
    if isinstance(rotary, SelectiveRoPE):
        cache = LayerCache()
        rotary(x, cache)  # cache.phase: sum_t rate_t,i after the row's last token, (B, H, P)
        return cache.phase * rotary.theta  # theta_i sum_t rate_t,i
    return None


@torch.no_grad()
def token_slow_share(rotary, x, H):
    """For each head and pair, the share of tokens t at which the pair is slow: T tokens each turning it
    as token t does would not complete a full turn, f(x_t)_h^i T < 2 pi: (H, P). None where no
    per-token ratio is read (Selective RoPE). RoPE's ratio is theta_1 at every token: 0 or 1."""
    T = x.size(1)
    if isinstance(rotary, RoPE):
        return (T * rotary.theta < TURN).float().expand(H, -1)  # (H, P)
    if isinstance(rotary, CARoPE):
        return slow_share(rotary.frequencies(x), rotary.i, T)
    return None


def slow_share(f, i, T):
    """The share of tokens with f_t^i T < 2 pi: f the ratios (B, T', H), i the pair indices (P,) -> (H, P)."""
    return (f.unsqueeze(-1) ** i * T < TURN).float().mean(dim=(0, 1))  # over (B, T') of (B, T', H, P)


def pair_norms(v):
    """Each pair's length |v_i| = |(v_i, v_{i+P})| (rotate's half-split layout): (..., D) -> (..., P).
    A rotation keeps it, so q's and k's before rotation give the rotated ones' too."""
    P = v.size(-1) // 2
    return (v[..., :P] ** 2 + v[..., P:] ** 2).sqrt()


def qk_share(q, k):
    """How much of q.k each pair can carry: per head and pair, the mean over rows and positions of
    |q_i||k_i| / sum_j |q_j||k_j|, q and k of the same token. q, k: (B, H, T, D) -> (H, P), summing to 1
    over the pairs of each head."""
    both = pair_norms(q.float()) * pair_norms(k.float())  # |q_i||k_i|: (B, H, T, P)
    return (both / both.sum(-1, keepdim=True)).mean(dim=(0, 2))  # (H, P)


@torch.no_grad()
def measure_model(model, idx):
    """The pairs of every layer and head of model on rows idx (B, T), as a JSON-able dict.

    phase        the phase each pair reaches over the T tokens of a row, (L, H, P): its mean over the rows
                 and the quartiles q1, median, q3 (None without a readable phase: no rotation)
    slow         per layer and head, the pairs whose mean phase stays below 2 pi, (L, H); slow_mean is
                 their mean over L x H, slow_total their sum
    qk_share     (L, H, P) from qk_share; slow_qk_share (L, H) the share of the slow pairs, and its mean
    token_slow   (L, H, P) from token_slow_share; mixed: how many (layer, head, pair) are slow at
                 MIXED to 1 - MIXED of the tokens, fast at the rest
    rope         RoPE's arithmetic at the model's base, D and T (what CARoPE started from)
    """
    cfg = model.config
    L, H, D, P, T = cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.head_dim // 2, idx.size(1)
    rope = dict(phase=rope_phase(D, T, cfg.rope_base).tolist(), slow=slow_count(D, T, cfg.rope_base),
                critical_base=critical_base(D, T) if D >= 4 and T >= TURN else None)
    out = dict(pe=cfg.pe, base=cfg.rope_base, carope_init=cfg.carope_init, D=D, P=P, T=T, n_layer=L, n_head=H,
               rows=idx.size(0), tokens=idx.numel(), rope=rope, phase=None, slow=None, slow_mean=None,
               slow_total=None, qk_share=None, slow_qk_share=None, slow_qk_share_mean=None, token_slow=None, mixed=None)
    rotaries = [block.attn.rotary for block in model.transformer.h]
    if rotaries[0] is None:  # nope, learned, sinusoidal, tapa: q and k are not turned in pairs
        return out
    layers = read_layers(model, idx)
    share = torch.stack([qk_share(s["q"], s["k"]) for s in layers])  # (L, H, P)
    out["qk_share"] = share.tolist()
    phase = [layer_phase(r, s["x"], H) for r, s in zip(rotaries, layers)]
    if phase[0] is None:
        return out
    phase = torch.stack(phase).float()  # (L, B, H, P)
    mean = phase.mean(1)  # (L, H, P)
    q1, median, q3 = torch.quantile(phase, torch.tensor([0.25, 0.5, 0.75]), dim=1)  # (L, H, P) each
    slow = mean.abs() < TURN  # (L, H, P); abs: Selective's rates may turn a pair backwards
    slow_qk = (share * slow).sum(-1)  # (L, H)
    out.update(phase=dict(mean=mean.tolist(), q1=q1.tolist(), median=median.tolist(), q3=q3.tolist()),
               slow=slow.sum(-1).tolist(), slow_mean=slow.sum(-1).float().mean().item(),
               slow_total=int(slow.sum()), slow_qk_share=slow_qk.tolist(), slow_qk_share_mean=slow_qk.mean().item())
    token = [token_slow_share(r, s["x"], H) for r, s in zip(rotaries, layers)]
    if token[0] is not None:
        token = torch.stack(token)  # (L, H, P)
        out.update(token_slow=token.tolist(), mixed=int(((token >= MIXED) & (token <= 1 - MIXED)).sum()))
    return out


# -----------------------------------------------------------------------------
# A checkpoint on its validation text


def load(path):
    """The model of a train.py checkpoint, on the CPU in eval mode, and the checkpoint; one line if it is not one."""
    ckpt = checkpoints.load_checkpoint(path, flag=f"{PROG}:")
    try:
        model = GPT(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:  # an edited or foreign checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(f"{PROG}: {path}: its model does not load ({first}); use a ckpt.pt written by train.py")
    return model.eval(), ckpt


def validation_rows(ckpt, T, tokens, data_dir=None):
    """Rows (B, T) to measure on, and a line saying what they are: the first `tokens` of the validation
    shard of the run's data, as compare.analyse_carope reads it; for a --task run, rows of its training
    split (seed 0). data_dir replaces the recorded data folder (one made on another machine)."""
    args = ckpt["train_args"]
    B = max(1, tokens // T)
    if args.get("task"):
        import tasks  # only here: a task's rows are drawn, not read
        task = tasks.with_options(args["task"], args.get("task_option"), T)
        return tasks.batch(task, B, T, 0)[0], f"{B} rows of task {task.name}'s training split (seed 0)"
    data_dir = data_dir or args.get("data_dir")
    try:
        val = shards.read_shard(shards.list_shards(data_dir)[0][0])
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise SystemExit(f"{PROG}: cannot read the run's validation text: {str(e).splitlines()[0]}; or pass --data "
                         f"DIR, the folder of its shards")
    n = min(B * T, len(val)) // T * T
    if n == 0:
        raise SystemExit(f"{PROG}: {data_dir}: its validation shard holds {len(val)} tokens, fewer than one row of {T}")
    val = np.asarray(val[:n], dtype=np.int64)
    shards.check_ids(val, ckpt["model_config"]["vocab_size"], data_dir)
    return torch.from_numpy(val).view(-1, T), f"the first {n:,} validation tokens of {data_dir}"


def measure(ckpt_path, tokens=TOKENS, data_dir=None):
    """measure_model of the checkpoint at ckpt_path on its validation text (validation_rows), with where
    the rows came from and the checkpoint's step."""
    model, ckpt = load(ckpt_path)
    idx, text = validation_rows(ckpt, model.config.block_size, tokens, data_dir)
    return dict(measure_model(model, idx), ckpt=str(ckpt_path), step=ckpt["step"], text=text)


# -----------------------------------------------------------------------------
# The command: a table over run folders, pairs.json beside each, a plot


def base_of(r):
    """The base column: RoPE's base, or where a CARoPE started from."""
    if r["pe"] == "rope":
        return f"{r['base']:g}"
    if r["pe"].startswith("carope"):
        start = f"base {r['base']:g}" if r["carope_init"] == "rope" else "b = 0 (f = 0.591)"
        return f"initialised at {start}"
    if r["pe"] == "selective":
        return f"{r['base']:g}, times learned rates"
    return "no rotation"


def markdown(results):
    """The table of measured runs [(name, result)], after a paragraph saying what each column is."""
    lines = ["Which of RoPE's pairs complete a turn within the training context T (`python -m support.pairs`), "
             "on rows of T tokens of each run's validation text. A pair is slow if the phase it reaches over T "
             "tokens, mean over the rows, stays below 2π: in training it never completes a turn. q·k share: the "
             "mean over positions of |qᵢ||kᵢ| / Σⱼ |qⱼ||kⱼ|, summed over the slow pairs, mean over layers × heads. "
             f"Mixed: pairs slow at {100 * MIXED:.0f} % to {100 * (1 - MIXED):.0f} % of the tokens "
             "(f(x_t)ⁱ·T < 2π there) and fast at the rest.", "",
             "| run | encoding | base | rows × T | slow pairs, mean of layers × heads (all) "
             "| q·k share of the slow pairs | mixed pairs |", "|---|---|---|---:|---:|---:|---:|"]
    for name, r in results:
        L, H, P = r["n_layer"], r["n_head"], r["P"]
        slow = "–" if r["slow"] is None else f"{r['slow_mean']:.1f} of {P} ({r['slow_total']} of {L * H * P})"
        share = "–" if r["slow_qk_share_mean"] is None else f"{100 * r['slow_qk_share_mean']:.1f} %"
        mixed = "–" if r["mixed"] is None else f"{r['mixed']} of {L * H * P}"
        lines.append(f"| {name} | {r['pe']} | {base_of(r)} | {r['rows']} × {r['T']} | {slow} | {share} | {mixed} |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    """Per pair i, the phase reached over the training context (mean over the rows, then over layers and
    heads, with their range as a band; log scale), the 2π line, one line a run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in results:
        if r["phase"] is not None:
            phase = torch.tensor(r["phase"]["mean"]).flatten(0, 1)  # one row a (layer, head): (L*H, P)
            line, = ax.plot(range(r["P"]), phase.mean(0).tolist(), "o-", ms=3, label=f"{name} ({r['pe']}, T = {r['T']})")
            ax.fill_between(range(r["P"]), phase.amin(0).tolist(), phase.amax(0).tolist(), color=line.get_color(),
                            alpha=0.15, lw=0)  # the band: the layers' and heads' lowest and highest
    ax.axhline(TURN, color="k", ls="--", lw=1, label="2π: one full turn")
    ax.set(yscale="log", xlabel="pair i", ylabel="phase reached over T tokens (rad)",
           title="Which pairs complete a turn within the training context")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)


def main(argv=None):
    parser = cli.Parser(prog=PROG, description="Which of RoPE's pairs complete a turn within the training "
                        "context, and how much of q.k the others carry, for each run folder's ckpt.pt.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run folder (train.py's --out-dir, or "
                        "one of a compare.py sweep, e.g. results/bytes-kjv/rope-s1) holding ckpt.pt")
    parser.add_argument("--out", required=True, metavar="FILE.md", help="the markdown table")
    parser.add_argument("--plot", metavar="FILE.png", help="the phase each pair reaches, one line a run")
    parser.add_argument("--tokens", type=cli.positive, default=TOKENS, help=f"validation tokens (default {TOKENS})")
    parser.add_argument("--data", metavar="DIR", help="the folder of the runs' shards, if not the one they recorded")
    args = parser.parse_args(argv)
    for d in args.runs:  # every folder checked before any is measured
        if not os.path.isdir(d):
            raise SystemExit(f"{PROG}: {d}: no such folder")
        if not os.path.isfile(os.path.join(d, "ckpt.pt")):
            raise SystemExit(f"{PROG}: {d} holds no ckpt.pt: not a run folder of train.py or compare.py")
    results = []
    try:
        for d in args.runs:
            r = measure(os.path.join(d, "ckpt.pt"), args.tokens, args.data)
            files.atomic_write(os.path.join(d, "pairs.json"), lambda f: f.write(json.dumps(r).encode() + b"\n"))
            results.append((os.path.normpath(d), r))
        text = markdown(results)
        files.atomic_write(args.out, lambda f: f.write(text.encode()))
        if args.plot:
            plot(results, args.plot)
    except OSError as e:
        raise SystemExit(f"{PROG}: cannot write {e.filename or ''} ({e.strerror or e})") from None
    print(text, end="")
    print(f"{PROG}: {args.out}" + (f", {args.plot}" if args.plot else "") + f"; pairs.json in {len(results)} run folder(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
