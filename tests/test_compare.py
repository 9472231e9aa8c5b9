"""compare.py on a tiny recipe: two encodings x two seeds, interrupted and resumed, then every output."""

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

import compare  # noqa: E402
from support import files, sweeps, tables  # noqa: E402
from test_train import default_signals, make_data  # noqa: E402

# a model big enough that a step takes a few milliseconds, so a run can be interrupted mid-way; the nano recipe
# (GPT-2 tokens, as make_data's manifest says), not train.py's default bytes one
RECIPE = ["--preset", "nano", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
          "--vocab-size", "128",
          "--micro-batch", "4", "--val-tokens", "512", "--warmup-steps", "2", "--sample-tokens", "0",
          "--device", "cpu", "--max-steps", "40"]


def compare_cmd(data, out, pes="rope,carope", seeds="1,2", extra=()):
    return [sys.executable, os.path.join(REPO, "compare.py"), "--pe", pes, "--seeds", seeds, "--out", str(out),
            "--data", data, *RECIPE, *extra]


def test_compare_interrupted_resumed_and_summarised(tmp_path):
    data, out = make_data(tmp_path / "data"), tmp_path / "sweep"
    # 1. start the sweep and press Ctrl-C in the middle of its second run (rope seed 1 is first)
    # output to files, not pipes: a full pipe nobody reads would stall the run being watched
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        proc = subprocess.Popen(compare_cmd(data, out), cwd=REPO, stdout=so, stderr=se, preexec_fn=default_signals)
    second = out / "carope-s1" / "log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if second.exists() and sum('"train"' in line for line in open(second)) >= 5:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.005)
    proc.wait(timeout=120)
    stderr = (tmp_path / "stderr").read_text()
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    assert "run the same command again" in stderr
    assert (out / "rope-s1" / "result.json").exists()  # the finished run is kept
    assert not (out / "carope-s1" / "result.json").exists() and (out / "carope-s1" / "ckpt.pt").exists()
    stopped_at = [json.loads(line) for line in open(second) if '"train"' in line][-1]["step"]
    assert 5 <= stopped_at < 40

    # 2. the same command again: skips rope seed 1, resumes carope seed 1, runs the rest
    run = subprocess.run(compare_cmd(data, out), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "rope seed 1: finished, skipped" in run.stdout
    steps = [json.loads(line)["step"] for line in open(second) if json.loads(line)["type"] == "train"]
    assert steps == list(range(1, 41))  # resumed: every step exactly once

    results = json.loads((out / "results.json").read_text())
    assert sorted((r["pe"], r["seed"]) for r in results["runs"]) == [("carope", 1), ("carope", 2), ("rope", 1), ("rope", 2)]
    keys = {"pe", "seed", "preset", "data", "tokens", "params", "tokens_per_s", "wall_s", "device", "torch",
            "commit", "val", "tokenizer", "context", "by_position", "task"}
    for r in results["runs"]:
        assert set(r) == keys
        assert sorted(r["val"], key=int) == ["16", "32", "64", "128"]  # 1x, 2x, 4x, 8x by default
        assert r["tokens"] == 40 * 4 * 16 and all(np.isfinite(v["ppl"]) for v in r["val"].values())
        log = [json.loads(line) for line in open(out / f"{r['pe']}-s{r['seed']}" / "log.jsonl")]
        final = {e["len"]: e["loss"] for e in log if e["type"] == "eval" and e["step"] == 40}
        assert r["val"]["64"]["loss"] == final[64]  # the table is the runs' own final evaluation
        at = [e for e in log if e["type"] == "eval" and e["step"] == 40 and e["len"] == 128][0]["by_position"]
        assert r["by_position"]["len"] == 128 and len(r["by_position"]["loss"]) == 128  # one point per position here
        assert r["by_position"]["loss"] == pytest.approx(at) and r["context"] == 16
    assert results["runs"][0]["params"] != results["runs"][2]["params"]  # carope has W and b on top of rope

    md = (out / "results.md").read_text()
    assert "| rope | 2 |" in md and "| carope | 2 |" in md and "ctx 128 (8x)" in md
    rope = [r["val"]["16"]["ppl"] for r in results["runs"] if r["pe"] == "rope"]
    assert f"{np.mean(rope):.2f} ± {np.std(rope, ddof=1):.2f}" in md  # mean ± std over seeds
    for png in ("loss.png", "ppl_vs_length.png", "loss_by_position.png", "carope_f.png", "carope_clock.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    f = json.loads((out / "carope-s1" / "carope_f.json").read_text())
    assert np.array(f["f_passage"]).shape == (1, compare.PASSAGE_TOKENS, 2)  # (layers, tokens, heads)
    assert all(0 < v < 1 for v in np.ravel(f["f_passage"]))  # f(x_t) in (0, 1)

    # 3. --plot-only redraws from the runs alone (no checkpoint needed)
    for d in out.iterdir():
        if d.is_dir():
            (d / "ckpt.pt").unlink()
    (out / "carope_f.png").unlink()
    redo = subprocess.run([sys.executable, os.path.join(REPO, "compare.py"), "--pe", "rope,carope", "--seeds", "1,2",
                           "--out", str(out), "--plot-only"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert redo.returncode == 0, redo.stderr
    assert (out / "carope_f.png").exists() and "carope_clock.png" in redo.stdout

    # 4. the same folder with another recipe is refused, naming the difference
    other = subprocess.run(compare_cmd(data, out, extra=["--lr", "0.01"]), cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert other.returncode == 1 and "another recipe" in other.stderr and "--lr" in other.stderr
    assert "Traceback" not in other.stderr and len(other.stderr.strip().splitlines()) == 1


def test_a_failing_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    data, out = make_data(tmp_path / "data"), tmp_path / "sweep"
    real_main = compare.train.main

    def flaky_main(argv):
        if argv[argv.index("--pe") + 1] == "rope" and argv[argv.index("--seed") + 1] == "1":
            raise SystemExit("simulated: the disk is full")
        return real_main(argv)
    monkeypatch.setattr(compare.train, "main", flaky_main)
    status = compare.main(["--pe", "rope,nope", "--seeds", "1", "--out", str(out), "--data", data, *RECIPE,
                           "--max-steps", "3"])
    assert status == 1
    assert "rope seed 1: simulated: the disk is full" in capsys.readouterr().err
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["pe"], r["seed"]) for r in runs] == [("nope", 1)]
    # --plot-only summarises every run in the folder, whatever --pe and --seeds default to
    assert compare.main(["--out", str(out), "--plot-only"]) == 0
    assert [(r["pe"], r["seed"]) for r in json.loads((out / "results.json").read_text())["runs"]] == [("nope", 1)]


def test_a_sweep_that_failed_before_any_run_records_no_recipe(tmp_path):
    """A typo in --data fails every run before it begins: no recipe.json, so the corrected command (another
    --data) is a new sweep, not 'another recipe'."""
    out = tmp_path / "sweep"
    assert compare.main(["--pe", "rope", "--seeds", "1", "--out", str(out), "--data", str(tmp_path / "typo"),
                         *RECIPE]) == 1
    assert not (out / "recipe.json").exists()
    data = make_data(tmp_path / "data")
    assert compare.main(["--pe", "rope", "--seeds", "1", "--out", str(out), "--data", data, *RECIPE,
                         "--max-steps", "2"]) == 0
    assert (out / "recipe.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--pe", "alibi", "--out", "x"], "unknown encoding(s) alibi"),
    (["--seeds", "a,b", "--out", "x"], "--seeds"),
    (["--seeds", "1,,2", "--out", "x"], "--seeds '1,,2': give comma-separated"),  # the input, not []
    (["--out", "x", "--seed", "3"], "--seed is not a sweep's flag: use --seeds"),
    (["--out", "x", "--eval-only"], "to evaluate one run: python train.py --eval-only --resume DIR/<pe>-s<seed>/ckpt.pt"),
    (["--summary", "afile"], "--summary afile is a file: give the folder that holds the sweeps"),
    (["--summary", ".", "--pe", "rope"], "so --pe would be ignored: give --summary alone"),
    (["--summary", ".", "--seeds", "1"], "so --seeds would be ignored: give --summary alone"),
    (["--summary", ".", "--plot-only"], "so --plot-only would be ignored: give --summary alone"),
    (["--sizes", "a,b", "--seeds", "1"], "so --seeds would be ignored: give --sizes alone"),
    (["--out", "x", "--max-steps", "-3"], "train.py rejects the recipe"),
])
def test_compare_errors_are_one_line(argv, message, tmp_path):
    (tmp_path / "afile").write_text("")
    run = subprocess.run([sys.executable, os.path.join(REPO, "compare.py"), *argv], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr  # one line, no usage block


def test_paired_change_against_a_hand_computation(tmp_path):
    """The paired table divides each seed's value by RoPE's at the same seed, not at another one."""
    runs = [dict(pe=pe, seed=seed, val={"16": dict(loss=1.0, ppl=ppl)})
            for pe, seed, ppl in (("rope", 1, 100.0), ("rope", 2, 200.0), ("carope", 1, 90.0), ("carope", 2, 210.0))]
    lines = tables.paired_table(tables.by_pe(runs), [16], "head", "rule", "ppl", "perplexity")
    row = [line for line in lines if line.startswith("| carope |")][0]
    # seed 1: 90/100 - 1 = -10 %; seed 2: 210/200 - 1 = +5 %; mean -2.5 %; signs disagree: no mark
    assert "-2.5% [-10.0, +5.0]" in row and "every seed" not in row
    one = tables.change_table(tables.by_pe([r for r in runs if r["seed"] == 1]), [16], "| pe | seeds |", "rule")
    assert "beyond spread" not in "\n".join(one)  # one seed: no spread to be beyond


@pytest.mark.parametrize("carope, marked", [
    ((90.0, 190.0), True),  # -10 % and -5 %: both seeds lower
    ((110.0, 220.0), True),  # +10 % and +10 %: both higher
    ((100.0, 200.0), False),  # 0 % at both seeds (counting's 1x column): no sign to agree on
    ((100.0, 190.0), False),  # 0 % and -5 %: one seed shows no change
    ((110.0, 200.0), False),  # +10 % and 0 %
], ids=["both-lower", "both-higher", "both-zero", "zero-and-lower", "higher-and-zero"])
def test_every_seed_needs_two_or_more_seeds_of_one_strict_sign(carope, marked):
    runs = [dict(pe=pe, seed=seed, val={"16": dict(loss=1.0, ppl=ppl)})
            for pe, seed, ppl in (("rope", 1, 100.0), ("rope", 2, 200.0), ("carope", 1, carope[0]), ("carope", 2, carope[1]))]
    lines = tables.paired_table(tables.by_pe(runs), [16], "head", "rule", "ppl", "perplexity")
    row = [line for line in lines if line.startswith("| carope |")][0]
    assert ("**every seed**" in row) == marked, row
    one = tables.paired_table(tables.by_pe([r for r in runs if r["seed"] == 1]), [16], "head", "rule")
    row = [line for line in one if line.startswith("| carope |")][0]
    assert row.startswith("| carope | 1 |") and "every seed" not in row, row  # one seed agrees with itself


def test_robust_table_gives_median_quartiles_and_the_seeds_that_beat_rope():
    """Medians and quartiles of a task's accuracy over seeds, and the count of seeds above RoPE at the same seed
    (a tie is not a win), against numpy and a hand count."""
    rope = [0.9, 0.2, 0.5, 0.7, 0.3]
    carope = [0.95, 0.2, 0.4, 0.8, 0.9]  # seeds 1, 4, 5 above; 2 a tie; 3 below
    runs = [dict(pe=pe, seed=i + 1, val={"64": dict(acc=a)}) for pe, accs in (("rope", rope), ("carope", carope))
            for i, a in enumerate(accs)]
    lines = tables.robust_table(tables.by_pe(runs), [64], "head", "rule", "acc", "accuracy")
    q1, q2, q3 = np.percentile(carope, [25, 50, 75])
    assert f"| carope | 5 | {q2:.3f} [{q1:.3f}–{q3:.3f}] (3/5) |" in lines
    row = [line for line in lines if line.startswith("| rope")][0]
    assert row.startswith(f"| rope | 5 | {np.median(rope):.3f} [") and "(" not in row  # RoPE is not counted against itself
    loss = tables.robust_table(tables.by_pe([dict(r, val={"64": dict(ppl=1 + r["val"]["64"]["acc"])}) for r in runs]),
                                [64], "head", "rule", "ppl", "perplexity")
    assert [line for line in loss if line.startswith("| carope")][0].endswith("(1/5) |")  # lower is better: seed 3 only


def test_summary_pairs_carope_with_rope_at_16x_or_4x_in_every_sweep(tmp_path):
    """--summary: for each folder with rope and carope, CARoPE against RoPE at the same seed at the longest length
    up to 16x (text, in %) or 4x (a task, in points), with the seeds that are better; folders without both skipped."""
    def sweep(name, task, figures):
        (tmp_path / name).mkdir()
        runs = [dict(pe=pe, seed=seed, context=64, task=task, val={str(T): {("acc" if task else "bpb"): v, "ppl": 1.0}
                                                                  for T, v in vals.items()})
                for (pe, seed), vals in figures.items()]
        (tmp_path / name / "results.json").write_text(json.dumps(dict(runs=runs)))
    sweep("text", None, {("rope", 1): {64: 2.0, 1024: 4.0, 2048: 1.0}, ("rope", 2): {64: 2.0, 1024: 5.0, 2048: 1.0},
                         ("carope", 1): {64: 2.0, 1024: 3.0, 2048: 9.0}, ("carope", 2): {64: 2.0, 1024: 5.5, 2048: 9.0}})
    sweep("task", "copy", {("rope", 1): {64: 1.0, 256: 0.25, 512: 0.0}, ("carope", 1): {64: 1.0, 256: 0.75, 512: 0.0}})
    sweep("no-carope", None, {("rope", 1): {64: 2.0}, ("nope", 1): {64: 3.0}})
    assert compare.main(["--summary", str(tmp_path)]) == 0
    md = (tmp_path / "summary.md").read_text()
    assert "| [text](text/results.md) | 16x | bpb | 2 | -7.5 % | -7.5 % | -25.0 % | +10.0 % | 1/2 |" in md
    assert "| [task](task/results.md) | 4x | acc | 1 | +50.0 pt | +50.0 pt | +50.0 pt | +50.0 pt | 1/1 |" in md
    assert "no-carope" not in md and (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        compare.main(["--summary", str(empty)])
    assert "nothing to summarise" in str(e.value.code)


def test_sizes_pairs_carope_with_rope_at_1x_4x_16x_against_the_parameter_count(tmp_path):
    """--sizes: sweeps of one recipe that differ only in the model's size, one row each in order of parameters,
    carope and carope-static against RoPE at the same seed at 1x, 4x and 16x; another difference is refused."""
    def sweep(name, params, layers, figures, **recipe):
        d = tmp_path / name
        d.mkdir()
        (d / "recipe.json").write_text(json.dumps(dict(preset="bytes", n_layer=layers, **recipe)))
        (d / "rope-s1").mkdir()
        (d / "rope-s1" / "config.json").write_text(json.dumps(dict(model=dict(n_layer=layers, n_embd=8 * layers))))
        runs = [dict(pe=pe, seed=seed, context=4, params=params, task=None,
                     val={str(4 * k): {"bpb": v, "ppl": 1.0} for k, v in zip((1, 4, 16), vals)})
                for (pe, seed), vals in figures.items()]
        (d / "results.json").write_text(json.dumps(dict(runs=runs)))
        return str(d)
    big = sweep("big", 900, 4, {("rope", 1): (2.0, 3.0, 4.0), ("rope", 2): (2.0, 3.0, 5.0),
                                ("carope", 1): (2.0, 1.5, 3.0), ("carope", 2): (2.2, 3.0, 4.0),
                                ("carope-static", 1): (2.0, 3.0, 4.4)})
    small = sweep("small", 100, 2, {("rope", 1): (2.0, 3.0, 4.0), ("carope", 1): (1.0, 3.3, 2.0)})
    assert compare.main(["--sizes", f"{big},{small}"]) == 0
    md = (tmp_path / "model_size.md").read_text().splitlines()
    rows = [line for line in md if line.startswith("| [")]
    assert rows == ["| [small](small/results.md) | 2 x 16 | 100 | 1 | -50.0 % [-50.0, -50.0] | +10.0 % [+10.0, +10.0] "
                    "| -50.0 % [-50.0, -50.0] | – | – | – |",
                    # the seeds each cell pairs, not the runs: carope-static has one seed here
                    "| [big](big/results.md) | 4 x 32 | 900 | 1–2 | +5.0 % [+0.0, +10.0] | -25.0 % [-50.0, +0.0] "
                    "| -22.5 % [-25.0, -20.0] | +0.0 % [+0.0, +0.0] (1 seed) | +0.0 % [+0.0, +0.0] (1 seed) "
                    "| +10.0 % [+10.0, +10.0] (1 seed) |"]
    assert (tmp_path / "model_size.png").read_bytes()[:4] == b"\x89PNG"
    other = sweep("other", 100, 2, {("rope", 1): (2.0, 3.0, 4.0), ("carope", 1): (1.0, 3.3, 2.0)}, lr=1e-3)
    with pytest.raises(SystemExit) as e:
        compare.main(["--sizes", f"{big},{other}"])
    assert "differ in lr, not only in n_layer, n_head, n_embd" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        compare.main(["--sizes", big])
    assert "give two or more sweep folders" in str(e.value.code)


def test_a_task_of_several_tokens_an_answer_also_tabulates_accuracy_per_token(tmp_path):
    """MQAR's row is one answer of 4 queries: results.md gives accuracy per row and per query, each paired with
    RoPE in points; where every answer is one token (the two figures equal), the per-token table is left out."""
    def run(pe, seed, acc, token_acc):
        return dict(pe=pe, seed=seed, task="mqar", context=16, tokens=1, tokens_per_s=1.0, device="cpu", torch="x",
                    val={"16": dict(loss=0.1, acc=1.0, token_acc=1.0), "64": dict(loss=1.0, acc=acc, token_acc=token_acc)})
    runs = [run("rope", 1, 0.25, 0.75), run("carope", 1, 0.5, 0.875)]
    assert tables.metrics_of(runs) == ["acc", "token_acc"]
    tables.write_markdown(str(tmp_path), runs, ["python compare.py ..."], 16)
    md = (tmp_path / "results.md").read_text()
    assert "**test accuracy per answer token (MQAR: per query)** (higher is better)" in md
    assert "| carope | 1 | +0.0 pt [+0.0, +0.0] | +25.0 pt [+25.0, +25.0] |" in md  # per row
    assert "| carope | 1 | +0.0 pt [+0.0, +0.0] | +12.5 pt [+12.5, +12.5] |" in md  # per query
    same = [run("rope", 1, 0.25, 0.25), run("carope", 1, 0.5, 0.5)]
    assert tables.metrics_of(same) == ["acc"]


def test_a_task_sweep_tabulates_accuracy_by_length(tmp_path):
    out = tmp_path / "sweep"
    assert compare.main(["--task", "parity", "--pe", "rope,nope", "--seeds", "1", "--out", str(out), "--max-steps", "3",
                         "--n-layer", "1", "--n-embd", "16", "--micro-batch", "4", "--num-samples", "0",
                         "--device", "cpu"]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["task"] for r in runs] == ["parity", "parity"] and all(sorted(r["val"], key=int) == ["64", "128", "256"]
                                                                     and 0 <= r["val"]["256"]["acc"] <= 1 for r in runs)
    md = (out / "results.md").read_text()
    assert "test accuracy (whole answers)" in md and "len 256 (4x)" in md and "task: parity." in md
    assert (out / "acc_vs_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # named for what it shows
    assert not (out / "ppl_vs_length.png").exists()


def test_the_recorded_command_is_the_same_after_a_sweep_and_after_plot_only(tmp_path):
    """results.md's command gives each --task-option its own flag (a comma-joined one would be one bad option),
    and the sweep's summary and --plot-only's write the same words."""
    out = tmp_path / "sweep"
    flags = ["--task", "counting", "--task-option", "variables=2", "--task-option", "max_value=5", "--pe", "rope",
             "--seeds", "1", "--out", str(out), "--max-steps", "2", "--n-layer", "1", "--n-embd", "16",
             "--micro-batch", "4", "--device", "cpu"]
    assert compare.main(flags) == 0
    command = lambda: next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("Command"))
    after_sweep = command()
    assert "--task-option variables=2 --task-option max_value=5" in after_sweep
    assert compare.main(["--out", str(out), "--plot-only"]) == 0
    assert command() == after_sweep
    assert compare.main(shlex.split(after_sweep.split("`")[1])[2:]) == 0  # it replays: the runs are skipped


def test_a_second_sweep_with_another_recipe_is_refused_while_the_first_runs(tmp_path, monkeypatch):
    """recipe.json is written, under the folder's lock, before the first run starts: the same command with another
    --max-steps, started while the first run trains, is refused instead of mixing 12- and 6-step runs in one table."""
    data, out = make_data(tmp_path / "data"), tmp_path / "sweep"
    second = []

    def first_run(out_, pe, seed, recipe):
        os.makedirs(compare.run_dir(out_, pe, seed), exist_ok=True)
        open(os.path.join(compare.run_dir(out_, pe, seed), "config.json"), "w").close()  # the run has begun
        if not second:  # meanwhile, the same sweep with another --max-steps
            second.append(None)
            with pytest.raises(SystemExit) as e:
                compare.main(["--pe", "rope", "--seeds", "1", "--out", str(out), "--data", data, *RECIPE,
                              "--max-steps", "6"])
            second[0] = str(e.value.code)
        raise SystemExit("stopped here")
    monkeypatch.setattr(compare, "train_one", first_run)
    assert compare.main(["--pe", "rope", "--seeds", "1", "--out", str(out), "--data", data, *RECIPE,
                         "--max-steps", "12"]) == 1
    assert "holds runs of another recipe (--max-steps 12 there, 6 here)" in second[0]
    assert json.loads((out / "recipe.json").read_text())["max_steps"] == 12


def test_recipes_compare_as_settings_and_the_recorded_command_replays(tmp_path):
    """--no-fused-carope is in the recorded command, so that command replays; --task-option flags in another order
    (and --data spelled another way) are the same recipe, not another one."""
    out = tmp_path / "sweep"
    flags = ["--task", "counting", "--task-option", "variables=2", "--task-option", "max_value=5", "--pe", "rope",
             "--seeds", "1", "--out", str(out), "--max-steps", "2", "--n-layer", "1", "--n-embd", "16",
             "--micro-batch", "4", "--device", "cpu", "--no-fused-carope"]
    assert compare.main(flags) == 0
    command = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("Command"))
    assert "--no-fused-carope" in command
    assert compare.main(shlex.split(command.split("`")[1])[2:]) == 0  # it replays: the run is skipped
    swapped = flags[:2] + flags[4:6] + flags[2:4] + flags[6:]  # max_value=5 first
    assert swapped != flags and compare.main(swapped) == 0
    assert sweeps.settings({"data": "data/kjv"}) == sweeps.settings({"data": os.path.abspath("data/kjv/")})


def test_encodings_with_other_seeds_get_a_command_each_and_each_replays(tmp_path, monkeypatch):
    """Two sweeps into one folder (rope, nope at seeds 1, 2; carope at seed 3): results.md names the two commands
    that made the runs, not one merged command naming runs that were never made, and each replays as is."""
    out = tmp_path / "sweep"
    common = ["--task", "parity", "--out", str(out), "--max-steps", "2", "--n-layer", "1", "--n-embd", "16",
              "--micro-batch", "4", "--device", "cpu"]
    assert compare.main(["--pe", "rope,nope", "--seeds", "1,2", *common]) == 0
    assert compare.main(["--pe", "carope", "--seeds", "3", *common]) == 0
    lines = (out / "results.md").read_text().splitlines()
    commands = [line.split("`")[1] for line in lines if line.startswith("- `python compare.py")]
    assert lines[2] == "Commands (the tables merge their runs):" and len(commands) == 2
    named = [(c.split("--pe ")[1].split()[0], c.split("--seeds ")[1].split()[0]) for c in commands]
    assert sorted(named) == [("carope", "3"), ("rope,nope", "1,2")]
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("a finished run was trained again"))
    for c in commands:
        assert compare.main(shlex.split(c)[2:]) == 0  # every run it names is there: all skipped


