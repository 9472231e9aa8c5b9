"""
Compare positional encodings the honest way: one recipe, several seeds, a table with spread, plots.

    python compare.py --pe rope,carope --seeds 1,2,3 --out out-bytes           # train.py's default recipe (bytes)
    python compare.py --preset nano --pe rope,carope --seeds 1,2 --max-steps 100 --out /tmp/cmp   # any train.py flag
    python compare.py --out results/nano-kjv --plot-only                           # redraw from runs
    python compare.py --summary results                   # CARoPE against RoPE across every committed sweep

Every run is train.py's own `main` (no second training loop) in a folder DIR/<pe>-s<seed>: the
same data, the same recipe and the same validation tokens for all of them, evaluated at 1x, 2x,
4x and 8x the training context unless --eval-lens says otherwise. Re-running the same command
skips finished runs and resumes unfinished ones from their checkpoint, so a sweep may be stopped
at any time and continued later or elsewhere (copy DIR, run again). Afterwards:

    DIR/results.json      every run: pe, seed, tokens, params, speed, device, val loss, ppl and bits per
                          byte per length, and the loss by position at the longest length
    DIR/results.md        per encoding and length: mean over seeds, spread, change against RoPE
    DIR/loss.png          validation loss against training tokens (seed mean, min-max band)
    DIR/ppl_vs_length.png perplexity and bits per byte against evaluation length (log x), training length marked
                          (a --task sweep: acc_vs_length.png, accuracy against test length)
    DIR/loss_by_position.png  loss at each position of the longest windows: where an encoding breaks
    DIR/carope_f.png      what CARoPE learned: f(x_t)_h over a passage, per head, and f per layer
    DIR/carope_clock.png  the "context-aware clock": phase of pair 1 along the passage vs RoPE's line
"""

import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from support import checkpoints, cli, files, runs, shards, tokenizer
from support.sweeps import sweep_run_dir as run_dir  # DIR/<pe>-s<seed>
import train
from carope import GPT, GPTConfig, PE_CHOICES

OWN_FLAGS = ("--pe", "--seed", "--resume", "--ckpt", "--overwrite", "--eval-only")  # set per run by compare.py
PASSAGE_TOKENS = 40  # tokens of the validation text shown along the x axis of the CARoPE plots
F_SAMPLE_TOKENS = 8192  # validation tokens whose f(x_t) make the per-layer distributions
NAMES = dict(ppl="validation perplexity", bpb="validation bits per byte", acc="test accuracy (whole answers)",
             token_acc="test accuracy per answer token (MQAR: per query)")
ACCURACIES = ("acc", "token_acc")  # higher is better; a change is in points
DIGITS = dict(ppl=2, bpb=4, acc=3, token_acc=3)  # decimals of a value in results.md
ROBUST_SEEDS = 5  # from this many seeds of one encoding, results.md adds medians, quartiles and seed counts
POSITION_POINTS = 128  # the loss by position is kept as the means of this many equal spans of the window


def parse_args(argv):
    p = cli.Parser(  # no abbreviations: else train.py's --seed would be taken for --seeds
        prog="compare.py",
        description="Train a list of encodings x seeds with one train.py recipe; write results.json, "
                    "results.md and plots. Any other flag goes to train.py unchanged (python train.py --help).",
        epilog="example: python compare.py --preset nano --pe rope,carope,carope-static --seeds 1,2,3 "
               "--out results/nano-kjv")
    p.add_argument("--pe", default="rope,carope,carope-static", help="comma-separated encodings "
                   f"(default rope,carope,carope-static; any of {','.join(PE_CHOICES)})")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--out", "--out-dir", dest="out", metavar="DIR",
                   help="the sweep's folder: one sub-folder per run")
    p.add_argument("--summary", metavar="ROOT", help="no training: CARoPE against RoPE in every sweep folder under "
                   "ROOT, as ROOT/summary.md and ROOT/summary.png (python compare.py --summary results)")
    p.add_argument("--sizes", metavar="DIR,DIR,..", help="no training: CARoPE against RoPE at 1x, 4x and 16x against "
                   "the parameter count, in sweeps whose recipes differ only in the model's size, as model_size.md and "
                   ".png beside them (python compare.py --sizes results/bytes-kjv-2x64,results/bytes-kjv)")
    p.add_argument("--plot-only", action="store_true", help="redraw results.md and the plots from the runs "
                   "in --out without training")
    args, recipe = p.parse_known_args(argv)
    if args.sizes is not None:
        args.sizes = [d.rstrip("/") for d in args.sizes.split(",") if d]
        if args.out or recipe or args.summary is not None:
            p.error("--sizes reads committed sweeps and trains nothing: give it alone")
        missing = [d for d in args.sizes if not os.path.isfile(os.path.join(d, "results.json"))]
        if len(args.sizes) < 2 or missing:
            p.error(f"--sizes: give two or more sweep folders that hold a results.json"
                    + (f" ({', '.join(missing)} holds none)" if missing else ""))
        if len({os.path.dirname(os.path.abspath(d)) for d in args.sizes}) > 1:
            p.error("--sizes: the sweeps must sit in one folder (model_size.md is written beside them)")
        return args, recipe
    if args.summary is not None:
        if args.out or recipe:
            p.error("--summary reads committed sweeps and trains nothing: give it alone")
        if not os.path.isdir(args.summary):
            p.error(f"--summary {args.summary}: no such folder")
        return args, recipe
    if args.out is None:
        p.error("the following arguments are required: --out (or --summary ROOT)")
    pes = [s for s in args.pe.split(",") if s]
    bad = [s for s in pes if s not in PE_CHOICES]
    if not pes or bad:
        p.error(f"--pe {args.pe!r}: unknown encoding(s) {', '.join(bad) or '(none given)'}; "
                f"choose from {', '.join(PE_CHOICES)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        p.error(f"--seeds {args.seeds!r}: give comma-separated non-negative integers, e.g. 1,2,3")
    args.seeds = seeds
    args.pe = sorted(dict.fromkeys(pes), key=lambda pe: pe != "rope")  # RoPE first: the reference
    args.seeds = list(dict.fromkeys(args.seeds))  # --seeds 1,1 is one seed, not two
    own = [a for a in recipe if a.split("=")[0] in OWN_FLAGS]
    if own:
        p.error(f"{own[0]} is set per run by compare.py; use --pe (a list), --seeds and --out instead")
    return args, recipe


def resolve_recipe(recipe):
    """train.py's flags as given, checked by train.py's own parser; the preset is always recorded (train.py's
    default has changed, from nano to bytes); eval lengths default to 1x..8x."""
    try:
        targs, given, _ = train.resolve_args(recipe)
    except SystemExit as e:
        if e.code in (0, None):  # --help
            raise
        raise SystemExit(f"compare.py: train.py rejects the recipe {' '.join(recipe)!r}: {e}") from None
    if "preset" not in given and "task" not in given:  # (with --task the preset is task, as it always was)
        given["preset"] = targs.preset
        recipe = recipe + ["--preset", targs.preset]
    if "eval_lens" not in given:  # the preset's recipe's, else 1x..8x the training context
        T = targs.block_size
        given["eval_lens"] = targs.eval_lens or [T, 2 * T, 4 * T, 8 * T]
        recipe = recipe + ["--eval-lens", ",".join(map(str, given["eval_lens"]))]
    if "eval_every" not in given:  # ten points on the validation curve (train.py evaluates 1x only in between)
        given["eval_every"] = max(1, targs.max_steps // 10)
        recipe = recipe + ["--eval-every", str(given["eval_every"])]
    return recipe, {k: v for k, v in sorted(given.items())}


def check_out(out):
    """Before any training: --out must be a folder this process can write in, or one it can make."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"compare.py: --out {out} is a file, not a folder: choose another --out")
    parent = files.nearest_existing(out)  # the runs' folders are made in it
    if not os.path.isdir(parent):
        raise SystemExit(f"compare.py: --out {out}: {parent} is a file, so no folder can be made under it: "
                         "choose another --out")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise SystemExit(f"compare.py: --out {out}: cannot write in {parent} ({e.strerror}): choose a writable "
                         "folder") from None


def settings(recipe):
    """A recipe as a set of settings, as it reads back from JSON (tuples -> lists): --task-option flags in any
    order are one recipe (the last value of a name wins, as in tasks.py), and --data names its folder whatever
    the path's spelling."""
    s = json.loads(json.dumps(recipe))
    if "task_option" in s:
        s["task_option"] = sorted({o.split("=")[0]: o for o in s["task_option"]}.values())
    if "data" in s:
        s["data"] = os.path.realpath(s["data"])
    return s


def differing(have, want):
    """The settings two recipes give different values (a missing one counts as unset)."""
    return sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))


