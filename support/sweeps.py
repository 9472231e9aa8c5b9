"""
A compare.py sweep folder, read (support module): every mode of compare.py and train.py's comparison with a
committed sweep read a sweep through these functions, so each is checked once and says what is wrong in one line.

    DIR/recipe.json            the train.py flags every run of the sweep shares (read_recipe)
    DIR/<pe>-s<seed>/          one run: config.json, log.jsonl (read_log), result.json, ckpt.pt (not committed)
    DIR/results.json           {"runs": [every finished run's result.json]} (read_runs)

A run beside a committed sweep of its recipe (beside_sweep): the run's own figures are read against the committed
ones only when they compare (the same recipe: recipe_differences).
"""

import json
import math
import os
import signal
import sys

from support import files, runs

# recorded settings that change neither the weights nor the figures, or that name the run, its encoding and its
# machine; data_dir is where the data lay on that machine ("data" says which data: None is the embedded corpus)
NOT_RECIPE = ("pe", "seed", "out_dir", "overwrite", "resume", "eval_only", "device", "compile", "fused_carope",
              "data_dir", "num_samples", "sample_tokens", "log_every", "eval_every", "ckpt_every",
              "derived", "data_tokens", "data_sha256")  # the last three: bookkeeping of a resume, not the recipe


def run_dir(out, pe, seed):
    """The folder of one run of a compare.py sweep."""
    return os.path.join(out, f"{pe}-s{seed}")


def load(path, fix):
    """A sweep's JSON file, parsed; a missing, unreadable, torn or hand-edited one is one line naming it and `fix`."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"compare.py: {path} is missing: {fix}") from None
    except OSError as e:
        raise SystemExit(f"compare.py: cannot read {path} ({e.strerror or e}): {fix}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SystemExit(f"compare.py: {path} is not valid JSON ({e}): {fix}") from None


def read_recipe(out, missing="run the sweep's command first"):
    """DIR/recipe.json as {setting: value}. One written before the preset was always recorded ran train.py's
    default of then, nano (with --task: task)."""
    path = os.path.join(out, "recipe.json")
    if not os.path.isfile(path):
        raise SystemExit(f"compare.py: {out} holds no sweep (no recipe.json): {missing}")
    have = load(path, "restore it (git checkout), or delete the folder's runs and the file and run the sweep again")
    if not isinstance(have, dict):
        raise SystemExit(f"compare.py: {path} holds a JSON {type(have).__name__}, not a recipe ({{setting: value}}): "
                         "restore it (git checkout), or delete it and run the sweep's command again")
    if "preset" not in have and "task" not in have:
        have["preset"] = "nano"
    return dict(sorted(have.items()))


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


def has_runs(out):
    """Whether any run of the sweep began (wrote its config.json)."""
    return os.path.isdir(out) and any(os.path.isfile(os.path.join(out, d, "config.json")) for d in os.listdir(out))


RUN_KEYS = ("pe", "seed", "val")  # what every figure of a summary reads from a run


def checked_run(r, path):
    """One run's entry (a result.json, or one of results.json's runs), checked for what the summaries read."""
    if not isinstance(r, dict) or any(k not in r for k in RUN_KEYS) or not isinstance(r["val"], dict):
        raise SystemExit(f"compare.py: {path} holds a run without {', '.join(RUN_KEYS)}: restore it (git checkout), "
                         "or rerun the sweep's command (a run's result.json is written again when it is resumed)")
    return r


def read_runs(out):
    """The runs of DIR/results.json (a list, perhaps empty), each checked."""
    path = os.path.join(out, "results.json")
    data = load(path, "run the sweep's command (or --plot-only) to write it again")
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise SystemExit(f"compare.py: {path} does not hold {{\"runs\": [...]}}: restore it (git checkout), or "
                         f"write it again with python compare.py --out {out} --plot-only")
    return [checked_run(r, path) for r in data["runs"]]


def collect(out, order):
    """Every finished run in the sweep folder (DIR/<pe>-s<seed>/result.json), sorted by order[pe] and seed."""
    found = [os.path.join(out, d, "result.json") for d in sorted(os.listdir(out))] if os.path.isdir(out) else []
    runs = [checked_run(load(p, "delete it (a run's result.json is written again when that run is resumed)"), p)
            for p in found if os.path.isfile(p)]
    return sorted(runs, key=lambda r: (order.get(r["pe"], len(order)), r["seed"]))


def write_text(path, lines):
    """A summary file (results.md, summary.md, model_size.md), whole or not at all."""
    files.atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def write_safely(folder, redo, write):
    """write() writes summary files into folder, each whole or not at all (atomic writes). A full disk, a folder
    that cannot be written, Ctrl-C or SIGTERM is one line: the runs are kept, each summary file is the previous
    one or the new one whole, and redo (a command) writes them again. --plot-only, --summary and --sizes alike."""
    for sub in [folder] + [os.path.join(folder, d) for d in sorted(os.listdir(folder))]:  # temps of a killed summary
        if os.path.isdir(sub):
            files.remove_stale_temps(sub)
    interrupts = runs.Interrupts().install()  # SIGTERM and SIGHUP too: the temp file goes, the line is said
    try:
        return write()
    except KeyboardInterrupt:
        signum = interrupts.signum or signal.SIGINT
        name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
        print(f"\ncompare.py: interrupted{name} while writing the summary; the runs are kept: {redo} writes it",
              file=sys.stderr)
        raise SystemExit(128 + signum) from None
    except OSError as e:
        raise SystemExit(f"compare.py: cannot write the summary in {folder} ({e.strerror or e}); the runs are kept "
                         f"and every summary file is whole, the previous one or the new one: make room, then {redo}"
                         ) from None
    finally:
        interrupts.uninstall()


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
                theirs = read_json(os.path.join(run_dir(sweep, pe, r["seed"]), "config.json"))
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