def test_a_sweep_whose_every_run_failed_says_why_not_plot_only(tmp_path, monkeypatch, capfd):
    def busy(out, pe, seed, recipe):
        raise SystemExit("data/kjv-bytes is in use by another prepare_data.py (pid 1): wait until it is done")
    monkeypatch.setattr(compare, "train_one", busy)
    out = tmp_path / "sweep"
    assert compare.main(["--pe", "rope,carope", "--seeds", "1", "--out", str(out), "--max-steps", "2"]) == 1
    err = capfd.readouterr().err
    assert "no run has finished; 2 failed" in err and "carope seed 1: data/kjv-bytes is in use" in err
    assert "--plot-only" not in err and "fix that, then run again" in err and not (out / "results.md").exists()


def unwritable_outs(tmp_path):
    (tmp_path / "somefile").write_text("notes")
    yield str(tmp_path / "somefile"), "is a file, not a folder"
    yield str(tmp_path / "somefile" / "sub"), f"{tmp_path / 'somefile'} is a file, so no folder can be made under it"
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    yield str(ro / "sweep"), f"cannot write in {ro} (Permission denied)"


def test_an_unusable_out_is_one_line_before_any_training(tmp_path, monkeypatch, capsys):
    def no_training(argv):
        raise AssertionError("trained before --out was checked")
    monkeypatch.setattr(compare.train, "main", no_training)
    real = compare.tempfile.TemporaryFile

    def as_a_user(dir):
        if not os.stat(dir).st_mode & 0o200:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(dir=dir)
    if os.geteuid() == 0:  # root writes into read-only folders: refuse as the kernel refuses a user
        monkeypatch.setattr(compare.tempfile, "TemporaryFile", as_a_user)
    for out, words in unwritable_outs(tmp_path):
        for plot_only in ([], ["--plot-only"]):
            with pytest.raises(SystemExit) as e:
                compare.main(["--pe", "rope", "--seeds", "1", "--out", out, *RECIPE, *plot_only])
            msg = str(e.value.code)
            assert msg.startswith(f"compare.py: --out {out}") and words in msg and "\n" not in msg, msg
    assert capsys.readouterr().out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["ro", "somefile"]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    out = root / "sweep"
    assert compare.main(["--pe", "rope,carope", "--seeds", "1", "--out", str(out), "--data",
                         make_data(root / "data"), *RECIPE, "--max-steps", "2"]) == 0
    return out