def check_recipe(out, given):
    """A sweep folder holds one recipe: refuse another with one line naming the difference."""
    path = os.path.join(out, "recipe.json")
    want = json.loads(json.dumps(given))  # as it reads back from JSON (tuples -> lists)
    if os.path.exists(path):
        have, now = settings(read_recipe(path)), settings(want)
        diff = differing(have, now)
        if diff:
            what = "; ".join(f"--{k.replace('_', '-')} {have.get(k, '(unset)')} there, {now.get(k, '(unset)')} here"
                             for k in diff)
            raise SystemExit(f"compare.py: {out} holds runs of another recipe ({what}): pass the same flags "
                             f"to continue it, or choose another --out")
    return want


def read_recipe(path):
    """A sweep's recipe.json. One written before the preset was always recorded ran train.py's default of then,
    nano (with --task: task)."""
    have = read_json(path)
    if "preset" not in have and "task" not in have:
        have["preset"] = "nano"
    return dict(sorted(have.items()))


def claim_recipe(out, given):
    """check_recipe, and recipe.json written before the first run starts, both under the folder's lock: a second
    sweep with another recipe, started while this one runs, is refused. Returns (recipe, whether we wrote it)."""
    lock = files.FolderLock(out, "compare.py").acquire(wait=True)  # held for a moment, not for the sweep
    try:
        want = check_recipe(out, given)
        path = os.path.join(out, "recipe.json")
        if os.path.exists(path):
            return want, False
        files.atomic_write(path, lambda f: f.write(json.dumps(want, indent=1).encode()))
        return want, True
    finally:
        lock.release()


def unclaim_recipe(out):
    """A sweep that wrote recipe.json and in which no run began (none wrote its config.json: say a typo in --data)
    removes it again, so the corrected command is a new sweep, not 'another recipe'."""
    lock = files.FolderLock(out, "compare.py").acquire(wait=True)
    try:
        if not any(os.path.isfile(os.path.join(out, d, "config.json")) for d in os.listdir(out)):
            os.remove(os.path.join(out, "recipe.json"))
    finally:
        lock.release()


# -----------------------------------------------------------------------------
# Running the sweep


def train_one(out, pe, seed, recipe):
    """Train (or resume) one run with train.py's main; returns its results.json entry."""
    d = run_dir(out, pe, seed)
    ckpt = os.path.join(d, "ckpt.pt")
    flags = recipe + ["--pe", pe, "--seed", str(seed), "--out-dir", d]
    # a checkpoint: continue it (train.py says "nothing to train" if it is already at the last step);
    # none: start afresh, replacing whatever a run killed before its first checkpoint left there
    flags += ["--resume", ckpt] if os.path.exists(ckpt) else ["--overwrite"]
    summary = train.main(flags)
    entry = run_entry(d, pe, seed, summary)
    if pe == "carope" and "--task" not in recipe:  # f over text: a task has none
        analyse_carope(d)  # small JSON of f(x_t): the plots redraw from it without the checkpoint
    files.atomic_write(os.path.join(d, "result.json"), lambda f: f.write(json.dumps(entry, indent=1).encode()))
    return entry


