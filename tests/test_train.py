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
from support import shards  # noqa: E402
from support import tokenizer  # noqa: E402
import train  # noqa: E402

VOCAB = 128
T = 16
# a 1-layer model on a 128-token vocabulary: a step takes milliseconds
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", str(T), "--vocab-size", str(VOCAB),
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


def read_log(out_dir, kind="train"):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["type"] == kind]


def weights(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), map_location="cpu", weights_only=True)["model"]


def run(*args):
    return train.main([str(a) for a in args])


# -----------------------------------------------------------------------------

def test_default_run_end_to_end(tmp_path, capsys):
    """`python train.py` with a step cap and a smaller model: embedded corpus, nano recipe, carope."""
    out = tmp_path / "out"
    s = run("--max-steps", 20, "--n-layer", 2, "--n-embd", 64, "--block-size", 32, "--micro-batch", 8,
            "--warmup-steps", 5, "--val-tokens", 4096, "--sample-tokens", 16, "--out-dir", out)
    printed = capsys.readouterr().out
    assert s["pe"] == "carope" and s["preset"] == "nano" and s["steps"] == 20
    assert len(s["losses"]) == 20 and s["losses"][-1] < s["losses"][0] - 1.0, s["losses"]  # it learns
    assert sorted(s["val"]) == [32, 64, 128]  # 1x, 2x, 4x the training context
    for L in (32, 64, 128):
        assert f"context {L:6d}" in printed and np.isfinite(s["val"][L]["ppl"])
    assert "perplexity" in printed and "prepare_data.py --source fineweb-edu" in printed  # the next step
    assert len(s["samples"]) == 2 and all(isinstance(t, str) for t in s["samples"])
    for name in ("log.jsonl", "ckpt.pt", "config.json"):
        assert (out / name).is_file()
    assert [r["step"] for r in read_log(out)] == list(range(1, 21))
    assert {r["len"] for r in read_log(out, "eval")} == {32, 64, 128}
    record = read_log(out)[0]
    assert {"loss", "lr", "grad_norm", "ms", "tokens_per_s", "mfu"} <= record.keys()
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["pe"] == "carope" and config["args"]["max_steps"] == 20


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
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
                f"disk full / cannot write {out}", "No space left", "(step 2)")
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 2
    assert sorted(os.listdir(out)) == [".lock", "ckpt.pt", "config.json", "log.jsonl"]  # no temp file left


def test_error_sequential_resume_on_shorter_data(tmp_path):
    data = make_data(tmp_path / "data")
    run(*TINY, "--data", data, "--max-steps", 3, "--lr-decay-steps", 5, "--data-order", "sequential",
        "--out-dir", tmp_path / "o")  # the loader is at token 3 x 4 x 16 = 192 of its shard
    short = make_data(tmp_path / "short", n_train=150)
    expect_exit(["--resume", tmp_path / "o" / "ckpt.pt", "--max-steps", 5, "--data", short],
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
    stale = tmp_path / "o" / f"ckpt.pt.{shards.TEMP_TAG}-{int(dead.stdout)}.tmp"  # a pid whose process has exited
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
def test_interrupt_anywhere_in_a_step_resumes_exactly(tmp_path, monkeypatch, capsys, where, saved):
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
    loss at each position = the mean over windows of that position's cross-entropy, by hand."""
    tok = tokenizer.get_tokenizer(name)
    ids = [tok.eot] + tok.encode("In the beginning God created the heaven and the earth. Über naïve café, "
                                 "and the earth was without form, and void; and darkness was upon the deep. " * 2)
    V = -(-tok.vocab_size // 64) * 64
    tokens = torch.tensor(ids[:49])
    torch.manual_seed(0)
    model = carope.GPT(carope.GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=V))
    table = np.pad(tok.token_bytes(), (0, V - tok.vocab_size))
    got = train.evaluate(model, tokens, [4, 8, 16], 16, "cpu", nullcontext(), 0, 1, table, 16)
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
    first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