SUMMARY = ("results.json", "results.md", "loss.png", "ppl_vs_length.png", "loss_by_position.png", "carope_f.png",
           "carope_clock.png")


@pytest.mark.parametrize("stop, at", [(OSError(errno.ENOSPC, "No space left on device"), "results.md"),
                                      (OSError(errno.ENOSPC, "No space left on device"), "loss.png"),
                                      (KeyboardInterrupt(), "results.json"), (KeyboardInterrupt(), "loss.png")])
def test_a_full_disk_or_ctrl_c_during_the_summary_keeps_the_previous_one(finished_sweep, monkeypatch, capfd,
                                                                          stop, at):
    """The write of `at` stops half-way: one line (Ctrl-C: exit 130) saying how to write the summary again; every
    summary file is whole, the previous one or the new one, and no temp file is left."""
    out = finished_sweep
    before = {name: (out / name).read_bytes() for name in SUMMARY}
    real = files.atomic_write

    def stops_half_way(path, write):
        if os.path.basename(path) != at:
            return real(path, write)

        def half(f):
            f.write(b"\x89PNG half a file")
            raise stop
        return real(path, half)
    monkeypatch.setattr(files, "atomic_write", stops_half_way)
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        compare.main(["--out", str(out), "--plot-only"])
    redo = f"python compare.py --out {out} --plot-only"
    if isinstance(stop, KeyboardInterrupt):
        err = capfd.readouterr().err
        assert e.value.code == 130 and len(err.strip().splitlines()) == 1, err
        assert "interrupted while writing the summary; the runs are kept" in err and redo in err
    else:
        msg = str(e.value.code)
        assert msg.startswith(f"compare.py: cannot write the summary in {out} (No space left on device)"), msg
        assert "\n" not in msg and redo in msg
    assert (out / at).read_bytes() == before[at]  # the one cut short is the previous one; those before it are new
    for name in SUMMARY:  # and all of them whole
        data = (out / name).read_bytes()
        assert data.endswith(b"IEND\xaeB`\x82") if name.endswith(".png") else data.endswith(b"\n") or json.loads(data)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_the_preset_is_recorded_and_a_sweep_recorded_without_it_ran_nano(tmp_path, monkeypatch):
    """train.py's default preset changed (nano, then bytes): a sweep records its preset, and a recipe.json written
    before that was recorded ran nano, so the command of then, without --preset, is now another recipe."""
    data, out = make_data(tmp_path / "data"), tmp_path / "sweep"
    assert compare.main(["--pe", "rope", "--seeds", "1", "--out", str(out), "--data", data, *RECIPE, "--max-steps",
                         "2"]) == 0
    recorded = json.loads((out / "recipe.json").read_text())
    assert recorded["preset"] == "nano"
    del recorded["preset"]  # as sweeps recorded it before
    (out / "recipe.json").write_text(json.dumps(recorded))
    assert compare.main(["--out", str(out), "--plot-only"]) == 0  # its command says what it ran
    command = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("Command"))
    assert "--preset nano" in command
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("trained another recipe into the folder"))
    with pytest.raises(SystemExit) as e:  # the same flags without --preset are now the bytes recipe
        compare.main(["--pe", "rope", "--seeds", "2", "--out", str(out), "--max-steps", "2",
                      *[a for a in RECIPE if a not in ("--preset", "nano")]])
    assert "another recipe" in str(e.value.code) and "--preset nano there, bytes here" in str(e.value.code)