def run_entry(d, pe, seed, summary):
    info = read_json(os.path.join(d, "config.json"))
    steps = train_records(d)
    wall = sum(r["ms"] for r in steps) / 1000  # training steps only, over every resumed segment
    tokens = steps[-1]["tokens"] if steps else 0
    task = info["args"].get("task")  # a task's lengths are its own (copy: the string's)
    return dict(pe=pe, seed=seed, preset=info["args"]["preset"], task=task, context=summary["trained_at"],
                data=info["args"]["data_dir"],
                tokenizer=info["args"].get("tokenizer", "gpt2"), tokens=tokens,
                params=info["num_params"], tokens_per_s=tokens / wall if wall else None, wall_s=round(wall, 1),
                device=device_name(info["device"]), torch=torch.__version__, commit=COMMIT,
                val={str(T): {k: r[k] for k in ("loss", "ppl", "bpb", "acc", "token_acc") if k in r}
                     for T, r in summary["val"].items()},
                by_position=by_position(summary["val"]))


def by_position(val):
    """{"len": T, "positions": [first position of each span], "loss": [mean loss over the span]} at the
    longest length: POSITION_POINTS equal spans of the window, so results.json stays small."""
    T, r = max(((T, r) for T, r in val.items() if "by_position" in r), default=(None, None))
    if T is None:
        return None
    spans = np.array_split(np.arange(T), min(POSITION_POINTS, T))
    return dict(len=T, positions=[int(p[0]) for p in spans],
                loss=[float(np.mean([r["by_position"][i] for i in p])) for p in spans])


def read_log(d):
    """A run's log records; a last line cut short (a killed run) is left out, as train.py does on resume."""
    path = os.path.join(d, "log.jsonl")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise SystemExit(f"compare.py: {path}: line {i + 1} is not a log record: repair or delete that "
                                 f"line, or the run's folder to train it again") from None
    return records


def train_records(d):
    return [r for r in read_log(d) if r["type"] == "train"]


def device_name(device):
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads" if device == "cpu" else device


