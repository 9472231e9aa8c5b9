"""
A sweep's plots (support module for compare.py; matplotlib with the Agg backend: files only, no window).

    plots(out, runs, train_len)   loss.png, ppl_vs_length.png (a task: acc_vs_length.png), loss_by_position.png,
                                  and for CARoPE carope_f.png and carope_clock.png, from the runs and their logs
    plot_summary, plot_sizes      summary.png and model_size.png (compare.py --summary, --sizes)
"""

import json
import os

import numpy as np

from carope import PE_CHOICES
from support import files
from support.sweeps import read_log, run_dir
from support.tables import ACCURACIES, NAMES, by_pe, metrics_of, values

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


def plot_summary(rows, root):
    """summary.png: each sweep's paired change of CARoPE against RoPE, one dot a seed, language models and tasks
    in their own panels."""
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
    return save(plt, fig, root, "summary.png")


def plot_bases(rows, root, name, label):
    """NAME.png: each encoding's figure far past the training length against the base (log), bars min-max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, pe in enumerate(dict.fromkeys(r["pe"] for r in rows)):
        rs = [r for r in rows if r["pe"] == pe and r["far"]]
        x = np.array([r["base"] for r in rs]) * (1 + 0.05 * (i - 1))
        mean = np.array([np.mean(r["far"]) for r in rs])
        err = [mean - [min(r["far"]) for r in rs], [max(r["far"]) for r in rs] - mean]
        ax.errorbar(x, mean, yerr=err, fmt="o-", capsize=3, label=pe + ("" if pe == "rope" else " (initialised at base)"))
    ax.set_xscale("log")
    ax.set_xlabel("RoPE base (log scale)")
    ax.set_ylabel(label)
    ax.set_title("RoPE's base against the figure far past training (mean over seeds, bars: min-max)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(plt, fig, root, f"{name}.png")


def plot_tradeoff(text, task, xlabel, ylabel, root):
    """rope_base_tradeoff.png: each encoding and base where both families ran it, the language model's figure
    far past its context (x) against the task's (y); medians, bars from the 25th to the 75th percentile."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 5))
    on_task = {(r["pe"], r["base"]): r["far"] for r in task if r["far"]}
    pes = list(dict.fromkeys(r["pe"] for r in text))
    for r in text:
        y = on_task.get((r["pe"], r["base"]))
        if not r["far"] or not y:
            continue
        (x0, xm, x1), (y0, ym, y1) = np.percentile(r["far"], [25, 50, 75]), np.percentile(y, [25, 50, 75])
        ax.errorbar([xm], [ym], xerr=[[xm - x0], [x1 - xm]], yerr=[[ym - y0], [y1 - ym]], fmt="o", capsize=3,
                    color=f"C{pes.index(r['pe'])}", label=r["pe"])
        ax.annotate(f"{r['base']:g}", (xm, ym), textcoords="offset points", xytext=(5, 5), fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), [f"{pe} (number: its base)" for pe in unique], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Extrapolation against recall, by encoding and RoPE base\n(median over seeds, bars: 25th-75th "
                 "percentile)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(plt, fig, root, "rope_base_tradeoff.png")


def plot_sizes(rows, root, ratios):
    """model_size.png: the paired change at each ratio against the parameter count (log), bars min-max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.array([r["params"] for r in rows], dtype=float)
    for i, k in enumerate(ratios):
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
    ax.set_ylabel("pe - RoPE, accuracy points (higher is better)" if rows[0]["metric"] in ACCURACIES else
                  f"pe / RoPE - 1, {rows[0]['metric']}, % (lower is better)")
    ax.set_title("CARoPE against RoPE as the model grows (paired by seed; bars: min-max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(plt, fig, root, "model_size.png")


def save(plt, fig, out, name):
    path = os.path.join(out, name)
    try:  # whole or not at all, as every summary file: a full disk or Ctrl-C leaves the previous one
        files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path