def test_sigterm_during_the_summary_is_one_line_and_leaves_no_temp_file(finished_sweep, tmp_path):
    """SIGTERM while loss.png is half-written: one line and exit 143, no NAME.carope-save-PID.tmp; a temp file
    that a killed summary left (its process gone) is removed by the next --plot-only."""
    out = finished_sweep
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f"results.md.carope-save-{dead.pid}.tmp"
    stale.write_bytes(b"half")
    script = f"""
import os, signal, sys
sys.path.insert(0, {REPO!r})
import compare
from support import files
real = files.atomic_write
def terminated_half_way(path, write):
    if os.path.basename(path) != "loss.png":
        return real(path, write)
    def half(f):
        f.write(b"half a file")
        os.kill(os.getpid(), signal.SIGTERM)
        f.write(b"never")
    return real(path, half)
files.atomic_write = terminated_half_way
sys.exit(compare.main(["--out", {str(out)!r}, "--plot-only"]))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 143, r.stderr[-2000:]
    assert r.stderr.strip() == (f"compare.py: interrupted (SIGTERM) while writing the summary; the runs are kept: "
                                f"python compare.py --out {out} --plot-only writes it")
    assert not [p.name for p in out.rglob("*.tmp")]  # the one cut short, and the stale one


def test_f_by_token_against_a_hand_computation():
    """Exercise 8's helper: the mean of f(x_t)_h = 1/(softplus(x_t W + b)_h + 1) over each kind of token,
    computed by hand for a one-layer model (x_t = ln_1 of the token embedding), absent tokens left out."""
    import torch
    import torch.nn.functional as F
    from carope import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=16, pe="carope")).eval()
    rotary = model.transformer.h[0].attn.rotary
    with torch.no_grad():
        rotary.weight.normal_(0, 0.5)  # W = 0 would give every token theta_1: no test
    idx = torch.tensor([[0, 3, 2, 2, 0, 3], [2, 2, 2, 0, 3, 3]])  # tokens 1 and 4 never occur
    got = compare.f_by_token(model, idx, ("w", "r", "i", "0", "1"))
    assert list(got) == ["w", "i", "0"]
    with torch.no_grad():
        x = model.transformer.h[0].ln_1(model.transformer.wte.weight)  # x_t of each token id: (5, C)
        f = 1 / (F.softplus(x.double() @ rotary.weight.double().T + rotary.bias.double()) + 1)  # (5, H)
    for word, token in (("w", 0), ("i", 2), ("0", 3)):
        assert got[word].shape == (1, 2)  # (L, H)
        assert torch.allclose(got[word][0].double(), f[token], rtol=1e-6, atol=0), word


def test_the_exercises_commands_parse():
    """Every train.py and compare.py command in docs/exercises.md's code blocks is one the scripts accept:
    a renamed or removed flag (--carope-init, --tapa-alpha, ...) fails here, not in a student's hands."""
    import re
    import train
    text = open(os.path.join(REPO, "docs", "exercises.md"), encoding="utf-8").read()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line for block in blocks for line in block.splitlines() if re.match(r"python (train|compare)\.py ", line)]
    assert len(lines) >= 15
    for line in lines:
        script, *argv = shlex.split(line, comments=True)[1:]
        if script == "compare.py":
            args, argv = compare.parse_args(argv)
            argv += ["--pe", args.pe[0]]
        train.parser.parse_args(argv)  # SystemExit with one line on a flag train.py does not have


