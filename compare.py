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

This file is the sweep: what runs, in which order, resumably, under one recipe. How a sweep folder is read is in
support/sweeps.py, its tables in support/tables.py, its plots in support/plots.py, and --summary and --sizes
(across sweeps) in support/overviews.py.
"""

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from support import checkpoints, cli, files, overviews, plots, runs, shards, sweeps, tables, tokenizer
from support.settings import PE_ONLY
from support.sweeps import run_dir  # DIR/<pe>-s<seed>
import train
from carope import GPT, GPTConfig, PE_CHOICES

OWN_FLAGS = {  # train.py's flags that compare.py sets itself, or that make no sense in a sweep, and what to do instead
    "--pe": "use --pe with a comma-separated list", "--seed": "use --seeds",
    "--resume": "a rerun of the same command resumes every unfinished run",
    "--ckpt": "a rerun of the same command resumes every unfinished run",
    "--overwrite": "delete the run's folder DIR/<pe>-s<seed> to train it afresh",
    "--eval-only": "a sweep trains; to evaluate one run: python train.py --eval-only --resume DIR/<pe>-s<seed>/ckpt.pt"}
PASSAGE_TOKENS = 40  # tokens of the validation text shown along the x axis of the CARoPE plots
F_SAMPLE_TOKENS = 8192  # validation tokens whose f(x_t) make the per-layer distributions
POSITION_POINTS = 128  # the loss by position is kept as the means of this many equal spans of the window


def parse_args(argv):
    p = cli.Parser(  # no abbreviations: else train.py's --seed would be taken for --seeds
        prog="compare.py",
        description="Train a list of encodings x seeds with one train.py recipe; write results.json, "
                    "results.md and plots. Any other flag goes to train.py unchanged (python train.py --help).",
        epilog="example: python compare.py --preset nano --pe rope,carope,carope-static --seeds 1,2,3 "
               "--out results/nano-kjv")
    p.add_argument("--pe", help="comma-separated encodings "
                   f"(default rope,carope,carope-static; any of {','.join(PE_CHOICES)})")
    p.add_argument("--seeds", help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--out", "--out-dir", dest="out", metavar="DIR",
                   help="the sweep's folder: one sub-folder per run")
    p.add_argument("--summary", metavar="ROOT", help="no training: CARoPE against RoPE in every sweep folder under "
                   "ROOT, as ROOT/summary.md and ROOT/summary.png (python compare.py --summary results)")
    p.add_argument("--sizes", metavar="DIR,DIR,..", help="no training: CARoPE against RoPE at 1x, 4x and 16x against "
                   "the parameter count, in sweeps whose recipes differ only in the model's size, as model_size.md and "
                   ".png beside them (python compare.py --sizes results/bytes-kjv-2x64,results/bytes-kjv)")
    p.add_argument("--bases", metavar="DIR,DIR,..", help="no training: each encoding at each RoPE base, in sweeps whose "
                   "recipes differ only in --rope-base (one of them at 10^4), as rope_base_<preset or task>.md and .png "
                   "beside them (python compare.py --bases results/bytes-kjv,results/bytes-kjv-base10)")
    p.add_argument("--plot-only", action="store_true", help="redraw results.md and the plots from the runs "
                   "in --out without training")
    args, recipe = p.parse_known_args(argv)
    modes = [m for m in ("sizes", "bases", "summary") if getattr(args, m) is not None]
    for mode in modes:  # the modes that read committed sweeps take no other flag
        if getattr(args, mode) is not None:
            other = [f for f, v in (("--out", args.out), ("--pe", args.pe), ("--seeds", args.seeds),
                                    ("--plot-only", args.plot_only)) if v] + [f"--{m}" for m in modes if m != mode] + recipe[:1]
            if other:
                p.error(f"--{mode} reads committed sweeps and trains nothing, so {other[0]} would be ignored: "
                        f"give --{mode} alone")
    if modes and modes[0] in ("sizes", "bases"):  # sweeps of one recipe, side by side
        mode = modes[0]
        dirs = [d.rstrip("/") for d in getattr(args, mode).split(",") if d]
        setattr(args, mode, dirs)
        missing = [d for d in dirs if not os.path.isfile(os.path.join(d, "results.json"))]
        if len(dirs) < 2 or missing:
            p.error(f"--{mode}: give two or more sweep folders that hold a results.json"
                    + (f" ({', '.join(missing)} holds none)" if missing else ""))
        twice = [d for i, d in enumerate(dirs) if os.path.realpath(d) in map(os.path.realpath, dirs[:i])]
        if twice:
            p.error(f"--{mode} names {twice[0]} twice: give each sweep once")
        if len({os.path.dirname(os.path.abspath(d)) for d in dirs}) > 1:
            p.error(f"--{mode}: the sweeps must sit in one folder (the table is written beside them)")
        return args, recipe
    if args.summary is not None:
        if os.path.exists(args.summary) and not os.path.isdir(args.summary):
            p.error(f"--summary {args.summary} is a file: give the folder that holds the sweeps (e.g. results)")
        if not os.path.isdir(args.summary):
            p.error(f"--summary {args.summary}: no such folder")
        return args, recipe
    args.pe = args.pe or "rope,carope,carope-static"
    args.seeds = args.seeds or "1,2,3"
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
    own = [a.split("=")[0] for a in recipe if a.split("=")[0] in OWN_FLAGS]
    if own:
        p.error(f"{own[0]} is not a sweep's flag: {OWN_FLAGS[own[0]]}")
    return args, recipe


def resolve_recipe(recipe, pes):
    """train.py's flags as given, checked by train.py's own parser for every encoding of the sweep (each run gets
    only the flags its encoding reads: for_run); the preset is always recorded (train.py's default has changed,
    from nano to bytes); eval lengths default to 1x..8x."""
    actions = train.parser._option_string_actions
    asked = {actions[w.split("=")[0]].dest for w in recipe if w.split("=")[0] in actions}
    unread = [k for k in PE_ONLY if k in asked and not set(pes) & set(PE_ONLY[k])]
    if unread:
        flag = f"--{unread[0].replace('_', '-')}"
        raise SystemExit(f"compare.py: {flag} is read by --pe {', '.join(PE_ONLY[unread[0]])} only, and this sweep "
                         f"has none of them ({', '.join(pes)}): drop {flag}, or add one of them to --pe")
    given = {}
    for pe in reversed(pes):  # RoPE's last: its settings are the sweep's
        try:
            targs, g, _ = train.resolve_args(for_run(recipe, pe) + ["--pe", pe])
        except SystemExit as e:
            if e.code in (0, None):  # --help
                raise
            raise SystemExit(f"compare.py: train.py rejects the recipe {' '.join(recipe)!r} for --pe {pe}: {e}") from None
        given.update({k: v for k, v in g.items() if k != "pe"})
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


def for_run(recipe, pe):
    """The recipe's words for one run: a flag that only other encodings read (settings.PE_ONLY, which train.py
    refuses) is left out, so that --pe rope,carope --carope-init zero is one sweep."""
    words, skip = [], False
    for w in recipe:
        if skip:  # the value of a flag left out
            skip = False
            continue
        action = train.parser._option_string_actions.get(w.split("=")[0])
        if action and action.dest in PE_ONLY and pe not in PE_ONLY[action.dest]:
            skip = "=" not in w and action.nargs != 0
            continue
        words.append(w)
    return words


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


def check_recipe(out, given, taken):
    """A sweep folder holds one recipe: refuse another with one line naming the difference. A folder that no
    sweep has taken (taken: a run began, or the sweep that wrote recipe.json still runs) takes the new recipe: a
    sweep killed before its first run leaves its recipe.json behind."""
    want = json.loads(json.dumps(given))  # as it reads back from JSON (tuples -> lists)
    if os.path.exists(os.path.join(out, "recipe.json")) and taken:
        have, now = sweeps.settings(sweeps.read_recipe(out)), sweeps.settings(want)
        diff = sweeps.differing(have, now)
        if diff:
            what = "; ".join(f"--{k.replace('_', '-')} {have.get(k, '(unset)')} there, {now.get(k, '(unset)')} here"
                             for k in diff)
            raise SystemExit(f"compare.py: {out} holds runs of another recipe ({what}): pass the same flags "
                             f"to continue it, or choose another --out")
    return want


def claim_recipe(out, given):
    """check_recipe, and recipe.json written before the first run starts, both under the folder's lock: a second
    sweep with another recipe, started while this one runs, is refused. Returns (recipe, whether we wrote it)."""
    claimant = files.last_holder(out)  # the sweep that took the folder last (the lock replaces it with us)
    lock = files.FolderLock(out, "compare.py").acquire(wait=True)  # held for a moment, not for the sweep
    try:
        taken = sweeps.has_runs(out) or (claimant not in (None, os.getpid()) and files.pid_alive(claimant))
        want = check_recipe(out, given, taken)
        path = os.path.join(out, "recipe.json")
        if taken and os.path.exists(path):
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
        if not sweeps.has_runs(out):
            os.remove(os.path.join(out, "recipe.json"))
    finally:
        lock.release()


# -----------------------------------------------------------------------------
# Running the sweep


def train_one(out, pe, seed, recipe):
    """Train (or resume) one run with train.py's main; returns its results.json entry."""
    d = run_dir(out, pe, seed)
    ckpt = os.path.join(d, "ckpt.pt")
    flags = for_run(recipe, pe) + ["--pe", pe, "--seed", str(seed), "--out-dir", d]
    # a checkpoint: continue it (train.py says "nothing to train" if it is already at the last step);
    # none: start afresh, replacing whatever a run killed before its first checkpoint left there
    flags += ["--resume", ckpt] if os.path.exists(ckpt) else ["--overwrite"]
    summary = train.main(flags)  # train.py handles Ctrl-C, SIGTERM and SIGHUP while it trains
    interrupts = runs.Interrupts().install()  # and here, after it: one line and a rerun, not a silent death
    try:
        entry = run_entry(d, pe, seed, summary)
        if pe == "carope" and "--task" not in recipe:  # f over text: a task has none
            analyse_carope(d)  # small JSON of f(x_t): the plots redraw from it without the checkpoint
        files.atomic_write(os.path.join(d, "result.json"), lambda f: f.write(json.dumps(entry, indent=1).encode()))
    finally:
        interrupts.uninstall()
    return entry