def git_commit():
    """The checked-out commit (None outside git), read once: the code this process runs."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


COMMIT = git_commit()


def sweep(args, recipe):
    """Every (pe, seed) in turn; finished runs are skipped, a failed run is reported and the rest go on."""
    failed = []
    for seed in args.seeds:  # all encodings of seed 1 first: an early stop still compares like with like
        for pe in args.pe:
            d = run_dir(args.out, pe, seed)
            if os.path.exists(os.path.join(d, "result.json")):
                print(f"compare.py: {pe} seed {seed}: finished, skipped ({d})")
                continue
            print(f"\ncompare.py: ===== {pe} seed {seed} -> {d} =====", flush=True)
            try:
                train_one(args.out, pe, seed, recipe)
            except KeyboardInterrupt:
                raise SystemExit("\ncompare.py: interrupted; run the same command again to continue the sweep")
            except SystemExit as e:
                if e.code in (129, 130, 143):  # a signal: train.py saved a checkpoint; stop the whole sweep
                    raise SystemExit(f"compare.py: interrupted during {pe} seed {seed}; run the same "
                                     f"command again to continue the sweep") from None
                failed.append(f"{pe} seed {seed}: {e}")
                print(f"compare.py: {pe} seed {seed} failed: {e}", file=sys.stderr)
            except Exception as e:  # a crash in one run must not cost the others
                failed.append(f"{pe} seed {seed}: {type(e).__name__}: {e}")
                print(f"compare.py: {pe} seed {seed} crashed: {type(e).__name__}: {e}", file=sys.stderr)
    return failed


# -----------------------------------------------------------------------------
# What CARoPE learned: f(x_t) on validation text, kept as a small JSON beside the run

@torch.no_grad()
def analyse_carope(d):
    """f(x_t)_h of every layer on a passage and on F_SAMPLE_TOKENS validation tokens -> DIR/carope_f.json."""
    model, ckpt = load_model(os.path.join(d, "ckpt.pt"))
    cfg = model.config
    data_dir = ckpt["train_args"]["data_dir"]
    val = shards.read_shard(shards.list_shards(data_dir)[0][0])
    tok = tokenizer.get_tokenizer(ckpt["train_args"].get("tokenizer", "gpt2"))
    n_passage = PASSAGE_TOKENS * (2 if tok.name == "bytes" else 1)  # a byte is a quarter of a GPT-2 token
    passage = np.asarray(val[1:1 + n_passage], dtype=np.int64)  # the val text after its first delimiter
    T = cfg.block_size
    n = min(F_SAMPLE_TOKENS, len(val) - 1) // T * T
    sample = torch.from_numpy(np.asarray(val[:n], dtype=np.int64)).view(-1, T)
    f_passage = layer_frequencies(model, torch.from_numpy(passage)[None])  # (L, 1, T, H)
    f_sample = layer_frequencies(model, sample)  # (L, rows, T, H)
    theta_1 = cfg.rope_base ** (-2.0 / cfg.head_dim)
    bins = np.linspace(0.0, 1.0, 101)
    hist = [[np.histogram(f_sample[layer, ..., h].numpy(), bins=bins)[0].tolist() for h in range(cfg.n_head)]
            for layer in range(cfg.n_layer)]
    analysis = dict(tokens=[tok.decode([t]) for t in passage.tolist()], theta_1=theta_1, bins=bins.tolist(),
                    f_passage=f_passage[:, 0].tolist(), hist=hist, sample_tokens=n,
                    mean=f_sample.mean(dim=(1, 2)).tolist(),  # (L, H)
                    device=device_name("cpu"), torch=torch.__version__)  # where f was computed (the model runs on CPU here)
    files.atomic_write(os.path.join(d, "carope_f.json"), lambda fh: fh.write(json.dumps(analysis).encode()))


def load_model(path):
    """The model of a train.py checkpoint, on the CPU in eval mode, and the checkpoint itself."""
    ckpt = checkpoints.load_checkpoint(path)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


@torch.no_grad()
def f_by_token(model, idx, vocab):
    """Mean f(x_t)_h over each kind of token in rows idx (B, T): {token name: (L, H) tensor}, for the
    tokens that occur. vocab names the ids (a task's vocab, e.g. tasks.FLIPFLOP_VOCAB). Exercise 8."""
    f = layer_frequencies(model, idx)  # (L, B, T, H)
    return {word: f[:, idx == i].mean(dim=1) for i, word in enumerate(vocab) if (idx == i).any()}  # (L, H) each


def layer_frequencies(model, idx):
    """f(x_t)_h of every CARoPE layer for tokens idx (B, T): a tensor (L, B, T, H)."""
    seen = []
    hooks = [block.attn.rotary.register_forward_hook(lambda m, inp, out: seen.append(m.frequencies(inp[0])))
             for block in model.transformer.h]
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(seen)


# -----------------------------------------------------------------------------
# Summaries: results.json, results.md

def collect(out):
    """Every finished run in the sweep folder (DIR/<pe>-s<seed>/result.json): RoPE first, then by encoding
    and seed. A summary covers them all, whatever --pe and --seeds this command names."""
    order = {pe: i for i, pe in enumerate(["rope"] + [p for p in PE_CHOICES if p != "rope"])}
    runs = [read_json(os.path.join(out, d, "result.json")) for d in sorted(os.listdir(out))
            if os.path.isfile(os.path.join(out, d, "result.json"))] if os.path.isdir(out) else []
    return sorted(runs, key=lambda r: (order.get(r["pe"], len(order)), r["seed"]))


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # torn or hand-edited
        raise SystemExit(f"compare.py: {path} is not valid JSON ({e}): delete it (a run's result.json is "
                         f"written again when that run is resumed)") from None


def by_pe(runs):
    groups = {}
    for r in runs:
        groups.setdefault(r["pe"], []).append(r)
    return groups


def metrics_of(runs):
    """The figures every run has; per answer token only where it differs from whole answers somewhere (an answer
    of several tokens: a copied string, MQAR's queries of a row)."""
    have = [m for m in ("ppl", "bpb", "acc", "token_acc") if all(m in v for r in runs for v in r["val"].values())]
    same = all(v["token_acc"] == v["acc"] for r in runs for v in r["val"].values()) if "token_acc" in have else True
    return [m for m in have if m != "token_acc" or not same]


def write_markdown(out, runs, commands, train_len):
    groups = by_pe(runs)
    lens = sorted({int(T) for r in runs for T in r["val"]})
    word = "len" if runs[0].get("task") else "ctx"
    head = "| pe | seeds | " + " | ".join(f"{word} {T} ({T / train_len:g}x)" for T in lens) + " |"
    rule = "|---|---:|" + "---:|" * len(lens)
    metrics = metrics_of(runs)
    lines = [f"# {os.path.basename(os.path.normpath(out))}: {' and '.join(NAMES[m] for m in metrics)}, mean over seeds",
             "", *([f"Command: `{commands[0]}`"] if len(commands) == 1 else
                  [f"Commands (the tables merge their runs):"] + [f"- `{c}`" for c in commands]), "",
             f"Runs: {len(runs)}; trained at {'length' if word == 'len' else 'context'} {train_len}. Cells: mean ± std "
             "over seeds [min–max]."]
    for m in metrics:
        lines += ["", f"**{NAMES[m]}** ({'higher' if m in ACCURACIES else 'lower'} is better)", "", head, rule]
        for pe, rs in groups.items():
            cells = []
            d = DIGITS[m]
            for T in lens:
                v = values(rs, T, m)
                cells.append(f"{np.mean(v):.{d}f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.{d}f} "
                             f"[{min(v):.{d}f}–{max(v):.{d}f}]" if v else "–")
            lines.append(f"| {pe} | {len(rs)} | " + " | ".join(cells) + " |")
    if "rope" in groups and "ppl" in metrics:
        lines += change_table(groups, lens, head, rule)
    if "rope" in groups:
        for m in metrics:
            lines += paired_table(groups, lens, head, rule, m, NAMES[m])
    if max(len(rs) for rs in groups.values()) >= ROBUST_SEEDS:
        for m in metrics:
            lines += robust_table(groups, lens, head, rule, m, NAMES[m])
    speed = [f"{pe} {np.mean([r['tokens_per_s'] for r in rs]):,.0f}" for pe, rs in groups.items()
             if all(r["tokens_per_s"] for r in rs)]
    first = runs[0]
    lines += ["", f"Training tokens per run: {first['tokens']:,}; device: {first['device']}; torch {first['torch']}; "
              + (f"task: {first['task']}." if first.get("task") else
               f"data: {first['data']} ({first.get('tokenizer', 'gpt2')} tokens)."),
              f"Training tokens/s (mean over seeds, steps only): {'; '.join(speed)}."]
    files.atomic_write(os.path.join(out, "results.md"), lambda f: f.write(("\n".join(lines) + "\n").encode()))


def difference(value, rope, metric):
    """pe against RoPE: accuracy in points (pe - RoPE), a loss-like figure in % (pe / RoPE - 1)."""
    return 100 * (value - rope) if metric in ACCURACIES else 100 * (value / rope - 1)


def seed_changes(runs, pe, T, metric):
    """pe against RoPE at the same seed at length T (a string, as in results.json): one figure per seed."""
    rope = {r["seed"]: r["val"] for r in runs if r["pe"] == "rope"}
    return [difference(r["val"][T][metric], rope[r["seed"]][T][metric], metric) for r in runs
            if r["pe"] == pe and r["seed"] in rope and T in r["val"] and T in rope[r["seed"]]]


def seeds_better(changes, metric):
    """In how many seeds pe beats RoPE, from seed_changes: accuracy up, a loss-like figure down."""
    return sum(c > 0 if metric in ACCURACIES else c < 0 for c in changes)


def values(rs, T, metric):
    return [r["val"][str(T)][metric] for r in rs if str(T) in r["val"]]


def change_table(groups, lens, head, rule):
    """Each encoding's mean perplexity against RoPE's, and whether the seeds' ranges overlap at all."""
    several = len(groups["rope"]) > 1
    lines = ["", "Change of mean perplexity against RoPE" + (
        ". **beyond spread**: the seeds' min–max ranges of the two encodings do not overlap; otherwise the "
        "difference is within seed noise." if several else " (one RoPE seed: no spread to compare with)."),
        "", head.replace("| seeds |", "| |"), rule]
    for pe, rs in groups.items():
        if pe == "rope":
            continue
        cells = []
        for T in lens:
            p, ref = values(rs, T, "ppl"), values(groups["rope"], T, "ppl")
            if not p or not ref:
                cells.append("–")
                continue
            apart = len(p) > 1 and several and (max(p) < min(ref) or min(p) > max(ref))
            cells.append(f"{100 * (np.mean(p) / np.mean(ref) - 1):+.1f}%" + (" **beyond spread**" if apart else ""))
        lines.append(f"| {pe} | | " + " | ".join(cells) + " |")
    return lines


def paired_table(groups, lens, head, rule, metric="ppl", title="validation perplexity"):
    """Each seed against RoPE at the same seed. A seed fixes the data order and the initial weights the
    encodings share (CARoPE and carope-static even start as that very RoPE model), so the per-seed
    change removes most of what varies from seed to seed."""
    d = 1  # a change to one decimal: % or points
    lines = ["", f"The change in {title}, paired by seed: mean over seeds [min–max] of pe against RoPE at the "
             "same seed (accuracy: the difference in points; otherwise pe / RoPE − 1); **every seed** where all "
             "seeds (two or more) agree in sign. With few seeds that is weak evidence: n seeds agree in sign by "
             "chance one time in 2^(n-1) (2 seeds: one in two; 3: one in four).", "", head, rule]
    for pe, rs in groups.items():
        if pe == "rope":
            continue
        cells, n = [], 0
        for T in lens:
            change = seed_changes(groups["rope"] + rs, pe, str(T), metric)
            n = max(n, len(change))
            agree = len(change) > 1 and (max(change) < 0 or min(change) > 0)
            unit = " pt" if metric in ACCURACIES else "%"
            cells.append(f"{np.mean(change):+.{d}f}{unit} [{min(change):+.{d}f}, {max(change):+.{d}f}]"
                         + (" **every seed**" if agree else "") if change else "–")
        lines.append(f"| {pe} | {n} | " + " | ".join(cells) + " |")
    return lines


def robust_table(groups, lens, head, rule, metric, title):
    """Median and interquartile range over seeds, and in how many seeds pe beats RoPE at the same seed: past
    the training length a small model's task accuracy is chaotic (a rerun on another CPU can move one run by
    tens of points), so with many seeds the median and the count say more than the mean."""
    lines = ["", f"**{title}**: median [interquartile range] over seeds; after it, in how many seeds pe beats RoPE "
             "at the same seed.", "", head, rule]
    for pe, rs in groups.items():
        cells = []
        for T in lens:
            v = values(rs, T, metric)
            if not v:
                cells.append("–")
                continue
            q1, q2, q3 = np.percentile(v, [25, 50, 75])
            d = DIGITS[metric]
            cell = f"{q2:.{d}f} [{q1:.{d}f}–{q3:.{d}f}]"
            change = seed_changes(groups.get("rope", []) + rs, pe, str(T), metric) if pe != "rope" else []
            if change:
                cell += f" ({seeds_better(change, metric)}/{len(change)})"
            cells.append(cell)
        lines.append(f"| {pe} | {len(rs)} | " + " | ".join(cells) + " |")
    return lines


# -----------------------------------------------------------------------------
# Every sweep at a glance: CARoPE against RoPE across the committed comparisons (--summary)

def metric_of(runs):
    """The one figure a sweep is compared by: accuracy for a task; bits per byte where every run has it, else
    perplexity."""
    return next(m for m in ("acc", "bpb", "ppl") if m in metrics_of(runs))


def paired_change(runs, pe="carope"):
    """CARoPE's change against RoPE at the same seed at the longest length tested up to 16x the training length
    (4x for a task): bits per byte (else perplexity) in %, accuracy in points. None without both encodings."""
    train_len = runs[0].get("context") or min(int(T) for T in runs[0]["val"])
    task, metric = bool(runs[0].get("task")), metric_of(runs)
    seeds = {r["seed"] for r in runs if r["pe"] == "rope"}
    lens = sorted({int(T) for r in runs if r["pe"] == pe and r["seed"] in seeds for T in r["val"]
                   if int(T) <= (4 if task else 16) * train_len})
    if not lens:
        return None
    change = seed_changes(runs, pe, str(lens[-1]), metric)
    return dict(metric=metric, ratio=lens[-1] / train_len, change=change, task=task) if change else None


def summary(root):
    """root/summary.md and root/summary.png: CARoPE against RoPE in every sweep folder under root that has both."""
    rows = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "results.json")
        if os.path.isfile(path):
            c = paired_change(read_json(path)["runs"])
            if c:
                rows.append((name, c))
    if not rows:
        raise SystemExit(f"compare.py: no sweep under {root} has both rope and carope runs; nothing to summarise")
    lines = [f"# CARoPE against RoPE, every committed comparison", "",
             "Paired by seed: CARoPE's figure against RoPE's at the same seed, at the longest length tested up to 16x the "
             "training length (4x for a task). Bits per byte (or perplexity): CARoPE / RoPE - 1, negative is better. "
             "Accuracy: CARoPE - RoPE in points, positive is better. Written by `python compare.py --summary "
             f"{root}` from each folder's results.json.", "",
             "| sweep | at | metric | seeds | mean | median | min | max | seeds better |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in rows:
        v, unit = c["change"], " pt" if c["task"] else " %"
        better = seeds_better(v, c["metric"])
        lines.append(f"| [{name}]({name}/results.md) | {c['ratio']:g}x | {c['metric']} | {len(v)} | {np.mean(v):+.1f}{unit} "
                     f"| {np.median(v):+.1f}{unit} | {min(v):+.1f}{unit} | {max(v):+.1f}{unit} | {better}/{len(v)} |")
    files.atomic_write(os.path.join(root, "summary.md"), lambda f: f.write(("\n".join(lines) + "\n").encode()))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = [[r for r in rows if not r[1]["task"]], [r for r in rows if r[1]["task"]]]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 0.5 * max(map(len, groups)) + 1.8), squeeze=False)
    for ax, g in zip(axes[0], groups):
        task = g[0][1]["task"]
        for y, (name, c) in enumerate(g):
            v = c["change"]
            ax.plot([min(v), max(v)], [y, y], color="tab:blue", lw=2, alpha=0.4)
            ax.scatter(v, [y] * len(v), color="tab:blue", s=14, alpha=0.7)
            ax.scatter([np.mean(v)], [y], color="black", marker="|", s=300, zorder=3)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(g)), [f"{name} ({c['ratio']:g}x, {len(c['change'])} seeds)" for name, c in g])
        ax.invert_yaxis()
        ax.set_xlabel("CARoPE - RoPE, accuracy points (right is better)" if task else
                      "CARoPE / RoPE - 1, bits per byte or perplexity, % (left is better)")
        ax.set_title("synthetic tasks, at 4x the training length" if task else
                     "language modelling, at 16x the training context (or the longest tested)")
    fig.suptitle("CARoPE against RoPE, paired by seed (dots: seeds; bar: mean; line: min-max)")
    fig.tight_layout()
    save(plt, fig, root, "summary.png")
    print("\n".join(lines))
    print(f"\ncompare.py: {len(rows)} sweep(s) -> {root}/summary.md, summary.png")


