"""
CARoPE against RoPE across sweeps (support module for compare.py): --summary, every sweep under a folder at its
longest length, and --sizes, sweeps of one recipe that differ only in the model's size. Both read the sweeps'
results.json and pair each seed with RoPE at the same seed (tables.seed_changes).
"""

import os

import numpy as np

from support import plots, sweeps
from support.tables import ACCURACIES, ROBUST_SEEDS, metric_of, metrics_of, seed_changes, seeds_better
from tasks import TASKS as TASK_NAMES

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
    must be the same but for the model's size, so that size is the one thing that changes. Returns the lines and the files' name."""
    one_recipe(dirs, {d: read_settings(d, "sizes") for d in dirs}, SIZE_KEYS, "sizes")
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
    return lines, ["model_size"]


def read_settings(d, mode):
    """A sweep's recipe as settings (sweeps.settings), for --sizes and --bases."""
    return sweeps.settings(sweeps.read_recipe(d, f"--{mode} checks with it that the sweeps share one recipe"))


def one_recipe(dirs, recipes, but, mode):
    """The sweeps' recipes must be one but for the settings `but`, so that those are the one thing that changes:
    else one line naming the difference."""
    rest = {d: {k: v for k, v in recipes[d].items() if k not in but} for d in dirs}
    for d in dirs[1:]:
        diff = sweeps.differing(rest[d], rest[dirs[0]])
        if diff:
            raise SystemExit(f"compare.py: --{mode}: {d} and {dirs[0]} differ in {', '.join(diff)}, not only in "
                             f"{', '.join(but)}: compare sweeps of one recipe")


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


def rows(lines):
    """The sweeps in a summary's table: its rows link each sweep's results.md."""
    return sum(line.startswith("| [") for line in lines)


BASE_PES = ("rope", "carope", "carope-static")  # the encodings --bases compares (the others read no base)
DEFAULT_BASE = 10000.0  # carope.GPTConfig.rope_base: a sweep that does not set --rope-base ran at it


def bases(dirs):
    """rope_base_<family>.md and .png beside the sweeps, one family (a preset or a task) at a time (base_table);
    with a language-model family and a task family, rope_base_tradeoff.png: each encoding and base at 16x the
    training context against the task at 4x its training length. Returns the lines and the files' names."""
    recipes = {d: read_settings(d, "bases") for d in dirs}
    families = {}
    for d in dirs:
        families.setdefault(recipes[d].get("task") or recipes[d].get("preset", "text"), []).append(d)
    tables = {family: base_table(group, recipes, family) for family, group in families.items()}
    root = os.path.dirname(os.path.abspath(dirs[0]))
    for family, (lines, rows, label) in tables.items():
        sweeps.write_text(os.path.join(root, f"rope_base_{family}.md"), lines)
        plots.plot_bases(rows, root, f"rope_base_{family}", label)
    names = [f"rope_base_{family}" for family in tables]
    text = [f for f in tables if f not in TASK_NAMES]
    task = [f for f in tables if f in TASK_NAMES]
    if len(text) == 1 and len(task) == 1:
        plots.plot_tradeoff(tables[text[0]][1], tables[task[0]][1], tables[text[0]][2], tables[task[0]][2], root)
        names.append("rope_base_tradeoff")
    return [line for lines, _, _ in tables.values() for line in lines + [""]], names


