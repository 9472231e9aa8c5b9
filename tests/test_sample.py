"""Tests of sample.py on tiny checkpoints written by train.py itself."""

import os
import subprocess
import sys

import pytest
import torch

import sample
from support import tokenizer
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RUN = ["--preset", "nano", "--max-steps", "2", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
            "--micro-batch", "2", "--val-tokens", "256", "--eval-lens", "16", "--sample-tokens", "0",
            "--device", "cpu", "--no-compile"]


def checkpoint(tmp_path_factory, pe):
    out = tmp_path_factory.mktemp(pe)
    train.main(TINY_RUN + ["--pe", pe, "--out-dir", str(out)])
    return str(out / "ckpt.pt")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return checkpoint(tmp_path_factory, "carope")


@pytest.fixture(scope="module")
def learned_ckpt(tmp_path_factory):
    return checkpoint(tmp_path_factory, "learned")


def run_sample(args):
    """sample.py in its own process, one thread (2 shared cores: more threads only wait on each other)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)


def samples(capsys, args):
    """The printed samples of an in-process run, without the closing tokens/s line."""
    capsys.readouterr()
    sample.main(args)
    out = capsys.readouterr().out
    assert "tokens/s" in out.splitlines()[-1]
    return out.rsplit("----------\n", 1)[0]


def test_prints_samples_and_speed(ckpt):
    r = run_sample(["--ckpt", ckpt, "--prompt", "And God said", "--sample-tokens", "8", "--num-samples", "2"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sum(line.startswith("---------- sample") for line in lines) == 2
    assert "sample 2 of 2" in r.stdout and "pe=carope" in r.stdout
    assert [line for line in lines if not line.startswith("----------")][-3].startswith("And God said")
    assert lines[-1].startswith("16 tokens in ") and lines[-1].endswith("tokens/s, KV cache on, cpu")


@pytest.mark.parametrize("extra", [["--temperature", "0"], ["--temperature", "0.9", "--top-k", "20", "--seed", "3"]])
def test_no_cache_gives_the_same_text(ckpt, capsys, extra):
    args = ["--ckpt", ckpt, "--prompt", "In the beginning", "--sample-tokens", "12", "--num-samples", "2", *extra]
    with_cache = samples(capsys, args)
    assert with_cache == samples(capsys, args + ["--no-cache"])
    if "--seed" in extra:  # and the seed matters: not a constant text
        assert with_cache != samples(capsys, args[:-2] + ["--seed", "4"])


def test_no_prompt_starts_a_document(ckpt, capsys):
    # The printed text is the model's greedy continuation of the end-of-text token, that token left out.
    text = samples(capsys, ["--ckpt", ckpt, "--tokens", "10", "--num-samples", "1", "--temperature", "0"])  # the old name
    model, _, _ = sample.load_model(ckpt, "cpu")
    tok = tokenizer.get_tokenizer("gpt2")
    out = model.generate(torch.tensor([[tok.eot]]), 10, temperature=0)[0, 1:].tolist()
    assert text.splitlines()[1:] == tok.decode(out).splitlines()


def test_learned_crops_a_long_prompt(learned_ckpt, capsys):
    prompt = "and the evening and the morning were the first day, and God saw the light, that it was good"
    assert len(tokenizer.get_tokenizer("gpt2").encode(prompt)) == 21
    text = samples(capsys, ["--ckpt", learned_ckpt, "--prompt", prompt, "--sample-tokens", "20", "--num-samples", "1"])
    assert "note: pe=learned sees 16 positions; the prompt is cropped to its last 16 of 21 tokens" in text
    assert "the light" in text and "and the evening" not in text


def write_foreign_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "{tmp}/missing.pt"], "--ckpt {tmp}/missing.pt: no such checkpoint file"),
    (["--ckpt", "{tmp}/foreign.pt"], "--ckpt {tmp}/foreign.pt: not a train.py checkpoint"),
    (["--ckpt", "{tmp}/notes.txt"], "--ckpt {tmp}/notes.txt: not a readable checkpoint"),
    (["--prompt", ""], '--prompt "": empty; leave --prompt out'),
    (["--sample-tokens", "0"], "--sample-tokens 0: must be an integer >= 1"),
    (["--tokens", "0"], "--sample-tokens 0: must be an integer >= 1"),  # the old name: the same flag
    (["--temperature", "-0.5"], "--temperature -0.5: must be a finite number >= 0"),
    (["--top-k", "0"], "--top-k 0: must be an integer >= 1"),
    (["--num-samples", "0"], "--num-samples 0: must be an integer in [1, 4096]"),
    (["--num-samples", "99999999999999999999"], "--num-samples 99999999999999999999: must be an integer in [1, 4096]"),
    (["--device", "tpu"], "--device tpu: must be cpu, cuda, cuda:N or mps"),
    (["--sample-tokens", "many"], "--sample-tokens many: must be an integer >= 1"),
    (["--seed", "-1"], "--seed -1: must be an integer in [0, 2**32)"),
])
def test_bad_input_is_one_line(tmp_path, ckpt, args, message):
    write_foreign_files(tmp_path)
    args = [a.format(tmp=tmp_path) for a in args]
    if "--ckpt" not in args:
        args += ["--ckpt", ckpt]
    with pytest.raises(SystemExit) as e:
        sample.main(args)
    text = str(e.value.code)
    assert "\n" not in text and text.startswith("sample.py: " + message.format(tmp=tmp_path)), text


def test_a_folder_for_ckpt_is_called_a_folder_and_its_ckpt_pt_named(tmp_path, ckpt):
    """--ckpt DIR: a run's folder names the ckpt.pt in it; a folder without one says so (not "no such file")."""
    for path, message in ((os.path.dirname(ckpt), f"is a folder, not a checkpoint file: pass --ckpt {ckpt}"),
                          (str(tmp_path), "is a folder with no ckpt.pt in it: pass the ckpt.pt train.py wrote")):
        with pytest.raises(SystemExit) as e:
            sample.main(["--ckpt", path])
        assert str(e.value.code).startswith(f"sample.py: --ckpt {path} {message}"), e.value.code


