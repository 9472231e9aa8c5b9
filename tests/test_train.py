"""Tests of train.py on CPU with tiny models: the default run, resume, DDP, accumulation, errors.

Most tests write tiny llm.c shards into tmp_path; only the end-to-end default run uses the
embedded corpus (built once in data/kjv, as `python train.py` would).
"""

import errno
import io
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import carope  # noqa: E402
from support import files, shards, sweeps  # noqa: E402
from support import tokenizer  # noqa: E402
import train  # noqa: E402

VOCAB = 128
T = 16
# a 1-layer model on a 128-token vocabulary: a step takes milliseconds; the nano recipe (GPT-2 tokens, as
# make_data's manifest says), not the default bytes one
TINY = ["--preset", "nano", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", str(T),
        "--vocab-size", str(VOCAB),
        "--micro-batch", "4", "--val-tokens", "256", "--warmup-steps", "2", "--sample-tokens", "0", "--device", "cpu"]


def make_data(root, n_train=20_000, n_val=2_000, vocab_size=VOCAB, manifest=True, top_token=None):
    """Tiny shards with a learnable pattern (a noisy counter), and optionally a manifest."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    stream = (np.arange(n_train + n_val) * 7 + rng.integers(0, 3, n_train + n_val)) % min(vocab_size, VOCAB)
    if top_token is not None:
        stream[10] = top_token  # one token the model's vocabulary does not have, early in the val shard
    shards.write_shard(os.path.join(root, "val_000000.bin"), stream[:n_val])
    shards.write_shard(os.path.join(root, "train_000001.bin"), stream[n_val:])
    if manifest:
        with open(os.path.join(root, "manifest.json"), "w") as f:
            listed = [dict(file="val_000000.bin", split="val", tokens=n_val),
                      dict(file="train_000001.bin", split="train", tokens=n_train)]
            json.dump(dict(source="test", tokenizer="gpt2", vocab_size=vocab_size, eot_token=vocab_size - 1,
                           shards=listed, total_tokens=n_train + n_val), f)
    return str(root)


def default_signals():
    """preexec_fn of a child that a test signals: SIGINT, SIGTERM and SIGHUP at their defaults, as at a terminal.
    A pytest started with SIGINT ignored (`cmd &` in a script, `trap '' INT`) passes the ignore on to its
    children, and Python (train.py too, on purpose) keeps an inherited ignore: the child would not stop."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@pytest.fixture
def ctrl_c_in_this_process():
    """Ctrl-C raises KeyboardInterrupt in this process for the test, even if pytest was started with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def read_log(out_dir, kind="train"):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["type"] == kind]


def weights(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), map_location="cpu", weights_only=True)["model"]


def run(*args):
    return train.main([str(a) for a in args])


# -----------------------------------------------------------------------------

def test_default_run_end_to_end(tmp_path, capsys):
    """`python train.py` with a step cap and a smaller model: embedded corpus as bytes, the bytes recipe, carope;
    a step cap is another recipe than the committed sweep's, so its figures are not shown, and one line says why."""
    out = tmp_path / "out"
    s = run("--max-steps", 20, "--n-layer", 2, "--n-embd", 64, "--micro-batch", 8, "--warmup-steps", 5,
            "--val-tokens", 4096, "--sample-tokens", 16, "--out-dir", out)
    printed = capsys.readouterr().out
    assert s["pe"] == "carope" and s["preset"] == "bytes" and s["steps"] == 20
    assert len(s["losses"]) == 20 and s["losses"][-1] < s["losses"][0] - 1.0, s["losses"]  # it learns
    assert sorted(s["val"]) == [64, 128, 256, 512, 1024]  # 1x..16x the training context, the bytes recipe's
    for L in (64, 128, 256, 512, 1024):
        assert f"context {L:6d}" in printed and np.isfinite(s["val"][L]["bpb"])
    assert "bits/byte" in printed and "prepare_data.py --source fineweb-edu" in printed  # the next step
    assert "committed figures are not shown" in printed and "--max-steps 20 here, 1000 there" in printed
    assert "this run:" not in printed
    assert len(s["samples"]) == 2 and all(isinstance(t, str) for t in s["samples"])
    for name in ("log.jsonl", "ckpt.pt", "config.json"):
        assert (out / name).is_file()
    assert [r["step"] for r in read_log(out)] == list(range(1, 21))
    assert {r["len"] for r in read_log(out, "eval")} == {64, 128, 256, 512, 1024}
    record = read_log(out)[0]
    assert {"loss", "lr", "grad_norm", "ms", "tokens_per_s", "mfu"} <= record.keys()
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["pe"] == "carope" and config["args"]["max_steps"] == 20
    assert config["args"]["tokenizer"] == "bytes"
    assert config["args"]["data_dir"].endswith(os.path.join("data", "kjv-bytes"))


def test_the_default_is_the_committed_bytes_recipe_and_nano_is_one_flag_away():
    """No flag: the bytes recipe with carope, whose recorded settings equal every run of the committed sweep
    results/bytes-kjv (so the default run prints its figures); --preset nano: GPT-2 tokens, data/kjv."""
    args, given, _ = train.resolve_args([])
    assert (args.preset, args.pe, args.tokenizer, args.block_size, args.max_steps) == \
        ("bytes", "carope", "bytes", 64, 1000)
    assert args.data_dir.endswith(os.path.join("data", "kjv-bytes")) and args.eval_lens == [64, 128, 256, 512, 1024]
    cfg = train.model_config(args, given, None)
    mine = json.loads(json.dumps(dict(args=dict(vars(args), dtype="float32", compile=False), model=vars(cfg))))
    sweep = train.COMMITTED["bytes"]
    assert os.path.relpath(sweep, REPO) == os.path.join("results", "bytes-kjv")
    for pe in ("rope", "carope"):
        for seed in (1, 2, 3):
            with open(os.path.join(sweep, f"{pe}-s{seed}", "config.json")) as f:
                theirs = json.load(f)  # recorded before --carope-init and --tapa-alpha existed: their defaults
                defaults = vars(carope.GPTConfig())
                assert sweeps.recipe_differences(mine, theirs, dict(args=defaults, model=defaults)) == [], (pe, seed)
                assert {k for k, _, _ in sweeps.recipe_differences(mine, theirs)} == {"carope_init", "tapa_alpha"}
    nano, _, _ = train.resolve_args(["--preset", "nano"])
    assert (nano.preset, nano.pe, nano.tokenizer, nano.block_size, nano.max_steps) == ("nano", "carope", "gpt2", 128, 350)
    assert nano.data_dir.endswith(os.path.join("data", "kjv")) and nano.vocab_size == 50304
    assert "--preset nano" in train.__doc__ and "nano" in train.parser.format_help()


def test_gpt2_data_under_the_default_bytes_recipe_is_one_line_naming_preset_nano(tmp_path):
    data = make_data(tmp_path / "data")  # GPT-2 tokens, by its manifest
    message = expect_exit(["--data", data, "--out-dir", tmp_path / "o"], "holds gpt2 tokens", "--preset nano")
    assert "the default" in message and not (tmp_path / "o").exists()


def test_resume_equals_uninterrupted(tmp_path):
    """8 steps in one go == 4 steps, then --resume to 8: the same losses, bit for bit, and weights.

    Random windows and dropout make the data generator and the torch RNG part of what must resume.
    The first half is told the whole run's schedule (--lr-decay-steps 8), as an interrupted run has it.
    """
    data = make_data(tmp_path / "data")
    common = TINY + ["--data", data, "--dropout", "0.1", "--data-order", "random", "--eval-every", "3"]
    full = run(*common, "--max-steps", 8, "--out-dir", tmp_path / "full")
    half = run(*common, "--max-steps", 4, "--lr-decay-steps", 8, "--out-dir", tmp_path / "half")
    rest = run("--resume", tmp_path / "half" / "ckpt.pt", "--max-steps", 8, "--device", "cpu")
    assert rest["start_step"] == 4 and rest["out_dir"] == str(tmp_path / "half")
    assert half["losses"] + rest["losses"] == full["losses"]
    assert [r["loss"] for r in read_log(tmp_path / "half")] == full["losses"]  # one log, no step twice
    # between steps the first length only (the curve), every length at each invocation's last step
    assert [(r["step"], r["len"]) for r in read_log(tmp_path / "half", "eval")] == [
        (3, T), (4, T), (4, 2 * T), (4, 4 * T), (6, T), (8, T), (8, 2 * T), (8, 4 * T)]
    a, b = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # --eval-only on the checkpoint reproduces the run's final validation numbers
    ev = run("--eval-only", "--resume", tmp_path / "full" / "ckpt.pt", "--device", "cpu")
    assert ev["val"] == full["val"]