def run_entry(d, pe, seed, summary):
    info = sweeps.load(os.path.join(d, "config.json"), "delete the run's folder to train it again")
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


def train_records(d):
    return [r for r in sweeps.read_log(d) if r["type"] == "train"]


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
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP outside training: the run resumes from its checkpoint
                raise SystemExit(f"\ncompare.py: interrupted during {pe} seed {seed}; run the same command again to "
                                 "continue the sweep") from None
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
# The sweep's summary: results.json, results.md and the plots

def collect(out):
    """Every finished run in the sweep folder (DIR/<pe>-s<seed>/result.json): RoPE first, then by encoding
    and seed. A summary covers them all, whatever --pe and --seeds this command names."""
    return sweeps.collect(out, {pe: i for i, pe in enumerate(["rope"] + [p for p in PE_CHOICES if p != "rope"])})


def summarise(out, given):
    runs = collect(out)
    if not runs:
        raise SystemExit(f"compare.py: no finished runs in {out}; run without --plot-only first")
    files.atomic_write(os.path.join(out, "results.json"), lambda f: f.write(json.dumps(dict(runs=runs), indent=1).encode()))
    train_len = overviews.train_length(runs)  # older sweeps did not record it
    recipe = [a for k, v in given.items() for a in recipe_flag(k, v)]  # the same words after a sweep or --plot-only
    by_seeds = {}  # encodings run with the same seeds share a command: one command never names runs not made
    for pe, rs in tables.by_pe(runs).items():
        by_seeds.setdefault(tuple(sorted(r["seed"] for r in rs)), []).append(pe)
    commands = [shlex.join(["python", "compare.py", "--pe", ",".join(pes), "--seeds", ",".join(map(str, seeds)),
                            *recipe, "--out", out]) for seeds, pes in by_seeds.items()]
    pes = list(tables.by_pe(runs))
    notes = [f"`{shlex.join(recipe_flag(k, v))}` applied to the {', '.join(p for p in pes if p in PE_ONLY[k])} runs "
             f"only: the others do not read it." for k, v in given.items()
             if k in PE_ONLY and not set(PE_ONLY[k]) >= set(pes)]
    tables.write_markdown(out, runs, commands, train_len, notes)
    written = plots.plots(out, runs, train_len)
    print(f"\ncompare.py: {len(runs)} run(s) -> {out}/results.json, results.md, "
          + ", ".join(os.path.basename(w) for w in written))
    with open(os.path.join(out, "results.md")) as f:
        print(f.read())