SIZE_KEYS = ("n_layer", "n_head", "n_embd")  # what --sizes lets differ between the sweeps it compares
SIZE_RATIOS = (1, 4, 16)


def sizes(dirs):
    """model_size.md and model_size.png beside the sweeps: CARoPE's and carope-static's change against RoPE,
    paired by seed, at 1x, 4x and 16x the training context, against the parameter count. The sweeps' recipes
    must be the same but for the model's size, so that size is the one thing that changes."""
    recipes = {d: {k: v for k, v in settings(read_recipe(os.path.join(d, "recipe.json"))).items() if k not in SIZE_KEYS}
               for d in dirs}
    for d in dirs[1:]:
        diff = differing(recipes[d], recipes[dirs[0]])
        if diff:
            raise SystemExit(f"compare.py: --sizes: {d} and {dirs[0]} differ in {', '.join(diff)}, not only in "
                             f"{', '.join(SIZE_KEYS)}: compare sweeps of one recipe")
    rows = []
    for d in dirs:
        runs = read_json(os.path.join(d, "results.json"))["runs"]
        rope = [r for r in runs if r["pe"] == "rope"]
        if not rope or not any(r["pe"] == "carope" for r in runs):
            raise SystemExit(f"compare.py: --sizes: {d} has no rope and carope runs to pair; nothing to compare")
        train_len, metric = rope[0]["context"], metric_of(runs)
        cells = {(pe, k): seed_changes(runs, pe, str(k * train_len), metric)
                 for pe in ("carope", "carope-static") for k in SIZE_RATIOS}
        model = read_json(os.path.join(run_dir(d, "rope", rope[0]["seed"]), "config.json"))["model"]
        rows.append(dict(name=os.path.basename(d), params=rope[0]["params"], seeds=len(rope), metric=metric,
                         shape=f"{model['n_layer']} x {model['n_embd']}", cells=cells))
    rows.sort(key=lambda r: r["params"])
    root = os.path.dirname(os.path.abspath(dirs[0]))
    fmt = lambda v: f"{np.mean(v):+.1f} % [{min(v):+.1f}, {max(v):+.1f}]" if v else "–"
    lines = ["# CARoPE against RoPE as the model grows", "",
             f"One recipe, only the model's size changed. {rows[0]['metric']} of pe against RoPE at the same seed, "
             f"pe / RoPE - 1 in %, mean over seeds [min, max]; negative is better. Written by `python compare.py "
             f"--sizes {','.join(dirs)}`.", "",
             "| sweep | model | params (rope) | seeds | " + " | ".join(f"{pe} {k}x" for pe in ("carope", "carope-static")
                                                           for k in SIZE_RATIOS) + " |",
             "|---|---|---:|---:|" + "---:|" * 2 * len(SIZE_RATIOS)]
    for r in rows:
        lines.append(f"| [{r['name']}]({r['name']}/results.md) | {r['shape']} | {r['params']:,} | {r['seeds']} | "
                     + " | ".join(fmt(r["cells"][pe, k]) for pe in ("carope", "carope-static") for k in SIZE_RATIOS) + " |")
    files.atomic_write(os.path.join(root, "model_size.md"), lambda f: f.write(("\n".join(lines) + "\n").encode()))
    plot_sizes(rows, root)
    print("\n".join(lines))
    print(f"\ncompare.py: {len(rows)} sweeps -> {root}/model_size.md, model_size.png")