def fake_sweep(root, name, figures, recipe=None, task=None, context=4, config=True):
    """A committed sweep as --summary and --sizes read it: recipe.json, results.json and rope-s1/config.json."""
    d = root / name
    d.mkdir()
    (d / "recipe.json").write_text(json.dumps(recipe if recipe is not None else dict(preset="bytes")))
    metric = "acc" if task else "bpb"
    runs = [dict(pe=pe, seed=seed, params=100, task=task, val={str((context or 4) * k): {metric: v, "ppl": 1.0}
                                                               for k, v in zip((1, 4, 16), vals)})
            for (pe, seed), vals in figures.items()]
    for r in runs:
        if context:
            r["context"] = context
    (d / "results.json").write_text(json.dumps(dict(runs=runs)))
    if config:
        (d / "rope-s1").mkdir()
        (d / "rope-s1" / "config.json").write_text(json.dumps(dict(model=dict(n_layer=2, n_embd=16))))
    return d


def test_sizes_on_task_sweeps_compares_accuracy_in_points(tmp_path):
    """An accuracy sweep's gain is in points and positive is better (0.6 -> 0.9 is +30.0 pt, not '+30.0 %')."""
    figures = {("rope", 1): (1.0, 0.6, 0.5), ("carope", 1): (1.0, 0.9, 0.4)}
    a = fake_sweep(tmp_path, "a", figures, dict(task="mqar"), task="mqar")
    b = fake_sweep(tmp_path, "b", figures, dict(task="mqar", n_layer=4), task="mqar")
    assert compare.main(["--sizes", f"{a},{b}"]) == 0
    md = (tmp_path / "model_size.md").read_text()
    assert "pe - RoPE in points, mean over seeds [min, max]; positive is better" in md
    assert "| +0.0 pt [+0.0, +0.0] | +30.0 pt [+30.0, +30.0] | -10.0 pt [-10.0, -10.0] |" in md and " %" not in md