def summarise_safely(out, given):
    return sweeps.write_safely(out, cli.command("python", "compare.py", "--out", out, "--plot-only"),
                        lambda: summarise(out, given))


def main(argv=None):
    args, recipe = parse_args(sys.argv[1:] if argv is None else argv)
    if args.summary is not None:
        redo = cli.command("python", "compare.py", "--summary", args.summary)
        lines = sweeps.write_safely(args.summary, redo, lambda: overviews.summary(args.summary))
        print("\n".join(lines) + f"\n\ncompare.py: {overviews.rows(lines)} sweep(s) -> {args.summary}/summary.md, summary.png")
        return 0
    for mode, write in (("sizes", overviews.sizes), ("bases", overviews.bases)):
        if getattr(args, mode) is not None:
            dirs = getattr(args, mode)
            root = os.path.dirname(os.path.abspath(dirs[0]))
            redo = cli.command("python", "compare.py", f"--{mode}", ",".join(dirs))
            lines, names = sweeps.write_safely(root, redo, lambda: write(dirs))
            print("\n".join(lines) + f"\ncompare.py: {len(dirs)} sweeps -> {root}: " + ", ".join(
                f"{name}.md and .png" if name != "rope_base_tradeoff" else f"{name}.png" for name in names))
            return 0
    check_out(args.out)
    if args.plot_only:
        given = sweeps.read_recipe(args.out, "run without --plot-only first")
        summarise_safely(args.out, given)
        return 0
    recipe, given = resolve_recipe(recipe, args.pe)
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