def plot_sizes(rows, root):
    """model_size.png: the paired change at each ratio against the parameter count (log), bars min-max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.array([r["params"] for r in rows], dtype=float)
    for i, k in enumerate(SIZE_RATIOS):
        for pe, style in (("carope", "-"), ("carope-static", ":")):
            v = [r["cells"][pe, k] for r in rows]
            if not all(v):
                continue
            mean = np.array([np.mean(c) for c in v])
            err = np.array([[m - min(c) for m, c in zip(mean, v)], [max(c) - m for m, c in zip(mean, v)]])
            ax.errorbar(x * (1 + 0.04 * (i - 1)), mean, yerr=err, fmt="o" + style, capsize=3, color=f"C{i}",
                        alpha=1 if pe == "carope" else 0.5, label=f"{pe} at {k}x")
    ax.axhline(0, color="grey", lw=1)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{r['shape']}\n{r['params'] / 1e6:.2f}M" for r in rows])
    ax.minorticks_off()
    ax.set_xlabel("model (layers x width) and parameters")
    ax.set_ylabel(f"pe / RoPE - 1, {rows[0]['metric']}, % (lower is better)")
    ax.set_title("CARoPE against RoPE as the model grows (paired by seed; bars: min-max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(plt, fig, root, "model_size.png")



# -----------------------------------------------------------------------------
# Plots (matplotlib, Agg: files only, no window)

def plots(out, runs, train_len):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {pe: plt.get_cmap("tab10")(i) for i, pe in enumerate(PE_CHOICES)}
    written = [plot_loss(plt, out, runs, colors), plot_ppl(plt, out, runs, train_len, colors),
               plot_by_position(plt, out, runs, train_len, colors)]
    seeds = sorted({r["seed"] for r in runs if r["pe"] == "carope"})
    f_path = next((os.path.join(run_dir(out, "carope", s), "carope_f.json") for s in seeds
                   if os.path.exists(os.path.join(run_dir(out, "carope", s), "carope_f.json"))), None)
    if f_path:
        with open(f_path) as fh:
            analysis = json.load(fh)
        written += [plot_frequencies(plt, out, analysis), plot_clock(plt, out, analysis)]
    return [w for w in written if w]


def seed_curves(out, rs, kind):
    """{tokens: [value per seed]} of the runs' logged train loss or 1x validation loss."""
    curves = {}
    for r in rs:
        log = read_log(run_dir(out, r["pe"], r["seed"]))
        tokens_at = {r["step"]: r["tokens"] for r in log if r["type"] == "train"}
        if kind == "train":
            loss = np.array([r["loss"] for r in log if r["type"] == "train"])
            smooth = np.convolve(loss, np.ones(10) / 10, mode="valid") if len(loss) >= 10 else loss  # 10-step mean
            steps = sorted(tokens_at)[len(loss) - len(smooth):]
            points = zip(steps, smooth)
        else:
            first = min(r["len"] for r in log if r["type"] == "eval")
            points = [(r["step"], r["loss"]) for r in log if r["type"] == "eval" and r["len"] == first]
        for step, v in points:
            curves.setdefault(tokens_at[step], []).append(v)
    return curves