def test_sizes_refuses_one_sweep_twice(tmp_path):
    a = fake_sweep(tmp_path, "a", {("rope", 1): (2, 3, 4), ("carope", 1): (2, 3, 3)})
    with pytest.raises(SystemExit) as e:
        compare.main(["--sizes", f"{a},{tmp_path}/./a/"])
    assert str(e.value.code) == f"compare.py: --sizes names {tmp_path}/./a twice: give each sweep once"
    assert not (tmp_path / "model_size.md").exists()


def test_sizes_reads_older_sweeps_and_says_what_is_missing_in_one_line(tmp_path):
    """A results.json without `context` (as results/nano-kjv) is trained at its shortest length; the model's shape
    comes from any run's config.json; a sweep without recipe.json, or without any config.json, is one line."""
    figures = {("rope", 1): (2.0, 3.0, 4.0), ("carope", 1): (2.0, 1.5, 2.0)}
    old = fake_sweep(tmp_path, "old", figures, context=None, config=False)
    (old / "carope-s1").mkdir()
    (old / "carope-s1" / "config.json").write_text(json.dumps(dict(model=dict(n_layer=1, n_embd=8))))
    new = fake_sweep(tmp_path, "new", figures, dict(preset="bytes", n_layer=2))
    assert compare.main(["--sizes", f"{old},{new}"]) == 0
    assert "| [old](old/results.md) | 1 x 8 | 100 | 1 | +0.0 % [+0.0, +0.0] | -50.0 % [-50.0, -50.0] | -50.0 % " \
           "[-50.0, -50.0] | – | – | – |" in (tmp_path / "model_size.md").read_text()
    (old / "carope-s1" / "config.json").unlink()
    (tmp_path / "model_size.md").unlink()
    for broken, message in ((lambda: None, "no run folder of"), (lambda: (new / "recipe.json").unlink(),
                                                                   "holds no sweep (no recipe.json)")):
        broken()
        with pytest.raises(SystemExit) as e:
            compare.main(["--sizes", f"{new},{old}"])
        assert message in str(e.value.code) and "\n" not in str(e.value.code)
    assert not (tmp_path / "model_size.md").exists()