def base_table(dirs, recipes, family):
    """Each encoding at each RoPE base (CARoPE's: its starting ratio, which then learns) in sweeps of one recipe
    but for the base: the figure at 1x and at the longest length up to 4x (a task) or 16x, and there the change
    against RoPE at the same base and against RoPE at 10^4, paired by seed; with each run's pairs.json (python -m
    support.pairs) the pairs that do not complete a turn and their share of q.k. Returns (lines, rows, label)."""
    one_recipe(dirs, recipes, ("rope_base",), "bases")
    base_of = {d: float(recipes[d].get("rope_base", DEFAULT_BASE)) for d in dirs}
    if len(set(base_of.values())) < len(dirs):
        raise SystemExit(f"compare.py: --bases: two {family} sweeps have the same base: give one sweep per base")
    runs = {d: [r for r in sweeps.read_runs(d) if r["pe"] in BASE_PES] for d in dirs}
    reference = [r for d in dirs if base_of[d] == DEFAULT_BASE for r in runs[d] if r["pe"] == "rope"]
    if not reference:
        raise SystemExit(f"compare.py: --bases: no {family} sweep holds RoPE at base 10^4, the reference: add it")
    train_len, metric, task = train_length(reference), task_metric(reference), reference[0].get("task")
    lens = sorted({int(T) for rs in runs.values() for r in rs for T in r["val"]})
    far = max(T for T in lens if T <= (4 if task else 16) * train_len)
    robust = lambda v: len(v) >= ROBUST_SEEDS  # many seeds: the median and quartiles, else the mean and range
    show = lambda v, d=3: ("–" if not v else f"{np.median(v):.{d}f} [{np.percentile(v, 25):.{d}f}–"
                           f"{np.percentile(v, 75):.{d}f}]" if robust(v) else f"{np.mean(v):.{d}f} [{min(v):.{d}f}–{max(v):.{d}f}]")
    paired = lambda v: "–" if not v else (f"{change_text(np.median(v) if robust(v) else np.mean(v), metric)} "
                                          f"[{min(v):+.1f}, {max(v):+.1f}] ({seeds_better(v, metric)}/{len(v)})")
    rows = []
    for pe in BASE_PES:
        for d in sorted(dirs, key=base_of.get):
            rs = [r for r in runs[d] if r["pe"] == pe]
            if not rs:
                continue
            rope = [r for r in runs[d] if r["pe"] == "rope"]
            at = lambda T: [r["val"][str(T)][metric] for r in rs if str(T) in r["val"]]
            mech = [sweeps.load(p, "run python -m support.pairs on the run again")
                    for p in (os.path.join(sweeps.run_dir(d, pe, r["seed"]), "pairs.json") for r in rs) if os.path.isfile(p)]
            rows.append(dict(pe=pe, base=base_of[d], seeds=len(rs), near=at(train_len), far=at(far), name=os.path.basename(d),
                             same=seed_changes(rope + rs, pe, str(far), metric) if pe != "rope" else [],
                             ref=[] if (pe, base_of[d]) == ("rope", DEFAULT_BASE) else  # the reference itself
                             seed_changes(reference + [dict(r, pe="run") for r in rs], "run", str(far), metric),
                             slow=[m["slow_mean"] for m in mech], share=[100 * m["slow_qk_share_mean"] for m in mech]))
    what = {"bpb": "bits per byte", "ppl": "perplexity", "acc": "accuracy (whole answers)",
            "token_acc": "accuracy per query"}[metric]
    better = "higher" if metric in ACCURACIES else "lower"
    x = far // train_len
    lines = [f"# {what.capitalize()} by RoPE base ({family})", "",
             f"One recipe, only `--rope-base` changed (for carope and carope-static the starting ratio θ₁ = base^(-2/D), "
             f"which then learns). {what.capitalize()}, {better} is better: mean [min–max] over seeds, or with "
             f"{ROBUST_SEEDS} or more seeds median [interquartile range]. Paired: pe against RoPE at the same seed "
             f"({'points' if metric in ACCURACIES else '%'}; mean, or median, [min, max], seeds better). Slow pairs: "
             f"of the head's pairs, those whose phase over the training {'length' if task else 'context'} stays below "
             f"2π (mean over layers × heads; from each run's pairs.json, `python -m support.pairs`), and their share "
             f"of |q||k|. Written by `python compare.py --bases {','.join(dirs)}`.", "",
             f"| pe | base | seeds | {train_len} (1x) | {far} ({x}x) | {x}x against RoPE at this base | against RoPE "
             f"at 10⁴ | slow pairs | their q·k share |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['pe']} | [{r['base']:g}]({r['name']}/results.md) | {r['seeds']} | {show(r['near'])} | "
                     f"{show(r['far'])} | {paired(r['same'])} | {paired(r['ref'])} | {show(r['slow'], 1)} | "
                     f"{show(r['share'], 1) + ' %' if r['share'] else '–'} |")
    return lines, rows, f"{what} at {x}x the training {'length' if task else 'context'} ({better} is better)"


def task_metric(runs):
    """The figure --bases compares: per query where a task's answers hold several (MQAR), else metric_of."""
    return "token_acc" if "token_acc" in metrics_of(runs) else metric_of(runs)
