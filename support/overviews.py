"""
CARoPE against RoPE across sweeps (support module for compare.py): --summary, every sweep under a folder at its
longest length, and --sizes, sweeps of one recipe that differ only in the model's size. Both read the sweeps'
results.json and pair each seed with RoPE at the same seed (tables.seed_changes).
"""

import os

import numpy as np

from support import plots, sweeps
from support.tables import ACCURACIES, metric_of, seed_changes, seeds_better

SIZE_KEYS = ("n_layer", "n_head", "n_embd")  # what --sizes lets differ between the sweeps it compares
SIZE_RATIOS = (1, 4, 16)


def train_length(runs):
    """The training context (a task: length) of a sweep's runs; older sweeps did not record it: their shortest
    evaluation length, which compare.py always made the training context."""
    return runs[0].get("context") or min(int(T) for T in runs[0]["val"])


def change_text(v, metric):
    """A paired change: accuracy in points, a loss-like figure in %."""
    return f"{v:+.1f}{' pt' if metric in ACCURACIES else ' %'}"


def paired_change(runs, pe="carope"):
    """CARoPE's change against RoPE at the same seed at the longest length tested up to 16x the training length
    (4x for a task): bits per byte (else perplexity) in %, accuracy in points. None without both encodings."""
    if not runs:
        return None
    train_len = train_length(runs)
    task, metric = bool(runs[0].get("task")), metric_of(runs)
    seeds = {r["seed"] for r in runs if r["pe"] == "rope"}
    lens = sorted({int(T) for r in runs if r["pe"] == pe and r["seed"] in seeds for T in r["val"]
                   if int(T) <= (4 if task else 16) * train_len})
    if not lens:
        return None
    change = seed_changes(runs, pe, str(lens[-1]), metric)
    return dict(metric=metric, ratio=lens[-1] / train_len, change=change, task=task) if change else None


def summary(root):
    """root/summary.md and root/summary.png: CARoPE against RoPE in every sweep folder under root that has both.
    Returns the lines of summary.md."""
    rows = []
    for name in sorted(os.listdir(root)):
        if os.path.isfile(os.path.join(root, name, "results.json")):
            c = paired_change(sweeps.read_runs(os.path.join(root, name)))
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
        v, m = c["change"], c["metric"]
        lines.append(f"| [{name}]({name}/results.md) | {c['ratio']:g}x | {m} | {len(v)} | {change_text(np.mean(v), m)} "
                     f"| {change_text(np.median(v), m)} | {change_text(min(v), m)} | {change_text(max(v), m)} "
                     f"| {seeds_better(v, m)}/{len(v)} |")
    sweeps.write_text(os.path.join(root, "summary.md"), lines)
    plots.plot_summary(rows, root)
    return lines


def sizes(dirs):
    """model_size.md and model_size.png beside the sweeps: CARoPE's and carope-static's change against RoPE,
    paired by seed, at 1x, 4x and 16x the training context, against the parameter count. The sweeps' recipes
    must be the same but for the model's size, so that size is the one thing that changes. Returns the lines."""
    recipes = {d: {k: v for k, v in sweeps.settings(sweeps.read_recipe(d, "--sizes checks with it that the sweeps "
                                                                           "share one recipe")).items()
                   if k not in SIZE_KEYS} for d in dirs}
    for d in dirs[1:]:
        diff = sweeps.differing(recipes[d], recipes[dirs[0]])
        if diff:
            raise SystemExit(f"compare.py: --sizes: {d} and {dirs[0]} differ in {', '.join(diff)}, not only in "
                             f"{', '.join(SIZE_KEYS)}: compare sweeps of one recipe")
    rows = [size_row(d) for d in dirs]
    rows.sort(key=lambda r: r["params"])
    root = os.path.dirname(os.path.abspath(dirs[0]))
    metric = rows[0]["metric"]
    unit, better = ("pe - RoPE in points", "positive") if metric in ACCURACIES else ("pe / RoPE - 1 in %", "negative")
    fmt = lambda v: f"{change_text(np.mean(v), metric)} [{min(v):+.1f}, {max(v):+.1f}]" if v else "–"
    lines = ["# CARoPE against RoPE as the model grows", "",
             f"One recipe, only the model's size changed. {metric} of pe against RoPE at the same seed, "
             f"{unit}, mean over seeds [min, max]; {better} is better. Written by `python compare.py --sizes {','.join(dirs)}`.", "",
             "| sweep | model | params (rope) | seeds | " + " | ".join(f"{pe} {k}x" for pe in ("carope", "carope-static")
                                                           for k in SIZE_RATIOS) + " |",
             "|---|---|---:|---:|" + "---:|" * 2 * len(SIZE_RATIOS)]
    for r in rows:
        counts = [len(v) for v in r["cells"].values() if v]
        n = max(counts, default=0)
        cell = lambda v: fmt(v) + (f" ({len(v)} seed{'s' if len(v) > 1 else ''})" if v and len(v) < n else "")
        lines.append(f"| [{r['name']}]({r['name']}/results.md) | {r['shape']} | {r['params']:,} | "
                     f"{n if min(counts, default=0) == n else f'{min(counts)}–{n}'} | "
                     + " | ".join(cell(r["cells"][pe, k]) for pe in ("carope", "carope-static") for k in SIZE_RATIOS)
                     + " |")
    sweeps.write_text(os.path.join(root, "model_size.md"), lines)
    plots.plot_sizes(rows, root, SIZE_RATIOS)
    return lines


def size_row(d):
    """One sweep's row of the size table: its model, parameters and paired changes at SIZE_RATIOS."""
    runs = sweeps.read_runs(d)
    rope = [r for r in runs if r["pe"] == "rope"]
    if not rope or not any(r["pe"] == "carope" for r in runs):
        raise SystemExit(f"compare.py: --sizes: {d} has no rope and carope runs to pair; nothing to compare")
    train_len, metric = train_length(runs), metric_of(runs)
    cells = {(pe, k): seed_changes(runs, pe, str(k * train_len), metric)
             for pe in ("carope", "carope-static") for k in SIZE_RATIOS}
    configs = [os.path.join(sweeps.run_dir(d, r["pe"], r["seed"]), "config.json") for r in rope + runs]
    config = next((p for p in configs if os.path.isfile(p)), None)
    if config is None:
        raise SystemExit(f"compare.py: --sizes: no run folder of {d} holds its config.json (the model's shape is read "
                         f"from it): restore the run folders (git checkout {d})")
    model = sweeps.load(config, f"restore it (git checkout {config})").get("model") or {}
    if any(k not in model for k in ("n_layer", "n_embd")):
        raise SystemExit(f"compare.py: --sizes: {config} does not name the model's n_layer and n_embd: restore it "
                         f"(git checkout {config})")
    return dict(name=os.path.basename(d), params=rope[0].get("params", 0), metric=metric,
                shape=f"{model['n_layer']} x {model['n_embd']}", cells=cells)