def test_summary_skips_a_sweep_without_runs_and_a_recipe_not_a_dict_is_one_line(tmp_path):
    fake_sweep(tmp_path, "empty", {})
    with pytest.raises(SystemExit) as e:
        compare.main(["--summary", str(tmp_path)])
    assert "no sweep under" in str(e.value.code) and "nothing to summarise" in str(e.value.code)
    fake_sweep(tmp_path, "full", {("rope", 1): (2, 3, 4), ("carope", 1): (2, 3, 3)})
    assert compare.main(["--summary", str(tmp_path)]) == 0
    assert "[empty]" not in (tmp_path / "summary.md").read_text()
    (tmp_path / "empty" / "recipe.json").write_text("[1, 2]")  # the regression: a JSON list, not a recipe
    with pytest.raises(SystemExit) as e:
        compare.main(["--out", str(tmp_path / "empty"), "--plot-only"])
    assert "recipe.json holds a JSON list, not a recipe" in str(e.value.code)
    (tmp_path / "full" / "results.json").write_text('{"runs": [{"pe": "rope"}]}')
    with pytest.raises(SystemExit) as e:
        compare.main(["--summary", str(tmp_path)])
    assert "holds a run without pe, seed, val" in str(e.value.code)


@pytest.mark.parametrize("mode", ["--summary", "--sizes"])
def test_summary_and_sizes_that_cannot_write_say_so_in_one_line(tmp_path, monkeypatch, mode):
    """A read-only folder or a full disk: the one line --plot-only gives, with the command that writes it again."""
    a = fake_sweep(tmp_path, "a", {("rope", 1): (2, 3, 4), ("carope", 1): (2, 3, 3)})
    b = fake_sweep(tmp_path, "b", {("rope", 1): (2, 3, 4), ("carope", 1): (2, 3, 3)}, dict(preset="bytes", n_layer=4))

    def read_only(path, write):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(files, "atomic_write", read_only)
    argv = [mode, str(tmp_path) if mode == "--summary" else f"{a},{b}"]
    with pytest.raises(SystemExit) as e:
        compare.main(argv)
    msg = str(e.value.code)
    assert msg.startswith(f"compare.py: cannot write the summary in {tmp_path} (Read-only file system)"), msg
    assert msg.endswith(f"then python compare.py {argv[0]} {argv[1]}") and "\n" not in msg


def test_a_sweep_killed_before_its_first_run_takes_the_corrected_recipe(tmp_path, monkeypatch):
    """SIGKILL before any run began leaves recipe.json; the corrected command is not 'another recipe'."""
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps(dict(preset="nano", max_steps=12)))
    began = []

    def sweep(args, recipe):
        began.append(json.loads((out / "recipe.json").read_text())["max_steps"])
        if len(began) == 2:  # this time the run begins: its config.json is written
            (out / "rope-s1").mkdir()
            (out / "rope-s1" / "config.json").write_text("{}")
        return ["rope seed 1: stopped here"]
    monkeypatch.setattr(compare, "sweep", sweep)
    for _ in range(2):
        assert compare.main(["--pe", "rope", "--seeds", "1", "--out", str(out), *RECIPE, "--max-steps", "6"]) == 1
    assert began == [6, 6]  # the new recipe, taken
    with pytest.raises(SystemExit) as e:
        compare.main(["--pe", "rope", "--seeds", "1", "--out", str(out), *RECIPE, "--max-steps", "7"])
    assert "holds runs of another recipe (--max-steps 6 there, 7 here)" in str(e.value.code)