def test_torchrun_two_processes_match_one(tmp_path):
    """2 gloo processes with micro-batch 2 == 1 process with micro-batch 4: the same global batch."""
    data = make_data(tmp_path / "data")
    common = TINY + ["--data", data, "--max-steps", 2, "--total-batch", 4 * T]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "train.py",
           *map(str, common), "--micro-batch", "2", "--out-dir", str(tmp_path / "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "x 2 process(es)" in proc.stdout
    run(*common, "--micro-batch", 4, "--out-dir", tmp_path / "one")
    ddp, one = read_log(tmp_path / "ddp"), read_log(tmp_path / "one")
    assert ddp[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    assert ddp[1]["loss"] == pytest.approx(one[1]["loss"], rel=1e-4)
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_grad_accumulation_equals_big_batch(tmp_path):
    """4 micro-steps of 2 sequences == 1 step of 8 sequences: same loss, same updated weights."""
    data = make_data(tmp_path / "data")
    common = TINY + ["--data", data, "--max-steps", 1, "--total-batch", 8 * T, "--data-order", "sequential"]
    acc = run(*common, "--micro-batch", 2, "--out-dir", tmp_path / "acc")
    big = run(*common, "--micro-batch", 8, "--out-dir", tmp_path / "big")
    assert acc["grad_accum_steps"] == 4 and big["grad_accum_steps"] == 1
    assert acc["losses"][0] == pytest.approx(big["losses"][0], rel=1e-6)
    assert read_log(tmp_path / "acc")[0]["grad_norm"] == pytest.approx(read_log(tmp_path / "big")[0]["grad_norm"], rel=1e-5)
    a, b = weights(tmp_path / "acc"), weights(tmp_path / "big")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_recipe_of_the_paper():
    """gpt-tiny's settings are the paper's, and accumulation makes up 524,288 tokens per update."""
    args, _, _ = train.resolve_args(["--preset", "gpt-tiny"])
    assert (args.total_batch, args.micro_batch, args.lr, args.warmup_steps, args.max_steps) == \
        (524288, 64, 6e-4, 750, 19073)
    assert (args.beta1, args.beta2, args.eps, args.weight_decay, args.grad_clip) == (0.9, 0.95, 1e-8, 0.1, 1.0)
    assert 524288 // (args.micro_batch * 512 * 2) == 8  # accumulation steps on 2 GPUs
    args.min_lr, args.lr_decay_steps = args.lr / 10, args.max_steps
    assert train.get_lr(0, args) == pytest.approx(6e-4 / 750)
    assert train.get_lr(749, args) == pytest.approx(6e-4)
    assert train.get_lr(19072, args) == pytest.approx(6e-5, rel=1e-3)
    assert train.resolve_args(["--preset", "gpt-small"])[0].micro_batch == 32


# -----------------------------------------------------------------------------
# One-line errors: SystemExit with a message, raised by train.py itself.

def expect_exit(argv, *words):
    with pytest.raises(SystemExit) as e:
        run(*argv)
    message = e.value.code
    assert isinstance(message, str) and "\n" not in message, message
    for w in words:
        assert w in message, message
    return message


def test_error_no_data(tmp_path):
    expect_exit(TINY + ["--data", tmp_path / "nowhere", "--out-dir", tmp_path / "o"], "prepare_data.py")
    os.makedirs(tmp_path / "empty")
    expect_exit(TINY + ["--data", tmp_path / "empty", "--out-dir", tmp_path / "o"], "prepare_data.py")


def test_error_no_data_from_the_command_line(tmp_path):
    """What a user sees: one line on stderr, no traceback, exit status 1."""
    proc = subprocess.run([sys.executable, "train.py", "--data", str(tmp_path / "nowhere"), "--device", "cpu",
                           "--out-dir", str(tmp_path / "o")],  # not ./out: it may hold the user's own run
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "prepare_data.py" in proc.stderr


def test_error_data_of_another_vocabulary(tmp_path):
    data = make_data(tmp_path / "big_vocab", vocab_size=100_000)
    expect_exit(TINY + ["--data", data, "--out-dir", tmp_path / "o"], "vocabulary of 100000", "--vocab-size")
    data = make_data(tmp_path / "no_manifest", manifest=False, top_token=60_000)  # found in the tokens
    expect_exit(TINY + ["--data", data, "--out-dir", tmp_path / "o"], "token id 60000", f"vocab_size {VOCAB}")


def test_learned_table_limits(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    s = run(*TINY, "--data", data, "--pe", "learned", "--max-steps", 2, "--out-dir", tmp_path / "o")
    assert sorted(s["val"]) == [T]  # 2x and 4x skipped, with a note
    assert f"eval at context {2 * T}, {4 * T} skipped" in capsys.readouterr().out
    ckpt = tmp_path / "o" / "ckpt.pt"
    expect_exit(["--resume", ckpt, "--block-size", 2 * T], "longer than the learned position table", f"({T} positions)")
    expect_exit(["--eval-only", "--resume", ckpt, "--eval-lens", f"{2 * T},{4 * T}"], "learned position table")


def test_error_resume_from_another_config(tmp_path):
    data = make_data(tmp_path / "data")
    run(*TINY, "--data", data, "--max-steps", 1, "--out-dir", tmp_path / "o")
    ckpt = tmp_path / "o" / "ckpt.pt"
    expect_exit(["--resume", ckpt, "--pe", "rope"], "another config", "pe=carope", "pe=rope")
    expect_exit(["--resume", ckpt, "--n-embd", "64"], "another config", "n_embd=32", "n_embd=64")
    expect_exit(["--resume", tmp_path / "missing.pt"], "no such checkpoint")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    expect_exit(["--resume", tmp_path / "junk.pt"], "not a readable checkpoint", "written by train.py")


def test_error_impossible_model_shape(tmp_path):
    data = make_data(tmp_path / "data")
    out = ["--out-dir", tmp_path / "o"]
    expect_exit(TINY + ["--data", data, "--n-embd", "30", "--n-head", "4", *out], "model flags", "not divisible by n_head")
    expect_exit(TINY + ["--data", data, "--n-embd", "30", "--n-head", "2", "--pe", "rope", *out], "head size", "odd")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = make_data(tmp_path / "data")
    forward, calls = carope.GPT.forward, []

    def nan_from_step_3(self, idx, targets=None):  # a loss that blows up at the third step
        logits, loss = forward(self, idx, targets)
        calls.append(1)
        return logits, loss * float("nan") if len(calls) >= 3 and self.training else loss

    monkeypatch.setattr(carope.GPT, "forward", nan_from_step_3)
    out = tmp_path / "o"
    expect_exit(TINY + ["--data", data, "--max-steps", 5, "--ckpt-every", 2, "--out-dir", out],
                "step 3", "nan", "last good checkpoint", "(step 2)")
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 2


def test_error_bad_flags_leave_an_existing_run_untouched(tmp_path):
    """Each bad value is one line naming the flag, and the run already in --out-dir keeps every byte."""
    data = make_data(tmp_path / "data")
    out = tmp_path / "o"
    run(*TINY, "--data", data, "--max-steps", 2, "--out-dir", out)
    before = {f: (out / f).read_bytes() for f in train.RUN_FILES}
    (tmp_path / "afile").write_text("x")
    cases = [(["--micro-batch", "0"], "--micro-batch 0"), (["--micro-batch", "-1"], "--micro-batch -1"),
             (["--block-size", "0"], "--block-size 0"), (["--lr", "nan"], "--lr nan"), (["--lr", "-1"], "--lr -1"),
             (["--log-every", "0"], "--log-every 0"), (["--dropout", "2"], "--dropout 2"),
             (["--seed", "-1"], "--seed -1"), (["--device", "tpu"], "--device tpu"),
             (["--max-steps", "0"], "--max-steps 0"), (["--val-tokens", "0"], "--val-tokens 0"),
             (["--eval-every", "-1"], "--eval-every -1"), (["--ckpt-every", "-2"], "--ckpt-every -2"),
             (["--warmup-steps", "-1"], "--warmup-steps -1"), (["--total-batch", "0"], "--total-batch 0"),
             (["--num-samples", "-1"], "--num-samples -1"), (["--sample-tokens", "-5"], "--sample-tokens -5"),
             (["--grad-clip", "inf"], "--grad-clip inf"), (["--weight-decay", "-0.1"], "--weight-decay -0.1"),
             (["--beta1", "1"], "--beta1 1"), (["--beta2", "-0.5"], "--beta2 -0.5"), (["--eps", "0"], "--eps 0"),
             (["--val-tokens", "10"], "--val-tokens 10", "raise --val-tokens"),  # fewer than one 64-token window
             (["--data", tmp_path / "nowhere"], "prepare_data.py"),
             (["--n-embd", "30", "--n-head", "4"], "model flags")]
    for extra, *words in cases:
        expect_exit(TINY + ["--data", data, "--out-dir", out, "--overwrite"] + extra, *words)
    expect_exit(TINY + ["--data", data, "--out-dir", tmp_path / "afile"], "is a file", "another --out-dir")
    expect_exit(TINY + ["--data", data, "--out-dir", tmp_path / "afile" / "sub"], "is a file")
    assert {f: (out / f).read_bytes() for f in train.RUN_FILES} == before


def test_error_read_only_out_dir(tmp_path, monkeypatch):
    """Caught before setup (as root, chmod cannot make a folder read-only: os.access is what train.py asks)."""
    data = make_data(tmp_path / "data")
    real_access = os.access
    monkeypatch.setattr(train.os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    expect_exit(TINY + ["--data", data, "--max-steps", 1, "--out-dir", tmp_path / "new"],
                f"cannot write in {tmp_path}", "another --out-dir")
    assert not (tmp_path / "new").exists()


def test_new_run_refuses_a_folder_with_a_run_unless_overwrite(tmp_path):
    data = make_data(tmp_path / "data")
    out = tmp_path / "o"
    run(*TINY, "--data", data, "--max-steps", 3, "--out-dir", out)
    before = {f: (out / f).read_bytes() for f in train.RUN_FILES}
    expect_exit(TINY + ["--data", data, "--max-steps", 2, "--out-dir", out],
                str(out), f"--resume {out / 'ckpt.pt'}", "--overwrite", "another --out-dir")
    assert {f: (out / f).read_bytes() for f in train.RUN_FILES} == before
    run(*TINY, "--data", data, "--max-steps", 2, "--seed", 7, "--out-dir", out, "--overwrite")
    assert [r["step"] for r in read_log(out)] == [1, 2]  # the old run's log is gone, not merged
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 2
    assert json.loads((out / "config.json").read_text())["args"]["seed"] == 7


def test_resume_writes_next_to_its_checkpoint(tmp_path):
    """--resume DIR/ckpt.pt continues in DIR even when the run was made elsewhere; --out-dir wins."""
    data = make_data(tmp_path / "data")
    run(*TINY, "--data", data, "--max-steps", 2, "--lr-decay-steps", 4, "--out-dir", tmp_path / "first")
    os.rename(tmp_path / "first", tmp_path / "moved")
    os.makedirs(tmp_path / "first")  # the folder recorded in the checkpoint, now someone else's
    s = run("--resume", tmp_path / "moved" / "ckpt.pt", "--max-steps", 3, "--device", "cpu")
    assert s["out_dir"] == str(tmp_path / "moved") and os.listdir(tmp_path / "first") == []
    assert [r["step"] for r in read_log(tmp_path / "moved")] == [1, 2, 3]
    s = run("--resume", tmp_path / "moved" / "ckpt.pt", "--max-steps", 4, "--out-dir", tmp_path / "branch")
    assert [r["step"] for r in read_log(tmp_path / "branch")] == [1, 2, 3, 4]  # the history comes along
    assert [r["step"] for r in read_log(tmp_path / "moved")] == [1, 2, 3]
    # resuming into a folder that holds another run needs --overwrite, like a new run
    expect_exit(["--resume", tmp_path / "moved" / "ckpt.pt", "--max-steps", 5, "--out-dir", tmp_path / "branch"],
                "already holds a run", "--overwrite")


def test_resume_drops_a_torn_last_log_line_only(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    out = tmp_path / "o"
    run(*TINY, "--data", data, "--max-steps", 3, "--lr-decay-steps", 5, "--out-dir", out)
    good = (out / "log.jsonl").read_text()
    (out / "log.jsonl").write_text(good + '{"type": "train", "step": 4, "lo')  # a write cut short
    run("--resume", out / "ckpt.pt", "--max-steps", 5, "--device", "cpu")
    assert "dropped its last line" in capsys.readouterr().out
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4, 5]
    lines = good.splitlines()
    (out / "log.jsonl").write_text("\n".join(lines[:1] + ["{garbage"] + lines[1:]) + "\n")
    expect_exit(["--resume", out / "ckpt.pt", "--max-steps", 6], str(out / "log.jsonl"), "line 2 of")


def test_ctrl_c_saves_the_last_step_and_resume_is_exact(tmp_path):
    """SIGINT mid-run: exit 130, one line with the command to resume; that command continues bit for bit."""
    data = make_data(tmp_path / "data")
    common = TINY + ["--data", data, "--dropout", "0.1", "--data-order", "random", "--eval-every", "5",
                     "--max-steps", "150"]
    out = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 1 thread here too (below): the same float sums
    proc = subprocess.Popen([sys.executable, "train.py", *map(str, common), "--out-dir", str(out)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (out / "log.jsonl").exists() and (out / "log.jsonl").read_text().count('"train"') >= 4:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    saved = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert 4 <= saved < 150 and f"step {saved} is saved in {out / 'ckpt.pt'}" in line, line
    assert [r["step"] for r in read_log(out)] == list(range(1, saved + 1))
    command = shlex.split(line.split("continue with: ")[1])
    assert command[:2] == ["python", "train.py"] and command[2:4] == ["--resume", str(out / "ckpt.pt")], command
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rest = run(*command[2:], "--device", "cpu")
        full = run(*common, "--out-dir", tmp_path / "full")
    finally:
        torch.set_num_threads(threads)
    assert rest["start_step"] == saved
    assert [r["loss"] for r in read_log(out)] == full["losses"]
    assert read_log(out, "eval") == read_log(tmp_path / "full", "eval")
    a, b = weights(out), weights(tmp_path / "full")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_edited_and_old_checkpoints(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    run(*TINY, "--data", data, "--max-steps", 2, "--lr-decay-steps", 4, "--out-dir", tmp_path / "o")
    path = tmp_path / "o" / "ckpt.pt"
    good = path.read_bytes()
    # flip bytes inside a weight's data: torch.load reads it without complaint, the checksum does not match
    w = torch.load(path, weights_only=True)["model"]["lm_head.weight"].numpy().tobytes()
    at = good.index(w[:64]) + 100
    path.write_bytes(good[:at] + bytes(b ^ 0xFF for b in good[at:at + 16]) + good[at + 16:])
    torch.load(path, weights_only=True)
    expect_exit(["--resume", path, "--max-steps", 4], str(path), "checksum mismatch")
    expect_exit(["--eval-only", "--resume", path], "checksum mismatch")
    # a checkpoint from before checksums: loaded with a note
    state = torch.load(io.BytesIO(good), weights_only=True)
    del state["sha256"]
    torch.save(state, path)
    capsys.readouterr()
    run("--resume", path, "--max-steps", 3, "--device", "cpu")
    assert "has no checksum" in capsys.readouterr().out
    # an edited config with the checksum kept is corrupt; without it, the weights do not fit: one line each
    state["model_config"]["n_layer"] = 2
    torch.save({**state, "sha256": "0" * 64}, path)
    expect_exit(["--resume", path, "--max-steps", 4], "checksum mismatch")
    torch.save(state, path)
    expect_exit(["--resume", path, "--max-steps", 4], str(path), "does not fit its model_config")


TORN = [  # a checkpoint without a checksum whose fields have types train.py never writes
    (dict(step="x"), "its 'step' is 'x', not a step >= 0"), (dict(step=-1), "'step' is -1"),
    (dict(step=True), "'step' is True"), (dict(model_config=[1, 2]), "'model_config' is [1, 2], not a dict"),
    (dict(train_args="lr=1"), "'train_args' is 'lr=1'"), (dict(optimizer=5), "'optimizer' is 5, not a dict"),
    (dict(rng=None), "'rng' is None"), (dict(model={"w": "abc"}), "'model' holds entries that are not named tensors"),
]


@pytest.mark.parametrize("edit, words", TORN, ids=[w for _, w in TORN])
def test_an_unverified_checkpoint_of_wrong_types_is_one_line_naming_it(tmp_path, edit, words):
    path = tmp_path / "ckpt.pt"
    torch.save({**dict(model={"w": torch.zeros(2)}, model_config={}, train_args={}, step=3, optimizer={}, rng={}),
                **edit}, path)
    for flag in ("--resume", "--ckpt"):
        with pytest.raises(SystemExit) as e:
            train.checkpoints.load_checkpoint(str(path), flag=flag)
        assert e.value.code.startswith(f"{flag} {path}: its ") and words in e.value.code and "\n" not in e.value.code


def test_an_unverified_checkpoint_of_a_wrong_config_or_rng_is_one_line(tmp_path):
    """Fields of the right type holding wrong ones: the model config's values, the RNG states (a resume)."""
    data = make_data(tmp_path / "data")
    run(*TINY, "--data", data, "--max-steps", 1, "--out-dir", tmp_path / "o")
    path = tmp_path / "o" / "ckpt.pt"
    good = torch.load(path, weights_only=True)
    del good["sha256"]
    torch.save({**good, "model_config": {**good["model_config"], "n_layer": "x"}}, path)
    expect_exit(["--resume", path, "--max-steps", 2], str(path), "its model_config is not one train.py writes",
                "n_layer='x'")
    torch.save({**good, "rng": {**good["rng"], "torch": "seed 1"}}, path)
    expect_exit(["--resume", path, "--max-steps", 2], str(path), "RNG states", "edited or is damaged")
    torch.save({k: v for k, v in good.items() if k != "optimizer"}, path)  # no optimizer: evaluated, not continued
    expect_exit(["--resume", path, "--max-steps", 2], str(path), "holds no saved AdamW state", "--eval-only")
    assert run("--eval-only", "--resume", path, "--device", "cpu")["step"] == 1


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    data = make_data(tmp_path / "data")
    out = tmp_path / "o"
    save, calls = torch.save, []

    def fails_the_second_time(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", fails_the_second_time)
    expect_exit(TINY + ["--data", data, "--max-steps", 6, "--ckpt-every", 2, "--out-dir", out],
                f"disk full: cannot write {out}", "No space left", "(step 2)")
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 2
    assert sorted(os.listdir(out)) == [".lock", "ckpt.pt", "config.json", "log.jsonl"]  # no temp file left


def test_error_sequential_resume_on_shorter_data(tmp_path):
    data = make_data(tmp_path / "data")
    run(*TINY, "--data", data, "--max-steps", 3, "--lr-decay-steps", 5, "--data-order", "sequential",
        "--out-dir", tmp_path / "o")  # the loader is at token 3 x 4 x 16 = 192 of its shard
    short = make_data(tmp_path / "short", n_train=150)
    ckpt = tmp_path / "o" / "ckpt.pt"
    expect_exit(["--resume", ckpt, "--max-steps", 5, "--data", short], "20,000 train tokens", "150 train tokens")
    from support import checkpoints  # a checkpoint from before the data's size was saved: the position tells
    old = checkpoints.load_checkpoint(str(ckpt))
    old["train_args"] = {k: v for k, v in old["train_args"].items() if k not in ("data_tokens", "data_sha256")}
    checkpoints.save_checkpoint(ckpt, old)
    expect_exit(["--resume", ckpt, "--max-steps", 5, "--data", short],
                "token 192", "past the end", "--data-order random")


def test_error_text_files_instead_of_shards(tmp_path):
    os.makedirs(tmp_path / "corpus")
    (tmp_path / "corpus" / "book.txt").write_text("In the beginning")
    message = expect_exit(TINY + ["--data", tmp_path / "corpus", "--out-dir", tmp_path / "o"], "not token shards")
    assert f"python prepare_data.py --input {tmp_path / 'corpus'}/*.txt --out-dir " in message
    assert not (tmp_path / "o").exists()


def test_stale_temp_files_are_removed_at_start(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    os.makedirs(tmp_path / "o")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "o" / f"ckpt.pt.{files.TEMP_TAG}-{int(dead.stdout)}.tmp"  # a pid whose process has exited
    theirs = tmp_path / "o" / f"thesis.{int(dead.stdout)}.tmp"  # not ours: kept
    theirs.write_bytes(b"a user's file")
    stale.write_bytes(b"half a checkpoint")
    run(*TINY, "--data", data, "--max-steps", 1, "--out-dir", tmp_path / "o")
    assert not stale.exists() and "removed 1 temp file(s)" in capsys.readouterr().out and theirs.exists()


def test_evaluate_matches_a_hand_computation():
    """evaluate() == the mean cross-entropy of each window's logits against the NEXT tokens, at several lengths."""
    torch.manual_seed(0)
    model = carope.GPT(carope.GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=VOCAB))
    lens = [4, 8, 12]
    tokens = torch.randint(0, VOCAB, (48 + 1,))
    for per_forward in (8, 24, 1000):  # batches of 1..several windows must not change the mean
        got = train.evaluate(model, tokens, lens, per_forward, "cpu", nullcontext(), 0, 1)
        for L in lens:
            total, n = 0.0, 0
            with torch.no_grad():
                for start in range(0, 48, L):
                    logits, _ = model(tokens[start:start + L][None])
                    target = tokens[start + 1:start + L + 1]
                    total += torch.nn.functional.cross_entropy(logits[0], target, reduction="sum").item()
                    n += L
            assert got[L]["loss"] == pytest.approx(total / n, rel=1e-5), (L, per_forward)
            assert got[L]["ppl"] == pytest.approx(np.exp(total / n), rel=1e-5)


@pytest.mark.parametrize("where, saved", [("forward", 6), ("evaluate", 5), ("optimizer", 3)])
def test_interrupt_anywhere_in_a_step_resumes_exactly(tmp_path, monkeypatch, capsys, ctrl_c_in_this_process, where,
                                                      saved):
    """Ctrl-C in a forward pass (step 7 half done), in an evaluation (after step 5), or as a real SIGINT
    during the update of step 3 (held until that step and its log line are done): the checkpoint is the
    last completed step, and resuming it gives the uninterrupted run's log and weights."""
    data = make_data(tmp_path / "data")
    common = TINY + ["--data", data, "--dropout", "0.1", "--data-order", "random", "--eval-every", 5,
                     "--max-steps", 8]
    full = run(*common, "--out-dir", tmp_path / "full")
    calls = []
    if where == "forward":
        forward = carope.GPT.forward

        def cut(self, *a, **k):
            calls.append(self.training)
            if calls.count(True) == 7 and self.training:
                raise KeyboardInterrupt
            return forward(self, *a, **k)
        monkeypatch.setattr(carope.GPT, "forward", cut)
    elif where == "evaluate":
        def cut(*a, **k):
            raise KeyboardInterrupt
        monkeypatch.setattr(train, "evaluate", cut)
    else:
        step = torch.optim.AdamW.step

        def cut(self, *a, **k):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return step(self, *a, **k)
        monkeypatch.setattr(torch.optim.AdamW, "step", cut)
    with pytest.raises(SystemExit) as e:
        run(*common, "--out-dir", tmp_path / "cut")
    assert e.value.code == 130
    assert f"step {saved} is saved" in capsys.readouterr().err
    monkeypatch.undo()
    assert torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)["step"] == saved
    rest = run("--resume", tmp_path / "cut" / "ckpt.pt", "--device", "cpu")
    assert rest["start_step"] == saved and rest["val"] == full["val"]
    assert [r["loss"] for r in read_log(tmp_path / "cut")] == full["losses"]
    assert read_log(tmp_path / "cut", "eval") == read_log(tmp_path / "full", "eval")
    a, b = weights(tmp_path / "cut"), weights(tmp_path / "full")
    assert all(torch.equal(a[k], b[k]) for k in a)


# -----------------------------------------------------------------------------
# Tokenizers, bits per byte, loss by position

@pytest.mark.parametrize("name", ["gpt2", "bytes"])
def test_bits_per_byte_and_loss_by_position_match_a_hand_loop(name):
    """bpb = the summed token losses (nats) / the UTF-8 bytes those target tokens decode to / ln 2, and the
    loss at each position = the mean over windows of that position's cross-entropy, by hand; with one window
    to a forward pass and with three (the loss of several windows comes back as one flat (rows * T,) tensor)."""
    tok = tokenizer.get_tokenizer(name)
    ids = [tok.eot] + tok.encode("In the beginning God created the heaven and the earth. Über naïve café, "
                                 "and the earth was without form, and void; and darkness was upon the deep. " * 2)
    V = -(-tok.vocab_size // 64) * 64
    tokens = torch.tensor(ids[:49])
    torch.manual_seed(0)
    model = carope.GPT(carope.GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=V))
    table = np.pad(tok.token_bytes(), (0, V - tok.vocab_size))
    got = train.evaluate(model, tokens, [4, 8, 16], 16, "cpu", nullcontext(), 0, 1, table, 16)
    several = train.evaluate(model, tokens, [16], 48, "cpu", nullcontext(), 0, 1, table, 16)  # 3 windows a forward
    n_bytes = len(tok.decode(ids[1:49]).encode("utf-8"))  # the targets' own text, the delimiter spells nothing
    for T in (4, 8, 16):
        nats, at = 0.0, torch.zeros(T)
        with torch.no_grad():
            for start in range(0, 48, T):
                logits, _ = model(tokens[start:start + T][None])
                loss = torch.nn.functional.cross_entropy(logits[0], tokens[start + 1:start + T + 1], reduction="none")
                nats, at = nats + loss.sum().item(), at + loss
        assert got[T]["bpb"] == pytest.approx(nats / n_bytes / math.log(2), rel=1e-5)
        assert ("by_position" in got[T]) == (T == 16)
    assert got[16]["by_position"] == pytest.approx((at / 3).tolist(), rel=1e-5)
    assert several[16]["by_position"] == pytest.approx((at / 3).tolist(), rel=1e-5)


def test_the_manifests_tokenizer_sizes_the_model_and_a_mismatch_is_one_line(tmp_path):
    data = make_data(tmp_path / "bytes", vocab_size=257)
    manifest = json.loads((tmp_path / "bytes" / "manifest.json").read_text())
    (tmp_path / "bytes" / "manifest.json").write_text(json.dumps(dict(manifest, tokenizer="bytes")))
    small = [a for a in TINY if a not in ("--vocab-size", str(VOCAB))]
    s = run(*small, "--data", data, "--max-steps", 1, "--out-dir", tmp_path / "o")
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["model"]["vocab_size"] == 320 and config["args"]["tokenizer"] == "bytes"  # 257 padded to 64s
    assert "bpb" in s["val"][T]
    other = make_data(tmp_path / "gpt2")  # its manifest says gpt2
    expect_exit(small + ["--data", other, "--tokenizer", "bytes", "--out-dir", tmp_path / "p"],
                "holds gpt2 tokens", "--tokenizer asks for bytes")
    expect_exit(["--resume", tmp_path / "o" / "ckpt.pt", "--data", other, "--max-steps", 2],
                "holds gpt2 tokens", "was trained on bytes tokens")


def test_one_writer_per_folder_and_sigterm_saves_like_ctrl_c(tmp_path):
    """A second train.py into a folder that a running one writes is refused in one line naming that pid;
    SIGTERM (a scheduler, `timeout`) then saves the running one's last step, exit 143, and it resumes."""
    data = make_data(tmp_path / "data")
    out = tmp_path / "o"
    argv = [sys.executable, "train.py", *map(str, TINY), "--data", data, "--max-steps", "100000", "--out-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=default_signals)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            if (out / "log.jsonl").exists() and (out / "log.jsonl").read_text().count('"train"') >= 3:
                break
            time.sleep(0.01)
        second = subprocess.run(argv + ["--overwrite"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"{out} is in use by another train.py (pid {first.pid})" in second.stderr
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 143, err
    saved = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert f"interrupted (SIGTERM): step {saved} is saved" in err and saved >= 3
    rest = run("--resume", out / "ckpt.pt", "--max-steps", saved + 2, "--device", "cpu")
    assert rest["start_step"] == saved and [r["step"] for r in read_log(out)] == list(range(1, saved + 3))


TASK_TINY = ["--task", "flip-flop", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--micro-batch", "4",
             "--warmup-steps", "2", "--device", "cpu"]  # the default samples: none for a task


def test_a_task_trains_through_the_same_loop_and_resumes_exactly(tmp_path):
    """--task draws its batches on the fly (tasks.Loader) and reports accuracy at the task's lengths;
    its generator's state is part of the checkpoint, so a resumed run continues the same."""
    full = run(*TASK_TINY, "--max-steps", 6, "--out-dir", tmp_path / "full")
    assert sorted(full["val"]) == [64, 128, 256] and all(0 <= r["acc"] <= 1 for r in full["val"].values())
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert config["model"]["vocab_size"] == 5 and config["model"]["block_size"] == 64  # the task's own
    run(*TASK_TINY, "--max-steps", 3, "--lr-decay-steps", 6, "--out-dir", tmp_path / "half")
    rest = run("--resume", tmp_path / "half" / "ckpt.pt", "--max-steps", 6, "--device", "cpu")
    assert [r["loss"] for r in read_log(tmp_path / "half")] == full["losses"] and rest["val"] == full["val"]


def test_a_task_option_is_part_of_the_run_and_a_bad_one_writes_nothing(tmp_path):
    """--task-option reaches the generator (a share of ignores of 0 leaves a read or a write at every pair,
    so there are more answers to score), is kept by the checkpoint, and a bad value exits in one line
    before the run's folder exists."""
    dense = run(*TASK_TINY, "--task-option", "p_i=0", "--max-steps", 2, "--out-dir", tmp_path / "dense")
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert config["args"]["task_option"] == ["p_i=0"]
    rest = run("--resume", tmp_path / "dense" / "ckpt.pt", "--max-steps", 3, "--device", "cpu")
    assert rest["val"] != run(*TASK_TINY, "--max-steps", 3, "--out-dir", tmp_path / "sparse")["val"]
    assert json.loads((tmp_path / "dense" / "config.json").read_text())["args"]["task_option"] == ["p_i=0"]
    expect_exit(TASK_TINY + ["--task-option", "p_i=2", "--out-dir", tmp_path / "bad"], "p_i=2.0", "[0, 1)")
    assert not (tmp_path / "bad").exists()


def test_ranks_read_disjoint_windows_whose_union_is_the_sequential_stream():
    """Sequential order under DDP: rank r reads the r-th B*T block of each world*B*T chunk, so the ranks'
    windows never overlap and together are exactly what one process with world*B rows reads."""
    stream = np.arange(10_000, dtype=np.uint16)
    B, T, world = 2, 8, 3
    one = train.TokenLoader([stream], ["s"], world * B, T, 0, 1, "sequential", 0, 2**16)
    ranks = [train.TokenLoader([stream], ["s"], B, T, r, world, "sequential", 0, 2**16) for r in range(world)]
    for _ in range(5):
        x_one, y_one = one.next_batch()
        xs, ys = zip(*(loader.next_batch() for loader in ranks))
        assert torch.equal(torch.cat(xs), x_one) and torch.equal(torch.cat(ys), y_one)
        starts = [int(x[0, 0]) for x in xs]
        assert len(set(starts)) == world and torch.equal(ys[0], xs[0] + 1)


def test_resume_on_fewer_gpus_restores_the_cuda_states_that_fit(monkeypatch, capsys):
    """A checkpoint saved with 2 GPUs visible, resumed where 1 is: the first state is restored, with a note
    (torch.cuda.set_rng_state_all would raise IndexError)."""
    from support import checkpoints
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, i: restored.append((i, state)))
    loader = train.TokenLoader([np.arange(1000, dtype=np.uint16)], ["s"], 2, 8, 0, 1, "random", 0, 2**16)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([1]), torch.tensor([2])])
    states = checkpoints.rng_states(loader)
    checkpoints.restore_rng_states(states, loader)
    assert [(i, int(s)) for i, s in restored] == [(0, 1)]
    assert "holds 2 CUDA RNG states, 1 GPU(s) are visible" in capsys.readouterr().out


def test_what_a_failure_is_called(tmp_path, monkeypatch):
    """An empty --out-dir is named as such; a mistyped --data says that its suggested command downloads
    FineWeb-Edu; torch.save's own RuntimeError on a full disk is a disk error, in one line."""
    data = make_data(tmp_path / "data")
    expect_exit(TINY + ["--data", data, "--out-dir", ""], "--out-dir '': an empty name")
    expect_exit(["--resume", ""], "--resume '': no such checkpoint file")  # not a fresh run in silence
    expect_exit(TINY + ["--data", tmp_path / "dta", "--out-dir", tmp_path / "o"], "~30 GB download", "--input FILES")

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: file write failed")
    monkeypatch.setattr(torch, "save", full)
    expect_exit(TINY + ["--data", data, "--max-steps", 2, "--out-dir", tmp_path / "p"], "disk full / cannot write",
                "file write failed", "no checkpoint was saved yet")


# -----------------------------------------------------------------------------
# A run beside the committed sweep of its recipe (train.COMMITTED, sweeps.beside_sweep): a fake sweep in tmp_path

def fake_sweep(root, config_path, figures):
    """A compare.py folder whose runs recorded the config.json at config_path (with their pe and seed), and whose
    results.json holds figures: {(pe, seed): {T: bits per byte}}."""
    with open(config_path) as f:
        config = json.load(f)
    for (pe, seed) in figures:
        run_config = json.loads(json.dumps(config))
        run_config["args"].update(pe=pe, seed=seed, out_dir=f"{root}/{pe}-s{seed}")
        run_config["model"]["pe"] = pe
        os.makedirs(root / f"{pe}-s{seed}", exist_ok=True)
        (root / f"{pe}-s{seed}" / "config.json").write_text(json.dumps(run_config))
    results = [dict(pe=pe, seed=seed, val={str(T): dict(loss=1.0, bpb=v) for T, v in by_len.items()})
               for (pe, seed), by_len in figures.items()]
    (root / "results.json").write_text(json.dumps(dict(runs=results)))
    return root


def test_a_run_of_the_sweeps_recipe_ends_beside_its_figures_and_another_recipe_does_not(tmp_path, monkeypatch,
                                                                                         capsys):
    data, sweep = make_data(tmp_path / "data"), tmp_path / "sweep"
    monkeypatch.setattr(train, "COMMITTED", dict(nano=str(sweep), task=str(sweep)))
    common = TINY + ["--data", data, "--max-steps", 3]
    first = run(*common, "--out-dir", tmp_path / "first")  # the sweep is not there yet: one line, no traceback
    printed = capsys.readouterr().out
    why = "its committed figures cannot be read (No such file or directory), so none are shown"
    assert [line for line in printed.splitlines() if "committed" in line] == [f"{sweeps.display_path(sweep)}: {why}"]
    rng = np.random.default_rng(7)  # figures nobody could type in
    figures = {(pe, seed): {L: float(rng.uniform(1, 5)) for L in (T, 2 * T, 4 * T)}
               for pe in ("rope", "carope", "nope") for seed in (1, 2, 3)}
    fake_sweep(sweep, tmp_path / "first" / "config.json", figures)

    # the same recipe: another seed, more logging and evaluation change no figure of the recipe
    s = run(*common, "--seed", 5, "--eval-every", 2, "--log-every", 2, "--out-dir", tmp_path / "same")
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("bits per byte")) + 1
    assert "this run (seed 5) beside the committed sweep" in lines[at - 1]
    assert lines[at].startswith(f"{sweeps.display_path(sweep)}/results.json (mean [min-max]")
    assert lines[at + 1].split() == ["context", "this", "run:", "carope", "rope,", "seeds", "1-3", "carope,", "seeds",
                                     "1-3"]  # nope is not shown: neither RoPE, CARoPE nor this run's encoding
    for row, L in zip(lines[at + 2:at + 5], (T, 2 * T, 4 * T)):
        cells = [f"{L}", f"({L // T}x)", f"{s['val'][L]['bpb']:.3f}"]
        for pe in ("rope", "carope"):
            v = [figures[pe, seed][L] for seed in (1, 2, 3)]
            cells += [f"{np.mean(v):.3f}", f"[{min(v):.3f}-{max(v):.3f}]"]
        assert row.split() == cells, (row, cells)
    assert not lines[at + 5].strip()  # the table ends there
    assert s["val"] != first["val"]  # seed 5 is a run of its own: its figures are its own, not the first run's

    # this run's encoding is shown too when it is neither rope nor carope
    run(*common, "--pe", "nope", "--out-dir", tmp_path / "nope")
    assert "nope, seeds 1-3" in capsys.readouterr().out

    # another recipe: one line naming the difference, no figure of the sweep
    run(*common[:-1], 4, "--out-dir", tmp_path / "longer")
    printed = capsys.readouterr().out
    assert "this run:" not in printed and f"{figures['rope', 1][T]:.3f}" not in printed.split("validation")[1]
    assert [line for line in printed.splitlines() if "committed" in line] == [
        f"{sweeps.display_path(sweep)}'s committed figures are not shown: that sweep's recipe is another "
        f"(--lr-decay-steps 4 here, 3 there; --max-steps 4 here, 3 there)"]

    # a task run never prints the table nor a line about it
    run(*TASK_TINY, "--max-steps", 2, "--out-dir", tmp_path / "task")
    assert sweeps.display_path(sweep) not in capsys.readouterr().out


def test_a_bad_committed_sweep_is_one_line_and_a_recipe_that_differs_in_one_run_is_refused(tmp_path):
    data = make_data(tmp_path / "data")
    s = run(*TINY, "--data", data, "--max-steps", 2, "--out-dir", tmp_path / "run")
    config = tmp_path / "run" / "config.json"
    figures = {(pe, seed): {T: 2.0, 2 * T: 3.0, 4 * T: 4.0} for pe in ("rope", "carope") for seed in (1, 2)}
    sweep = fake_sweep(tmp_path / "sweep", config, figures)
    assert len(sweeps.beside_sweep(str(sweep), config, s["val"])) == 6  # two lines of heading, the header, 3 lengths
    for text, why in [("{not json", "Expecting property name"), ('{"rows": []}', "no 'runs'"), ("[1, 2]", "list"),
                      ('{"runs": [{"pe": "rope", "seed": 1, "val": {}}]}', "no '16'"),
                      ('{"runs": [{"pe": "rope", "seed": 1, "val": {"16": {"bpb": null}}}]}', "None, not a number"),
                      ('{"runs": [{"pe": "rope", "seed": 1, "val": {"16": {"bpb": NaN}}}]}', "nan, not a number"),
                      ('{"runs": [{"pe": "alibi", "seed": 1}]}', "holds no run of rope or carope")]:
        (sweep / "results.json").write_text(text)
        lines = sweeps.beside_sweep(str(sweep), config, s["val"])
        assert len(lines) == 1 and why in lines[0] and "\n" not in lines[0], (text, lines)
    fake_sweep(sweep, config, figures)
    edited = json.loads((sweep / "carope-s2" / "config.json").read_text())
    edited["args"]["lr"] = 0.5  # one run of the sweep trained otherwise: none of its figures compare
    (sweep / "carope-s2" / "config.json").write_text(json.dumps(edited))
    lines = sweeps.beside_sweep(str(sweep), config, s["val"])
    assert len(lines) == 1 and "--lr 0.0015 here, 0.5 there" in lines[0]
    (sweep / "carope-s2" / "config.json").unlink()
    lines = sweeps.beside_sweep(str(sweep), config, s["val"])
    assert len(lines) == 1 and "cannot be read (No such file or directory)" in lines[0]


# -----------------------------------------------------------------------------
# Hardening round 3 (issue 27): no run lost at its last step; resume changes nothing silently; one-line messages.

COPY_TINY = ["--task", "copy", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--micro-batch", "4",
             "--warmup-steps", "2", "--device", "cpu"]


def files_of(out):
    return {f: (out / f).read_bytes() for f in sorted(os.listdir(out)) if f != ".lock"}


def test_a_task_length_a_learned_table_cannot_hold_is_skipped_not_fatal(tmp_path, capsys):
    """copy at 32 is a row of 66 tokens, past a 64-row learned table: skipped with a note (a '-' in compare.py's
    tables), where it used to raise after training, before the final save, so no checkpoint was left."""
    out = tmp_path / "o"
    s = run(*COPY_TINY, "--pe", "learned", "--max-steps", 2, "--out-dir", out)
    assert sorted(s["val"]) == [8, 16] and s["eval_lens"] == [8, 16]
    assert "eval at length 32 (rows of 66 tokens) skipped" in capsys.readouterr().out
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 2


def test_the_last_step_is_saved_before_the_final_evaluation(tmp_path, monkeypatch):
    """An evaluation that fails at the last step (here by a monkeypatch) no longer costs the trained run."""
    data = make_data(tmp_path / "data")

    def broken(*a, **k):
        raise RuntimeError("evaluation broke")
    monkeypatch.setattr(train, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        run(*TINY, "--data", data, "--max-steps", 3, "--out-dir", tmp_path / "o")
    assert torch.load(tmp_path / "o" / "ckpt.pt", weights_only=True)["step"] == 3


def test_a_run_without_a_checkpoint_never_suggests_resuming_one(tmp_path, monkeypatch):
    """Stopped by a NaN at step 2 before any save: its message and the rerun's say there is no checkpoint, and
    the rerun does not name --resume of a ckpt.pt that does not exist."""
    data = make_data(tmp_path / "data")
    forward = carope.GPT.forward
    monkeypatch.setattr(carope.GPT, "forward", lambda self, idx, targets=None: (
        lambda out: (out[0], out[1] * float("nan")) if self.training else out)(forward(self, idx, targets)))
    out = tmp_path / "o"
    expect_exit(TINY + ["--data", data, "--max-steps", 4, "--out-dir", out], "step 1", "no checkpoint was saved yet")
    monkeypatch.setattr(carope.GPT, "forward", forward)
    message = expect_exit(TINY + ["--data", data, "--max-steps", 4, "--out-dir", out], "without a checkpoint",
                          "--overwrite")
    assert "--resume" not in message and not (out / "ckpt.pt").exists()


def test_resume_refuses_another_task_and_eval_only_on_another_task_writes_nothing(tmp_path):
    data = make_data(tmp_path / "data")
    run(*COPY_TINY, "--max-steps", 2, "--out-dir", tmp_path / "copy")
    run(*TINY, "--data", data, "--max-steps", 1, "--out-dir", tmp_path / "lm")
    ckpt, lm = tmp_path / "copy" / "ckpt.pt", tmp_path / "lm" / "ckpt.pt"
    before = files_of(tmp_path / "copy")
    expect_exit(["--resume", ckpt, "--task", "flip-flop", "--max-steps", 4], "checkpoint of --task copy, not flip-flop")
    expect_exit(["--resume", ckpt, "--task", "counting", "--max-steps", 4], "checkpoint of --task copy, not counting")
    expect_exit(["--resume", ckpt, "--task-option", "max_len=4", "--max-steps", 4], "change the task mid-run")
    expect_exit(["--resume", ckpt, "--data", data, "--max-steps", 4], "checkpoint of --task copy", "drop --data")
    expect_exit(["--resume", lm, "--task", "copy", "--max-steps", 4], "language model's checkpoint", "--task copy")
    expect_exit(["--eval-only", "--resume", lm, "--task", "copy"], "language model's checkpoint")
    s = run("--eval-only", "--resume", ckpt, "--task", "flip-flop", "--device", "cpu")
    assert sorted(s["val"]) == [64, 128, 256]  # flip-flop's own lengths, not copy's 8, 16, 32
    expect_exit(["--eval-only", "--resume", ckpt, "--task", "counting"], "reads 30 token ids", "counting has 32")
    assert files_of(tmp_path / "copy") == before


def test_resume_derives_min_lr_and_decay_steps_again_when_their_flag_changes(tmp_path):
    data = make_data(tmp_path / "data")
    run(*TINY, "--data", data, "--lr", "1e-3", "--max-steps", 2, "--out-dir", tmp_path / "o")
    ckpt = tmp_path / "o" / "ckpt.pt"
    args = train.resolve_args(["--resume", str(ckpt), "--lr", "2e-4", "--max-steps", "5"])[0]
    assert (args.lr, args.min_lr, args.lr_decay_steps) == (2e-4, 2e-4 / 10, 5)
    args = train.resolve_args(["--resume", str(ckpt), "--max-steps", "5"])[0]
    assert (args.min_lr, args.lr_decay_steps) == (1e-3 / 10, 5)
    run("--resume", ckpt, "--max-steps", 3, "--device", "cpu")  # lr unchanged: min_lr kept, and still derived
    args = train.resolve_args(["--resume", str(ckpt), "--lr", "2e-4", "--max-steps", "4"])[0]
    assert (args.lr, args.min_lr, args.lr_decay_steps) == (2e-4, 2e-4 / 10, 4)
    run(*TINY, "--data", data, "--min-lr", "5e-5", "--lr-decay-steps", 9, "--max-steps", 2, "--out-dir", tmp_path / "g")
    args = train.resolve_args(["--resume", str(tmp_path / "g" / "ckpt.pt"), "--lr", "2e-4", "--max-steps", "5"])[0]
    assert (args.min_lr, args.lr_decay_steps) == (5e-5, 9)  # given, not derived: kept


def test_a_linked_checkpoint_resumes_in_its_run_folder(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    run(*TINY, "--data", data, "--max-steps", 2, "--lr-decay-steps", 4, "--out-dir", tmp_path / "runs" / "a")
    os.makedirs(tmp_path / "links")
    os.symlink(tmp_path / "runs" / "a" / "ckpt.pt", tmp_path / "links" / "latest.pt")
    s = run("--resume", tmp_path / "links" / "latest.pt", "--max-steps", 4, "--device", "cpu")
    assert s["out_dir"] == str(tmp_path / "runs" / "a") and "is a link to" in capsys.readouterr().out
    assert [r["step"] for r in read_log(tmp_path / "runs" / "a")] == [1, 2, 3, 4]
    assert os.listdir(tmp_path / "links") == ["latest.pt"] and os.path.islink(tmp_path / "links" / "latest.pt")


def test_resume_reads_its_own_data_from_any_folder_and_refuses_other_data(tmp_path, monkeypatch):
    """A relative --data is saved absolute: resumed from another working folder that has a look-alike data/,
    the run's own data is read; other data (--data, or the folder changed) is one line; a missing one too."""
    make_data(tmp_path / "first" / "data")
    monkeypatch.chdir(tmp_path / "first")
    run(*TINY, "--data", "data", "--max-steps", 2, "--lr-decay-steps", 4, "--out-dir", tmp_path / "o")
    make_data(tmp_path / "other" / "data", n_train=30_000)  # the look-alike
    monkeypatch.chdir(tmp_path / "other")
    ckpt = tmp_path / "o" / "ckpt.pt"
    args = train.resolve_args(["--resume", str(ckpt)])[0]
    assert args.data_dir == str(tmp_path / "first" / "data")
    expect_exit(["--resume", ckpt, "--max-steps", 3, "--data", "data"], "20,000 train tokens", "30,000 train tokens",
                "other data")
    run("--resume", ckpt, "--max-steps", 3, "--device", "cpu")
    os.rename(tmp_path / "first" / "data", tmp_path / "first" / "moved")
    expect_exit(["--resume", ckpt, "--max-steps", 4], "was trained on", "not there now", "--data")


def test_the_training_length_is_the_one_trained_at(tmp_path, capsys):
    s = run(*TASK_TINY, "--eval-lens", "32,64", "--max-steps", 1, "--out-dir", tmp_path / "ff")
    printed = capsys.readouterr().out
    assert s["trained_at"] == 64 and "model trained at length 64" in printed and "32 (0.5x)" in printed
    assert run(*COPY_TINY, "--max-steps", 1, "--out-dir", tmp_path / "c")["trained_at"] == 8
    s = run(*COPY_TINY, "--task-option", "max_len=4", "--eval-lens", "2,4,8", "--max-steps", 1,
            "--out-dir", tmp_path / "c4")
    assert s["trained_at"] == 4


def test_compile_on_a_cpu_without_a_cxx_compiler_runs_eagerly_with_a_note(tmp_path, monkeypatch, capsys):
    from torch._inductor import config as inductor_config, cpp_builder
    data = make_data(tmp_path / "data")
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-c++-compiler",))
    cpp_builder.cpp_compiler_search.cache_clear()
    try:
        run(*TINY, "--data", data, "--compile", "--max-steps", 1, "--out-dir", tmp_path / "o")
    finally:
        cpp_builder.cpp_compiler_search.cache_clear()
    assert "compile off (torch.compile on a CPU needs a C++ compiler" in capsys.readouterr().out


@pytest.mark.parametrize("base", ["1", "0.5", "1e-5"])
def test_a_rope_base_of_at_most_one_is_one_line_for_the_rotary_encodings(tmp_path, base):
    data = make_data(tmp_path / "data")
    for pe in ("carope", "rope", "selective"):
        expect_exit(TINY + ["--data", data, "--pe", pe, "--rope-base", base, "--out-dir", tmp_path / "o"],
                    "--rope-base > 1", f"pe={pe!r}")
    assert not (tmp_path / "o").exists()


def test_a_full_disk_under_torch_saves_runtime_error_is_called_disk_full(tmp_path, monkeypatch):
    """torch.save's writer raises RuntimeError('... unexpected pos ...') with the OSError (ENOSPC) chained under
    it: one line saying disk full, and the checkpoint of step 2 is kept."""
    data = make_data(tmp_path / "data")
    out, save, calls = tmp_path / "o", torch.save, []

    def full_the_second_time(obj, f, *a, **k):
        calls.append(1)
        if len(calls) < 2:
            return save(obj, f, *a, **k)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", full_the_second_time)
    expect_exit(TINY + ["--data", data, "--max-steps", 6, "--ckpt-every", 2, "--out-dir", out],
                f"disk full: cannot write {out}", "No space left on device",
                f"last good checkpoint is {out / 'ckpt.pt'} (step 2)")
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 2


def test_flags_that_would_be_ignored_or_blamed_wrongly_are_one_line(tmp_path):
    data = make_data(tmp_path / "data")  # GPT-2 tokens
    out = tmp_path / "o"
    message = expect_exit(["--preset", "bytes", "--data", data, "--out-dir", out], "--preset bytes trains on bytes")
    assert "--tokenizer" not in message.split(":")[0]
    expect_exit(TINY + ["--data", data, "--task-option", "max_len=3", "--out-dir", out], "--task-option", "--task NAME")
    for flags in (["--data", "/nonexistent"], ["--data", data], ["--tokenizer", "bytes"], ["--data-order", "random"],
                  ["--val-tokens", "100"], ["--sample-tokens", "5"]):
        expect_exit(COPY_TINY + flags + ["--max-steps", "1", "--out-dir", out], flags[0],
                    "--task copy draws its own rows")
    run(*TINY, "--data", data, "--max-steps", 1, "--out-dir", tmp_path / "lm")
    before = files_of(tmp_path / "lm")
    for flags in (["--lr", "1e-3"], ["--max-steps", "9"], ["--out-dir", out], ["--seed", "3"]):
        expect_exit(["--eval-only", "--resume", tmp_path / "lm" / "ckpt.pt"] + flags, "--eval-only", flags[0],
                    "change nothing")
    assert files_of(tmp_path / "lm") == before
    (tmp_path / "afile").write_text("x")
    expect_exit(TINY + ["--data", tmp_path / "afile", "--out-dir", out], "is a file, not a folder")
    expect_exit(TINY + ["--data", data, "--lr", "1e38", "--out-dir", out], "--lr 1e+38", "overflows float32")
    message = expect_exit(["--task", "counting", "--task-option", "max_value=20", "--block-size", "66",
                           "--out-dir", out], "test length 64", "--eval-lens")
    assert not message.startswith("tasks: counting: T=64")
    assert not out.exists()


def test_a_bytes_checkpoint_with_another_tokenizer_names_the_tokenizer(tmp_path):
    data = make_data(tmp_path / "data")
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(dict(manifest, tokenizer="bytes", vocab_size=257)))
    run(*TINY, "--data", data, "--vocab-size", 320, "--max-steps", 1, "--out-dir", tmp_path / "o")
    message = expect_exit(["--resume", tmp_path / "o" / "ckpt.pt", "--tokenizer", "gpt2"], "trained on bytes tokens",
                          "drop --tokenizer")
    assert "--vocab-size" not in message


def test_eval_only_task_options_change_the_figures_or_are_refused(tmp_path):
    run(*TASK_TINY, "--max-steps", 1, "--out-dir", tmp_path / "ff")
    expect_exit(["--eval-only", "--resume", tmp_path / "ff" / "ckpt.pt", "--task-option", "p_i=0.5"],
                "test rows set p_i themselves", "p_i=0.98")
    counting = ["--task", "counting", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--device", "cpu"]
    run(*counting, "--max-steps", 1, "--out-dir", tmp_path / "c")
    ckpt = tmp_path / "c" / "ckpt.pt"
    assert run("--eval-only", "--resume", ckpt, "--task-option", "max_value=2", "--device", "cpu")["val"] != \
        run("--eval-only", "--resume", ckpt, "--device", "cpu")["val"]


def test_triton_interpret_on_a_cpu_takes_the_pytorch_path(tmp_path, monkeypatch, capsys):
    """TRITON_INTERPRET=1 left in the environment would run CARoPE's kernel in Triton's interpreter on the CPU
    (about 40x slower a step, measured): train.py takes the PyTorch path and says so; --fused-carope still asks."""
    from support import carope_triton
    data = make_data(tmp_path / "data")
    monkeypatch.setattr(carope_triton, "INTERPRET", True)
    monkeypatch.setattr(carope, "use_fused", lambda q: True)  # as if the kernel had passed its self-check

    def interpreted(*a):
        raise AssertionError("the fused kernel ran on the CPU")
    monkeypatch.setattr(carope, "carope_rotate", interpreted)
    run(*TINY, "--data", data, "--pe", "carope", "--max-steps", 1, "--out-dir", tmp_path / "o")
    assert "TRITON_INTERPRET=1 is set" in capsys.readouterr().out
    args, given, ckpt = train.resolve_args(["--resume", str(tmp_path / "o" / "ckpt.pt")])
    assert ckpt["model_config"]["fused_carope"] is False  # this machine's choice, not inherited by a resume on a GPU
    assert train.model_config(args, given, ckpt).fused_carope is True
    with pytest.raises(AssertionError, match="fused kernel ran"):  # asked for: the kernel
        run(*TINY, "--data", data, "--pe", "carope", "--fused-carope", "--max-steps", 1, "--out-dir", tmp_path / "f")


def test_carope_init_and_tapa_alpha_reach_the_model_and_stay_with_the_checkpoint(tmp_path):
    """--carope-init and --tapa-alpha are model settings: they build the model, the checkpoint keeps
    them (a resumed run, an evaluation and sample.py rebuild the same model), and a resume that asks
    for another value is one line; a bad value is one line before anything is written."""
    data = make_data(tmp_path / "data")
    run(*TINY, "--data", data, "--carope-init", "zero", "--max-steps", 1, "--out-dir", tmp_path / "zero")
    ckpt = torch.load(tmp_path / "zero" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["model_config"]["carope_init"] == "zero"
    args, given, saved = train.resolve_args(["--resume", str(tmp_path / "zero" / "ckpt.pt")])
    assert train.model_config(args, given, saved).carope_init == "zero"
    expect_exit(["--resume", tmp_path / "zero" / "ckpt.pt", "--carope-init", "rope"], "another config",
                "carope_init=zero", "carope_init=rope")
    args, given, saved = train.resolve_args([*TINY, "--data", data, "--carope-init", "zero"])
    model = carope.GPT(train.model_config(args, given, saved))
    assert all(torch.count_nonzero(b.attn.rotary.bias) == 0 for b in model.transformer.h)  # b = 0 at init
    expect_exit(TINY + ["--data", data, "--carope-init", "one", "--out-dir", tmp_path / "bad"], "--carope-init",
                "'one'", "rope", "zero")
    assert not (tmp_path / "bad").exists()

    # --tapa-alpha: the exponent of |m - n| in TAPA's phase; at 1 the same weights score otherwise than at 0.1
    run(*TINY, "--data", data, "--pe", "tapa", "--tapa-alpha", "1", "--max-steps", 1, "--out-dir", tmp_path / "tapa")
    ckpt = torch.load(tmp_path / "tapa" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["model_config"]["tapa_alpha"] == 1.0
    models = {}
    for alpha in ("0.1", "1"):
        args, given, saved = train.resolve_args([*TINY, "--data", data, "--pe", "tapa", "--tapa-alpha", alpha])
        models[alpha] = carope.GPT(train.model_config(args, given, saved)).eval()
        assert models[alpha].transformer.h[0].attn.tapa[1] == float(alpha)
    models["1"].load_state_dict(ckpt["model"])
    models["0.1"].load_state_dict(ckpt["model"])
    idx = torch.randint(0, VOCAB, (2, T))
    with torch.no_grad():
        assert not torch.allclose(models["1"](idx)[0], models["0.1"](idx)[0], rtol=0, atol=1e-4)
    expect_exit(TINY + ["--data", data, "--pe", "tapa", "--tapa-alpha", "-1", "--out-dir", tmp_path / "bad"],
                "--tapa-alpha", ">= 0")


def test_pe_only_says_which_encodings_read_each_setting_as_the_model_does():
    """settings.PE_ONLY, checked against the model: changing the setting changes the logits of exactly the
    encodings it lists (and --rope-base none of a CARoPE that starts from b = 0)."""
    from support import settings
    assert set(settings.PE_ONLY) <= {a.dest for a in train.parser._actions} and set(settings.PE_ONLY) <= set(
        train.MODEL_KEYS)
    assert settings.PE_ONLY["rope_base"] == carope.ROTARY_PE
    other = dict(carope_init="zero", tapa_alpha=1.0, rope_base=500.0)
    idx = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(0))

    def logits(pe, **change):
        torch.manual_seed(0)
        cfg = carope.GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=1, n_head=2, n_embd=16, pe=pe, **change)
        with torch.no_grad():
            return carope.GPT(cfg).eval()(idx)[0]
    for pe in carope.PE_CHOICES:
        base = logits(pe)
        for key, value in other.items():
            assert (not torch.equal(base, logits(pe, **{key: value}))) == (pe in settings.PE_ONLY[key]), (pe, key)
        if pe in settings.PE_ONLY["carope_init"]:
            assert torch.equal(logits(pe, carope_init="zero"), logits(pe, carope_init="zero", rope_base=500.0)), pe


def test_a_flag_the_encoding_does_not_read_is_one_line_but_inherited_values_are_not_refused(tmp_path):
    data = make_data(tmp_path / "data")
    out = tmp_path / "o"
    for flags, words in ((["--pe", "rope", "--carope-init", "zero"], ("--carope-init is read by --pe carope, "
                                                                      "carope-static, carope-embed only",
                                                                      "--pe rope ignores it", "drop --carope-init")),
                         (["--tapa-alpha", "1"], ("--tapa-alpha is read by --pe tapa only", "--pe carope (the default) "
                                                  "ignores it")),
                         (["--pe", "learned", "--rope-base", "500"], ("--rope-base", "--pe learned ignores it")),
                         (["--pe", "carope-embed", "--carope-init", "zero", "--rope-base", "500"],
                          ("--carope-init zero starts from b = 0 and reads no base", "drop --rope-base"))):
        expect_exit(TINY + ["--data", data, "--out-dir", out] + flags, *words)
    assert not out.exists()
    run(*TINY, "--data", data, "--carope-init", "zero", "--max-steps", 1, "--out-dir", tmp_path / "zero")
    run(*TINY, "--data", data, "--pe", "tapa", "--tapa-alpha", "0.5", "--max-steps", 1, "--out-dir", tmp_path / "tapa")
    zero, tapa = tmp_path / "zero" / "ckpt.pt", tmp_path / "tapa" / "ckpt.pt"
    # the checkpoints keep every setting (rope_base, carope_init, tapa_alpha): inherited, none of them is refused
    assert run("--resume", zero, "--max-steps", 2, "--device", "cpu")["start_step"] == 1
    assert run("--resume", tapa, "--max-steps", 2, "--device", "cpu")["start_step"] == 1
    assert run("--eval-only", "--resume", tapa, "--device", "cpu")["pe"] == "tapa"
    assert train.resolve_args(["--resume", str(tapa), "--tapa-alpha", "0.5"])[0].tapa_alpha == 0.5  # its own value
    expect_exit(["--resume", tapa, "--carope-init", "rope"], f"{tapa}, a --pe tapa model, ignores it",
                "drop --carope-init")
    expect_exit(["--eval-only", "--resume", zero, "--rope-base", "10000"], "--carope-init zero", "drop --rope-base")


def test_preset_task_without_a_task_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as e:  # settled with the settings, before any model or data
        train.resolve_args(["--preset", "task", "--out-dir", str(tmp_path / "o")])
    assert e.value.code == "--preset task is the synthetic tasks' recipe: add --task NAME (python tasks.py lists them)"
    assert train.resolve_args(["--preset", "task", "--task", "parity"])[0].n_layer == 2  # with a task: its recipe
    assert not (tmp_path / "o").exists()


def test_resume_refuses_overwrite_in_its_own_folder_and_max_steps_behind_it_before_writing(tmp_path):
    """--overwrite would be ignored by a run resumed in its own folder, and --max-steps below the checkpoint's step
    would print 'steps 4..2' and rewrite config.json: both are one line, and the run keeps every byte. Into another
    folder, --overwrite replaces the run there (a branch); --max-steps at the checkpoint's step has nothing to do."""
    data = make_data(tmp_path / "data")
    out = tmp_path / "o"
    run(*TINY, "--data", data, "--max-steps", 3, "--lr-decay-steps", 6, "--out-dir", out)
    run(*TINY, "--data", data, "--max-steps", 1, "--out-dir", tmp_path / "other")
    ckpt, before = out / "ckpt.pt", files_of(out)
    expect_exit(["--resume", ckpt, "--overwrite", "--max-steps", 4], "--overwrite starts the run", f"--resume {ckpt}",
                "drop --overwrite to continue it")
    expect_exit(["--resume", ckpt, "--max-steps", 2], f"{ckpt} is at step 3, past --max-steps 2",
                "--max-steps 3 or more", "--eval-only")
    assert files_of(out) == before
    assert run("--resume", ckpt, "--max-steps", 3, "--device", "cpu")["losses"] == []  # nothing to train
    s = run("--resume", ckpt, "--max-steps", 4, "--out-dir", tmp_path / "other", "--overwrite", "--device", "cpu")
    assert s["start_step"] == 3 and [r["step"] for r in read_log(tmp_path / "other")] == [1, 2, 3, 4]


def test_min_lr_above_lr_and_a_weight_decay_that_flips_the_weights_are_one_line(tmp_path):
    data = make_data(tmp_path / "data")
    out = ["--data", data, "--out-dir", tmp_path / "o"]
    expect_exit(TINY + out + ["--lr", "1e-3", "--min-lr", "1"], "--min-lr 1 is above --lr 0.001",
                "--min-lr 0.001 or less")
    assert train.resolve_args(TINY + ["--data", data, "--lr", "1e-3", "--min-lr", "1e-3"])[0].min_lr == 1e-3  # flat
    expect_exit(TINY + out + ["--weight-decay", "1e30"], "--weight-decay 1e+30 with --lr 0.0015",
                "flips their sign", "below 1 / lr = 666.667")
    expect_exit(TINY + out + ["--lr", "1e-2", "--weight-decay", "100"], "1 - lr x weight_decay = 0 ")
    assert train.resolve_args(TINY + ["--data", data, "--lr", "1e-2", "--weight-decay", "99"])[0].weight_decay == 99
    assert not (tmp_path / "o").exists()


def test_a_loss_that_is_not_finite_before_any_update_names_the_encodings_flags_not_the_lr(tmp_path):
    data = make_data(tmp_path / "data")
    message = expect_exit(TINY + ["--data", data, "--pe", "tapa", "--tapa-alpha", "1e6", "--out-dir", tmp_path / "o"],
                          "step 1: the loss is nan", "No update came before it", "neither --lr nor --warmup-steps",
                          "with --pe tapa --tapa-alpha 1e+06")
    assert "Try a lower --lr" not in message


def test_resume_of_a_folder_names_its_checkpoint_and_data_under_a_file_is_not_sent_to_prepare_data(tmp_path):
    data = make_data(tmp_path / "data")
    run(*TINY, "--data", data, "--max-steps", 1, "--out-dir", tmp_path / "o")
    expect_exit(["--resume", tmp_path / "o"], f"--resume {tmp_path / 'o'} is a folder, not a checkpoint file",
                f"pass --resume {tmp_path / 'o' / 'ckpt.pt'}")
    expect_exit(["--resume", tmp_path], "is a folder with no ckpt.pt in it")
    (tmp_path / "afile").write_text("x")
    message = expect_exit(TINY + ["--data", tmp_path / "afile" / "sub", "--out-dir", tmp_path / "n"],
                          f"--data {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a file",
                          "no folder can be made under it")
    assert "prepare_data.py --out-dir" not in message and not (tmp_path / "n").exists()