def test_bad_input_exits_1_without_traceback(tmp_path, ckpt):
    write_foreign_files(tmp_path)
    for args in (["--ckpt", str(tmp_path / "foreign.pt")], ["--ckpt", ckpt, "--top-k", "0"]):
        r = run_sample(args)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("sample.py: ")


def test_decodes_with_the_checkpoints_tokenizer(ckpt, tmp_path):
    """The tokenizer is the run's (train_args["tokenizer"]); checkpoints from before it existed are GPT-2's."""
    from support import checkpoints
    state = checkpoints.load_checkpoint(ckpt)
    assert sample.load_model(ckpt, "cpu")[2].name == state["train_args"].get("tokenizer", "gpt2")
    for name, want in (("bytes", "bytes"), (None, "gpt2")):
        state["train_args"]["tokenizer"] = name
        path = tmp_path / f"{name}.pt"
        checkpoints.save_checkpoint(path, state)
        assert sample.load_model(str(path), "cpu")[2].name == want


def test_a_gpu_torch_cannot_use_stops_in_one_line(ckpt, monkeypatch):
    from support import devices
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "nvidia_smi", lambda: ("NVIDIA H100 PCIe", "550.54.15"))
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", ckpt])
    msg = str(e.value.code)
    assert msg.startswith("sample.py: an NVIDIA GPU is here (NVIDIA H100 PCIe, driver 550.54.15)") and "\n" not in msg
    assert "R580" in msg and "--device cpu" in msg


def test_a_task_checkpoint_is_one_line(tmp_path):
    """A task model has no text tokenizer: one line naming train.py --eval-only, not an IndexError on GPT-2's EOT."""
    train.main(["--task", "copy", "--max-steps", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                "--micro-batch", "2", "--eval-lens", "8", "--sample-tokens", "0", "--device", "cpu", "--no-compile",
                "--out-dir", str(tmp_path / "copy")])
    path = str(tmp_path / "copy" / "ckpt.pt")
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", path, "--sample-tokens", "2"])
    assert e.value.code == (f"sample.py: --ckpt {path}: a model of the copy task, which reads that task's symbols, "
                            f"not text; evaluate it with python train.py --eval-only --resume {path}")


def small_vocab_checkpoint(ckpt, tmp_path, vocab_size, tokenizer_name):
    """ckpt's run as a model of vocab_size rows (as --vocab-size would make it), on tokenizer_name's data."""
    from support import checkpoints
    from carope import GPT, GPTConfig
    state = checkpoints.load_checkpoint(ckpt)
    state["model_config"] = dict(state["model_config"], vocab_size=vocab_size)
    state["model"] = GPT(GPTConfig(**state["model_config"])).state_dict()
    state["train_args"] = dict(state["train_args"], tokenizer=tokenizer_name, vocab_size=vocab_size)
    path = tmp_path / f"{tokenizer_name}-{vocab_size}.pt"
    checkpoints.save_checkpoint(path, state)
    return str(path)


def test_tokens_the_model_has_no_row_for_are_one_line(ckpt, tmp_path):
    """--vocab-size 128 on GPT-2 data: GPT-2's end-of-text token 50256 (or a prompt's token) has no row."""
    path = small_vocab_checkpoint(ckpt, tmp_path, 128, "gpt2")
    for prompt, what in ((None, "the end-of-text token 50256 that starts a new document"),
                         ("And God said", "token 1870 of the prompt")):
        with pytest.raises(SystemExit) as e:
            sample.main(["--ckpt", path, "--sample-tokens", "2"] + (["--prompt", prompt] if prompt else []))
        assert e.value.code == (f"sample.py: --ckpt {path}: the model has 128 embedding rows (its --vocab-size), "
                                f"none for {what} (gpt2); pass a --prompt whose gpt2 tokens are all below 128")


def test_a_prompt_that_is_not_utf8_reaches_a_bytes_model_as_its_bytes(ckpt, tmp_path, capsys):
    """$'ab\\xffcd' arrives in argv as 'ab\\udcffcd' (surrogateescape): a bytes model reads the bytes 0x61 0x62 0xff
    0x63 0x64, as it would any byte; no UnicodeEncodeError."""
    path = small_vocab_checkpoint(ckpt, tmp_path, 320, "bytes")
    text = samples(capsys, ["--ckpt", path, "--prompt", "ab\udcffcd", "--sample-tokens", "3", "--num-samples", "1"])
    assert text.splitlines()[1].startswith("ab\ufffdcd")  # the byte 0xff shown as U+FFFD, as decode does
    assert sample.prompt_ids(tokenizer.get_tokenizer("bytes"), "ab\udcffcd", 320, path) == [97, 98, 255, 99, 100]
    r = subprocess.run([sys.executable, "sample.py", "--ckpt", path, "--prompt", b"ab\xffcd", "--sample-tokens", "3",
                        "--num-samples", "1"], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr[-500:]