def test_sigterm_after_a_run_trained_is_one_line_and_the_rerun_finishes_it(tmp_path):
    """SIGTERM while a finished run's result.json is being made (after train.py's own handler is gone): one line
    naming the run and the rerun, exit 1, not a silent rc -15; the rerun writes the result without training."""
    data, out = make_data(tmp_path / "data"), tmp_path / "sweep"
    argv = ["--pe", "rope", "--seeds", "1", "--out", str(out), "--data", data, *RECIPE, "--max-steps", "2"]
    script = f"""
import os, signal, sys
sys.path.insert(0, {REPO!r})
import compare
real = compare.run_entry
def terminated(*a):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*a)
compare.run_entry = terminated
sys.exit(compare.main({argv!r}))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=default_signals)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == ("compare.py: interrupted during rope seed 1; run the same command "
                                                 "again to continue the sweep")
    assert not (out / "rope-s1" / "result.json").exists() and (out / "rope-s1" / "ckpt.pt").exists()
    assert compare.main(argv) == 0 and (out / "rope-s1" / "result.json").exists()


def test_each_run_gets_only_the_flags_its_encoding_reads_and_results_md_says_so(tmp_path):
    """--pe rope,carope --carope-init zero is one sweep: the carope runs start from b = 0, RoPE gets no
    --carope-init (train.py would refuse it), and results.md says which runs the flag applied to. A flag that no
    encoding of the sweep reads is refused in one line."""
    assert compare.for_run(["--carope-init", "zero", "--lr", "1e-3", "--tapa-alpha=0.5"], "rope") == ["--lr", "1e-3"]
    assert compare.for_run(["--carope-init", "zero", "--tapa-alpha=0.5"], "tapa") == ["--tapa-alpha=0.5"]
    data, out = make_data(tmp_path / "data"), tmp_path / "sweep"
    flags = ["--pe", "rope,carope", "--seeds", "1", "--out", str(out), "--data", data, *RECIPE, "--max-steps", "2"]
    assert compare.main(flags + ["--carope-init", "zero"]) == 0
    model = lambda pe: json.loads((out / f"{pe}-s1" / "config.json").read_text())["model"]
    assert model("rope")["carope_init"] == "rope" and model("carope")["carope_init"] == "zero"
    assert "`--carope-init zero` applied to the carope runs only: the others do not read it." in \
        (out / "results.md").read_text()
    with pytest.raises(SystemExit) as e:
        compare.main(["--pe", "rope", "--seeds", "1", "--out", str(tmp_path / "other"), "--data", data, *RECIPE,
                      "--tapa-alpha", "0.5"])
    assert str(e.value.code) == ("compare.py: --tapa-alpha is read by --pe tapa only, and this sweep has none of "
                                 "them (rope): drop --tapa-alpha, or add one of them to --pe")


def test_bases_sets_each_encoding_against_rope_at_its_base_and_at_ten_thousand(tmp_path):
    """--bases: per encoding and base, the figure at 1x and 16x, and at 16x the change against RoPE at the same
    base and at 10^4 (the sweep without --rope-base), paired by seed; pairs.json's slow pairs where a run has one."""
    ref = fake_sweep(tmp_path, "ref", {("rope", 1): (2.0, 3.0, 4.0), ("carope", 1): (2.0, 3.0, 3.0)})
    small = fake_sweep(tmp_path, "small", {("rope", 1): (2.0, 2.5, 2.0), ("carope", 1): (2.2, 2.5, 2.2)},
                       dict(preset="bytes", rope_base=10))
    (small / "carope-s1" / "").mkdir()
    (small / "carope-s1" / "pairs.json").write_text(json.dumps(dict(slow_mean=1.5, slow_qk_share_mean=0.25)))
    lines, names = compare.overviews.bases([str(ref), str(small)])
    assert names == ["rope_base_bytes"] and (tmp_path / "rope_base_bytes.png").read_bytes()[:4] == b"\x89PNG"
    rows = [line for line in lines if line.startswith("| ")][1:]  # below the header
    assert rows == [
        "| rope | [10](small/results.md) | 1 | 2.000 [2.000–2.000] | 2.000 [2.000–2.000] | – | -50.0 % [-50.0, -50.0] (1/1) | – | – |",
        "| rope | [10000](ref/results.md) | 1 | 2.000 [2.000–2.000] | 4.000 [4.000–4.000] | – | – | – | – |",
        "| carope | [10](small/results.md) | 1 | 2.200 [2.200–2.200] | 2.200 [2.200–2.200] | +10.0 % [+10.0, +10.0] (0/1) "
        "| -45.0 % [-45.0, -45.0] (1/1) | 1.5 [1.5–1.5] | 25.0 [25.0–25.0] % |",
        "| carope | [10000](ref/results.md) | 1 | 2.000 [2.000–2.000] | 3.000 [3.000–3.000] | -25.0 % [-25.0, -25.0] (1/1) "
        "| -25.0 % [-25.0, -25.0] (1/1) | – | – |"]
    other = fake_sweep(tmp_path, "other", {("rope", 1): (2, 3, 4)}, dict(preset="bytes", rope_base=100, lr=1e-3))
    with pytest.raises(SystemExit) as e:
        compare.main(["--bases", f"{ref},{other}"])
    assert "differ in lr, not only in rope_base" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        compare.main(["--bases", f"{small},{other}"])
    assert "differ in lr" in str(e.value.code)
    no_ref = fake_sweep(tmp_path, "no-ref", {("rope", 1): (2, 3, 4)}, dict(preset="bytes", rope_base=1000))
    with pytest.raises(SystemExit) as e:
        compare.main(["--bases", f"{small},{no_ref}"])
    assert "no bytes sweep holds RoPE at base 10^4, the reference" in str(e.value.code)
    # with a task's sweeps beside them: a table for each family, and the trade-off of the two
    task_ref = fake_sweep(tmp_path, "task-ref", {("rope", 1): (1.0, 0.9, 0.6), ("carope", 1): (1.0, 0.9, 0.8)},
                          dict(task="mqar"), task="mqar")
    task_small = fake_sweep(tmp_path, "task-small", {("rope", 1): (1.0, 0.7, 0.5), ("carope", 1): (1.0, 0.95, 0.8)},
                            dict(task="mqar", rope_base=10), task="mqar")
    lines, names = compare.overviews.bases([str(ref), str(small), str(task_ref), str(task_small)])
    assert names == ["rope_base_bytes", "rope_base_mqar", "rope_base_tradeoff"]
    assert "| carope | [10](task-small/results.md) | 1 | 1.000 [1.000–1.000] | 0.950 [0.950–0.950] | " \
           "+25.0 pt [+25.0, +25.0] (1/1) | +5.0 pt [+5.0, +5.0] (1/1) | – | – |" in lines  # a task: at 4x
    assert "# Accuracy (whole answers) by RoPE base (mqar)" in lines
    assert (tmp_path / "rope_base_tradeoff.png").read_bytes()[:4] == b"\x89PNG"


def test_a_folder_whose_sweep_still_runs_before_its_first_run_is_not_taken(tmp_path, monkeypatch):
    """A recipe.json with no run yet is taken over only if the sweep that wrote it is gone: while it still runs
    (its pid in DIR/.lock, say building the data), another recipe is refused, as once a run has begun."""
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps(dict(preset="nano", max_steps=12)))
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{alive.pid}\n")
        monkeypatch.setattr(compare, "sweep", lambda args, recipe: pytest.fail("trained another recipe into it"))
        with pytest.raises(SystemExit) as e:
            compare.main(["--pe", "rope", "--seeds", "1", "--out", str(out), *RECIPE, "--max-steps", "6"])
        assert "holds runs of another recipe" in str(e.value.code)
    finally:
        alive.kill()
        alive.wait()
    assert not files.pid_alive(alive.pid) and files.last_holder(out) is not None
