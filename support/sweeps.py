"""
A run beside a committed sweep of its recipe (support module): compare.py's folder DIR/results.json and
DIR/<pe>-s<seed>/config.json, read at run time, so that a run's own figures can be read against the committed
ones, and only when they compare (the same recipe: recipe_differences).
"""

import json
import math
import os

# recorded settings that change neither the weights nor the figures, or that name the run, its encoding and its
# machine; data_dir is where the data lay on that machine ("data" says which data: None is the embedded corpus)
NOT_RECIPE = ("pe", "seed", "out_dir", "overwrite", "resume", "eval_only", "device", "compile", "fused_carope",
              "data_dir", "num_samples", "sample_tokens", "log_every", "eval_every", "ckpt_every",
              "derived", "data_tokens", "data_sha256")  # the last three: bookkeeping of a resume, not the recipe


def sweep_run_dir(out, pe, seed):
    """The folder of one run of a compare.py sweep."""
    return os.path.join(out, f"{pe}-s{seed}")


def recipe_differences(mine, theirs, defaults=None):
    """[(setting, mine, theirs)] where two runs' config.json differ, NOT_RECIPE left out. A setting only one
    of them records has its default there (defaults: {part: {setting: value}}), else counts as unset (None):
    an option added since, left at its default, changes nothing."""
    diff = {}
    for part in ("args", "model"):
        a, b, d = mine.get(part) or {}, theirs.get(part) or {}, (defaults or {}).get(part, {})
        for k in sorted(set(a) | set(b)):
            if k not in NOT_RECIPE and a.get(k, d.get(k)) != b.get(k, d.get(k)):
                diff.setdefault(k, (k, a.get(k, d.get(k)), b.get(k, d.get(k))))
    return list(diff.values())


def beside_sweep(sweep, config_path, results, shown=("rope", "carope"), defaults=None):
    """Lines that set this run's bits per byte at each length (results: {T: {"bpb": ...}}) beside a committed
    sweep's, mean [min-max] over its seeds, for the encodings `shown` and this run's own. They are printed
    only when every run shown has this run's recipe (its config.json against theirs, recipe_differences);
    otherwise, or if the sweep cannot be read, one line saying why not."""
    label = display_path(sweep)
    try:
        mine = read_json(config_path)
        groups = {}
        for r in read_json(os.path.join(sweep, "results.json"))["runs"]:
            groups.setdefault(r["pe"], []).append(r)
        pes = [pe for pe in dict.fromkeys((*shown, mine["model"]["pe"])) if pe in groups]
        if not pes:
            return [f"{label}: its results.json holds no run of {' or '.join(shown)}, so no committed figures here"]
        for pe in pes:
            for r in groups[pe]:
                theirs = read_json(os.path.join(sweep_run_dir(sweep, pe, r["seed"]), "config.json"))
                if diff := recipe_differences(mine, theirs, defaults):
                    what = "; ".join(f"--{k.replace('_', '-')} {setting(k, a)} here, {setting(k, b)} there"
                                     for k, a, b in diff[:3]) + ("; ..." if diff[3:] else "")
                    return [f"{label}'s committed figures are not shown: that sweep's recipe is another ({what})"]
        lens = [T for T in results if "bpb" in results[T]]
        header = ["context", f"this run: {mine['model']['pe']}"] + [f"{pe}, {seeds(groups[pe])}" for pe in pes]
        rows = [[f"{T} ({T / mine['model']['block_size']:g}x)", f"{results[T]['bpb']:.3f}"]
                + [spread([finite(r["val"][str(T)]["bpb"]) for r in groups[pe]]) for pe in pes] for T in lens]
        seed = mine["args"]["seed"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError) as e:
        why = f"no {e}" if isinstance(e, KeyError) else (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
        return [f"{label}: its committed figures cannot be read ({why}), so none are shown"]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    return ([f"bits per byte, lower is better: this run (seed {seed}) beside the committed sweep of its recipe,",
             f"{label}/results.json (mean [min-max] over the sweep's seeds):"]
            + ["  " + "   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows])


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def finite(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"a figure is {value!r}, not a number")
    return float(value)


def seeds(rs):
    s = sorted(r["seed"] for r in rs)
    if len(s) == 1:
        return f"seed {s[0]}"
    return f"seeds {s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else "seeds " + ",".join(map(str, s))


def spread(values):
    return f"{sum(values) / len(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def setting(key, value):
    """A recorded setting as a flag's value: None is the embedded corpus for --data, else unset."""
    if value is None:
        return "(the embedded corpus)" if key == "data" else "(unset)"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def display_path(path):
    """results/bytes-kjv from the repository, an absolute path from elsewhere."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if rel.startswith(os.pardir) else rel