def plot_loss(plt, out, runs, colors):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind, title in ((axes[0], "train", "training loss (10-step mean)"),
                            (axes[1], "val", "validation loss at the training context")):
        top = []  # the y axis starts at a quarter of the way in: the first steps would flatten every difference
        for pe, rs in by_pe(runs).items():
            curves = seed_curves(out, rs, kind)
            if not curves:
                continue
            x = np.array(sorted(curves))
            n = min(len(v) for v in curves.values())
            vals = [np.array(curves[t][:n]) for t in x]
            mean = np.array([v.mean() for v in vals])
            ax.plot(x, mean, color=colors[pe], label=f"{pe} ({n} seed{'s' if n > 1 else ''})",
                    marker="o" if kind == "val" else None, ms=3)
            ax.fill_between(x, [v.min() for v in vals], [v.max() for v in vals], color=colors[pe], alpha=0.2)
            top.append(mean[len(mean) // 4])
        if top:
            ax.set_ylim(top=max(top))
        ax.set_xlabel("training tokens")
        ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("Loss against training tokens: seed mean, band = min–max over seeds")
    return save(plt, fig, out, "loss.png")


def plot_ppl(plt, out, runs, train_len, colors):
    metrics = metrics_of(runs)
    fig, axes = plt.subplots(1, len(metrics), figsize=(7 * len(metrics), 4.5), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for pe, rs in by_pe(runs).items():
            lens = sorted({int(T) for r in rs for T in r["val"]})
            v = [values(rs, T, m) for T in lens]
            mean = np.array([np.mean(x) for x in v])
            err = [mean - [min(x) for x in v], [max(x) for x in v] - mean]
            ax.errorbar(lens, mean, yerr=err, color=colors[pe], marker="o", ms=4, capsize=3,
                        label=f"{pe} ({len(rs)} seed{'s' if len(rs) > 1 else ''})")
        task = runs[0].get("task")  # a task's length is its own: copy's is the string's
        ax.axvline(train_len, color="gray", ls="--", lw=1)
        ax.text(train_len, ax.get_ylim()[1], f" training {'length' if task else 'context'}", va="top", fontsize=8,
                color="gray")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"test length ({task}, log scale)" if task else "evaluation context (tokens, log scale)")
        ax.set_ylabel(NAMES[m])
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plot, not over it
    fig.suptitle(f"Against {'test' if runs[0].get('task') else 'context'} length (mean over seeds, bars = min–max)")
    return save(plt, fig, out, "acc_vs_length.png" if runs[0].get("task") else "ppl_vs_length.png")


def plot_by_position(plt, out, runs, train_len, colors):
    """Loss at each position of the longest windows, averaged over windows and seeds: past the training
    context an encoding that does not extrapolate climbs; one that does stays flat or keeps falling."""
    runs = [r for r in runs if r.get("by_position")]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for pe, rs in by_pe(runs).items():
        curves = np.array([r["by_position"]["loss"] for r in rs])  # (seeds, points)
        x = np.array(rs[0]["by_position"]["positions"]) + 1
        ax.plot(x, curves.mean(0), color=colors[pe], lw=1.3, label=f"{pe} ({len(rs)} seed{'s' if len(rs) > 1 else ''})")
        if len(rs) > 1:
            ax.fill_between(x, curves.min(0), curves.max(0), color=colors[pe], alpha=0.15)
    ax.axvline(train_len, color="gray", ls="--", lw=1)
    ax.text(train_len, ax.get_ylim()[1], " training context", va="top", fontsize=8, color="gray")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"position in a window of {runs[0]['by_position']['len']} tokens (log scale)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Loss by position (mean over windows and seeds, band = min–max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save(plt, fig, out, "loss_by_position.png")


def plot_frequencies(plt, out, a):
    f = np.array(a["f_passage"])  # (L, T, H)
    L, T, H = f.shape
    layer = 0
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw=dict(width_ratios=[2.2, 1]))
    im = axes[0].imshow(f[layer].T, aspect="auto", cmap="viridis")  # heads along y, tokens along x
    axes[0].set_xticks(range(T), [visible(t) for t in a["tokens"]], rotation=90, fontsize=7)
    axes[0].set_yticks(range(H), [f"head {h}" for h in range(H)], fontsize=8)
    axes[0].set_title(f"f(x_t)_h in layer {layer} along a validation passage (RoPE: {a['theta_1']:.3f} everywhere)")
    fig.colorbar(im, ax=axes[0], fraction=0.03)
    centers = (np.array(a["bins"][:-1]) + np.array(a["bins"][1:])) / 2
    for layer_i, per_head in enumerate(a["hist"]):
        counts = np.sum(per_head, axis=0)
        axes[1].plot(centers, counts / counts.sum(), label=f"layer {layer_i}")
    axes[1].axvline(a["theta_1"], color="k", ls="--", lw=1, label=f"RoPE theta_1 = {a['theta_1']:.3f}")
    axes[1].set_xlabel("f(x_t) (all heads)")
    axes[1].set_ylabel("share of tokens")
    axes[1].set_title(f"f per layer over {a['sample_tokens']:,} validation tokens")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return save(plt, fig, out, "carope_f.png")


def visible(text):
    """A token as a tick label: spaces, newlines and tabs drawn as signs, other control characters escaped."""
    text = text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def plot_clock(plt, out, a):
    f = np.array(a["f_passage"])  # (L, T, H); pair 1's phase is the running sum of f itself (f^1)
    L, T, H = f.shape
    fig, axes = plt.subplots(1, L, figsize=(3.2 * L, 3.4), sharey=True, squeeze=False)
    m = np.arange(1, T + 1)
    for layer, ax in enumerate(axes[0]):
        for h in range(H):
            ax.plot(m, np.cumsum(f[layer, :, h]), lw=1, label=f"head {h}")
        ax.plot(m, m * a["theta_1"], "k--", lw=1.5, label="RoPE: m theta_1")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("position m in the passage")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("phi_1(m) = sum_{t<=m} f(x_t)  (rad)")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle("The context-aware clock: phase of pair 1 along the passage, CARoPE's heads vs RoPE's line")
    fig.tight_layout()
    return save(plt, fig, out, "carope_clock.png")


def save(plt, fig, out, name):
    path = os.path.join(out, name)
    try:  # whole or not at all, as every summary file: a full disk or Ctrl-C leaves the previous one
        files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


# -----------------------------------------------------------------------------

def summarise(out, given):
    runs = collect(out)
    if not runs:
        raise SystemExit(f"compare.py: no finished runs in {out}; run without --plot-only first")
    files.atomic_write(os.path.join(out, "results.json"), lambda f: f.write(json.dumps(dict(runs=runs), indent=1).encode()))
    train_len = runs[0].get("context") or min(given["eval_lens"])  # older sweeps did not record it
    recipe = [a for k, v in given.items() for a in recipe_flag(k, v)]  # the same words after a sweep or --plot-only
    by_seeds = {}  # encodings run with the same seeds share a command: one command never names runs not made
    for pe, rs in by_pe(runs).items():
        by_seeds.setdefault(tuple(sorted(r["seed"] for r in rs)), []).append(pe)
    commands = [shlex.join(["python", "compare.py", "--pe", ",".join(pes), "--seeds", ",".join(map(str, seeds)),
                            *recipe, "--out", out]) for seeds, pes in by_seeds.items()]
    write_markdown(out, runs, commands, train_len)
    written = plots(out, runs, train_len)
    print(f"\ncompare.py: {len(runs)} run(s) -> {out}/results.json, results.md, "
          + ", ".join(os.path.basename(w) for w in written))
    with open(os.path.join(out, "results.md")) as f:
        print(f.read())


def summarise_safely(out, given):
    """summarise; a full disk or Ctrl-C is one line: the runs are kept, each summary file is the previous one or
    the new one whole (atomic writes), and --plot-only writes the summary again."""
    redo = cli.command("python", "compare.py", "--out", out, "--plot-only")
    for folder in [out] + [os.path.join(out, d) for d in sorted(os.listdir(out))]:  # temps of a killed summary
        files.remove_stale_temps(folder)
    interrupts = runs.Interrupts().install()  # SIGTERM and SIGHUP too: the temp file goes, the line is said
    try:
        summarise(out, given)
    except KeyboardInterrupt:
        signum = interrupts.signum or signal.SIGINT
        name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
        print(f"\ncompare.py: interrupted{name} while writing the summary; the runs are kept: {redo} writes it",
              file=sys.stderr)
        raise SystemExit(128 + signum) from None
    except OSError as e:
        raise SystemExit(f"compare.py: cannot write the summary in {out} ({e.strerror or e}); the runs are kept "
                         f"and every summary file is whole, the previous one or the new one: make room, then {redo}"
                         ) from None
    finally:
        interrupts.uninstall()


def main(argv=None):
    args, recipe = parse_args(sys.argv[1:] if argv is None else argv)
    if args.summary is not None:
        summary(args.summary)
        return 0
    if args.sizes is not None:
        sizes(args.sizes)
        return 0
    check_out(args.out)
    if args.plot_only:
        path = os.path.join(args.out, "recipe.json")
        if not os.path.exists(path):
            raise SystemExit(f"compare.py: {args.out} holds no sweep (no recipe.json); run without --plot-only first")
        given = read_recipe(path)
        summarise_safely(args.out, given)
        return 0
    recipe, given = resolve_recipe(recipe)
    given, wrote = claim_recipe(args.out, given)
    t0 = time.time()
    try:
        failed = sweep(args, recipe)
    finally:
        if wrote:
            unclaim_recipe(args.out)
    if failed and not collect(args.out):  # nothing to summarise: say why, not "no finished runs"
        print(f"compare.py: no run has finished; {len(failed)} failed:\n  " + "\n  ".join(failed)
              + "\ncompare.py: fix that, then run again", file=sys.stderr)
        return 1
    summarise_safely(args.out, given)
    print(f"compare.py: done in {time.time() - t0:.0f} s")
    if failed:
        print(f"compare.py: {len(failed)} run(s) failed:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


def recipe_flag(key, value):
    """A recorded train.py setting back as command-line words (for the recipe line in results.md)."""
    flag = "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    if value is False:  # --no-compile, --no-fused-carope: the flags that have a --no- form
        negative = f"--no-{key.replace('_', '-')}"
        return [negative] if negative in train.parser._option_string_actions else []
    if key == "task_option":  # repeatable: --task-option a=1 --task-option b=2
        return [w for v in value for w in (flag, v)]
    return [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]


if __name__ == "__main__":
    sys.exit(main())
