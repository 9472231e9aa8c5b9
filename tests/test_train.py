"""Tests of train.py on CPU with tiny models: the default run, resume, DDP, accumulation, errors.

Most tests write tiny llm.c shards into tmp_path; only the end-to-end default run uses the
embedded corpus (built once in data/kjv, as `python train.py` would).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import carope  # noqa: E402
import prepare_data  # noqa: E402
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
    prepare_data.write_shard(os.path.join(root, "val_000000.bin"), stream[:n_val])
    prepare_data.write_shard(os.path.join(root, "train_000001.bin"), stream[n_val:])
    if manifest:
        with open(os.path.join(root, "manifest.json"), "w") as f:
            json.dump(dict(source="test", tokenizer="gpt2", vocab_size=vocab_size, eot_token=vocab_size - 1,
                           shards=[], total_tokens=n_train + n_val), f)
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
    assert [r["step"] for r in read_log(tmp_path / "half", "eval")] == [3, 3, 3, 4, 4, 4, 6, 6, 6, 8, 8, 8]
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
    proc = subprocess.run([sys.executable, "train.py", "--data", str(tmp_path / "nowhere"), "--device", "cpu"],
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
    expect_exit(TINY + ["--data", data, "--n-embd", "30", "--n-head", "4"], "model flags", "not divisible by n_head")
    expect_exit(TINY + ["--data", data, "--n-embd", "30", "--n-head", "2", "--pe", "rope"], "head size", "odd")


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
