"""
A sweep's tables (support module for compare.py): results.md, and the paired statistics that --summary and
--sizes share. A seed fixes the data order and the initial weights the encodings share, so each encoding is set
against RoPE at the same seed (seed_changes); accuracy changes in points (higher is better), a loss-like figure
in % (lower is better).
"""

import os

import numpy as np

from support import sweeps

NAMES = dict(ppl="validation perplexity", bpb="validation bits per byte", acc="test accuracy (whole answers)",
             token_acc="test accuracy per answer token (MQAR: per query)")
ACCURACIES = ("acc", "token_acc")  # higher is better; a change is in points
DIGITS = dict(ppl=2, bpb=4, acc=3, token_acc=3)  # decimals of a value in results.md
ROBUST_SEEDS = 5  # from this many seeds of one encoding, results.md adds medians, quartiles and seed counts


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


def metric_of(runs):
    """The one figure a sweep is compared by: accuracy for a task; bits per byte where every run has it, else
    perplexity."""
    return next(m for m in ("acc", "bpb", "ppl") if m in metrics_of(runs))


def write_markdown(out, runs, commands, train_len, notes=()):
    groups = by_pe(runs)
    lens = sorted({int(T) for r in runs for T in r["val"]})
    word = "len" if runs[0].get("task") else "ctx"
    head = "| pe | seeds | " + " | ".join(f"{word} {T} ({T / train_len:g}x)" for T in lens) + " |"
    rule = "|---|---:|" + "---:|" * len(lens)
    metrics = metrics_of(runs)
    lines = [f"# {os.path.basename(os.path.normpath(out))}: {' and '.join(NAMES[m] for m in metrics)}, mean over seeds",
             "", *([f"Command: `{commands[0]}`"] if len(commands) == 1 else
                  [f"Commands (the tables merge their runs):"] + [f"- `{c}`" for c in commands]), "",
             *[line for note in notes for line in (note, "")],
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
    sweeps.write_text(os.path.join(out, "results.md"), lines)


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
