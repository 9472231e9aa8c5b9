"""Tests of tasks.py: each generator against an independent computation, the target and answer
layout, the accuracy metric by hand, determinism, vocabularies and lengths, errors, and one tiny
task learned by carope.GPT in seconds."""

import contextlib
import math
import os
import runpy
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import tasks  # noqa: E402
from carope import GPT, GPTConfig  # noqa: E402

B = 16


def rows(name, T=None, split="train", seed=0, **options):
    task = tasks.TASKS[name]
    x, y, answer = tasks.batch(task, B, T or task.T, seed, split, **options)
    return task, x, y, answer


def words(task, row):
    return tasks.decode(task.vocab, row.tolist()).split()


# ----------------------------------------------------------------------------- each task's answers

def test_parity_is_the_xor_of_the_bits_so_far():
    task, x, y, answer = rows("parity", T=40)
    for b in range(B):
        state = 0
        for t in range(40):
            state ^= int(x[b, t])  # an independent loop, not the generator's cumsum
            assert int(y[b, t]) == state
    assert set(x.unique().tolist()) == {0, 1}
    assert (answer == torch.arange(B)[:, None]).all(), "each row is one answer (sequence accuracy)"


def run_program(program):
    """A tiny interpreter for the counting language: `v = n ;`, `v ++ ;`, `pass ;`, then `print v`."""
    env, statements = {}, " ".join(program).split(" ; ")
    *body, last = statements
    for s in body:
        w = s.split()
        if w == ["pass"]:
            continue
        if len(w) == 3 and w[1] == "=":
            env[w[0]] = int(w[2])
        elif len(w) == 2 and w[1] == "++":
            env[w[0]] += 1
        else:
            raise AssertionError(f"not a statement: {s!r}")
    command, variable = last.split()
    assert command == "print"
    return env[variable]


@pytest.mark.parametrize("variables, T", [(1, 64), (1, 256), (3, 128)])
def test_counting_answer_is_what_the_program_prints(variables, T):
    task, x, y, answer = rows("counting", T=T, variables=variables)
    for b in range(B):
        w = words(task, x[b])
        end = w.index("print") + 2  # the position of `print v`'s v: where the value is predicted
        assert (y[b] >= 0).nonzero().flatten().tolist() == [end - 1], "one target, after `print v`"
        assert task.vocab[int(y[b, end - 1])] == str(run_program(w[:end]))
        assert w[end:end + 1] in ([], [task.vocab[int(y[b, end - 1])]]), "the value follows in x"
        assert set(w[end + 1:]) <= {"*"}
        if variables == 3:
            assert w[:12] == "a = 0 ; b = 0 ; c = 0 ;".split()


def test_copy_targets_are_the_string_then_a_dot():
    task, x, y, answer = rows("copy", T=100)
    seen = 0
    for b in range(B):
        w = words(task, x[b])
        targets = {t: task.vocab[int(y[b, t])] for t in range(100) if y[b, t] >= 0}
        expected = {}
        t = 0
        while t < 100 and w[t] == "$":  # walk the packed examples
            n = w.index("|", t) - t - 1
            s = w[t + 1:t + 1 + n]
            assert 1 <= n <= 16 and all(c in tasks.LETTERS for c in s)
            for j, c in enumerate(s + ["."]):  # predicted from `|` and from each copied letter
                expected[t + n + 1 + j] = c
            ids = answer[b, t + n + 1:t + 2 * n + 2]
            assert (ids == ids[0]).all() and ids[0] >= 0, "one answer per example: its copy and its dot"
            t += 2 * n + 3
            seen += 1
        assert set(w[t:]) <= {"*"}, "after the examples, only pads"
        assert targets == expected
    assert seen > B, "several examples packed into a row"


@pytest.mark.parametrize("T", [101, 64, 128])  # odd and even: an even T cuts the last pair's bit off x
def test_flipflop_targets_are_the_last_written_bit(T):
    task, x, y, answer = rows("flip-flop", T=T)
    for b in range(B):
        w = words(task, x[b])
        assert w[0] == "w" and all(w[t] in "wri" for t in range(0, T, 2))
        for t in range(0, T, 2):
            if w[t] == "r":
                back = t - 2
                while w[back] != "w":  # scan back to the last write
                    back -= 2
                assert task.vocab[int(y[b, t])] == w[back + 1]
            else:
                assert y[b, t] == -1
        assert (y[b, 1::2] == -1).all(), "nothing is predicted from a bit"
        assert w[(T - 1) // 2 * 2] == "r", "the last pair whose bit is in y is a read"


def test_flipflop_every_test_row_has_an_answer():
    """Sparse test rows (p_i = 0.98) at every test length, all even: the forced read gives each row an
    answer; a read on a pair whose bit is cut off would leave most rows with none."""
    task = tasks.TASKS["flip-flop"]
    for length in task.lengths:
        T, options = task.at(length)
        _, y, _ = tasks.batch(task, 256, T, 5, "test", **options)
        assert T % 2 == 0 and ((y >= 0).sum(dim=1) >= 1).all(), length
        assert (y[:, (T - 1) // 2 * 2] >= 0).all(), "the forced read's bit is a target in every row"


def recall(stream):
    """An MQAR reader: walk the tokens; a key's first `k v` is its pair, a later `k` is a query, answered by
    the pair's value. Returns {place of a query's key: its value}, the pairs and the queried keys in order."""
    pairs, queried, answers, t = {}, [], {}, 0
    while t < len(stream):
        k = stream[t]
        if k == "*":
            t += 1
            continue
        assert k in tasks.KEYS, f"a value with no key before it at {t}: {stream[t - 1:t + 2]}"
        if k in pairs:  # a query: its answer is not in the stream, a "*" follows
            assert k not in queried, "each key is queried at most once"
            queried.append(k)
            answers[t] = pairs[k]
            assert stream[t + 1:t + 2] in ([], ["*"]), "the answer is hidden from x"
        else:
            assert not queried, "every pair comes before the first query"
            assert stream[t + 1] in tasks.VALUES, "a pair's key is followed by its value"
            pairs[k] = stream[t + 1]
            t += 1
        t += 1
    return answers, pairs, queried


@pytest.mark.parametrize("length", tasks.TASKS["mqar"].lengths)
@pytest.mark.parametrize("options", [{}, dict(pairs=5, queries=2)])
def test_mqar_answer_is_the_value_paired_with_the_queried_key(length, options):
    task = tasks.TASKS["mqar"]
    T, at = task.at(length)
    x, y, answer = tasks.batch(task, B, T, 5, "test", **at, **options)
    P, Q = options.get("pairs", 4), options.get("queries", 4)
    for b in range(B):
        w = words(task, x[b])
        answers, pairs, queried = recall(w)
        targets = {t: task.vocab[int(y[b, t])] for t in range(T) if y[b, t] >= 0}
        assert targets == answers, "a target after each query's key, its pair's value; -1 elsewhere"
        assert len(pairs) == P and len(queried) == Q, "the same pairs and queries at every length"
        assert w.count("*") == T - 2 * P - Q, "every other place is filler"
        assert set(answer[b][y[b] >= 0].tolist()) == {b}, "a row's queries are one answer (per-row accuracy)"


def test_mqar_longer_rows_put_the_same_pairs_further_from_their_queries():
    """The probe: at 4x the length, a query is about 4x as far from its key; what is remembered is the same."""
    task = tasks.TASKS["mqar"]

    def distances(length):
        x, y, _ = tasks.batch(task, 256, length, 0, "test")
        out = []
        for b in range(256):
            w = words(task, x[b])
            for t in (y[b] >= 0).nonzero().flatten().tolist():
                out.append(t - w.index(w[t]))  # the query's key back to its pair's key
        return np.array(out)

    short, long = distances(64), distances(256)
    assert len(short) == len(long) == 256 * 4
    assert short.max() < 64 and long.max() > 128
    assert 3 < long.mean() / short.mean() < 5, (short.mean(), long.mean())


# ----------------------------------------------------------------------------- layout of targets and answers

@pytest.mark.parametrize("name", list(tasks.TASKS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_mark_exactly_the_targets_and_group_them(name, split):
    task, x, y, answer = rows(name, split=split)
    assert x.shape == y.shape == answer.shape == (B, task.T)
    assert all(a.dtype == torch.int64 for a in (x, y, answer))
    assert torch.equal(y == -1, answer == -1), "-1 targets exactly where no answer is"
    ids = answer[answer >= 0]
    assert torch.equal(ids.unique(), torch.arange(int(ids.max()) + 1)), "ids 0 .. n-1, none skipped"
    assert (ids.diff() >= 0).all(), "numbered in reading order, an answer's tokens together"
    for k in ids.unique().tolist():
        where = (answer == k).nonzero()
        assert where[:, 0].unique().numel() == 1, "an answer lies within one row"


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_vocabularies_are_small_and_ids_in_range(name):
    task = tasks.TASKS[name]
    assert len(task.vocab) <= 32 and len(set(task.vocab)) == len(task.vocab)
    for length in task.lengths:
        T, options = task.at(length)
        x, y, answer = tasks.batch(task, B, T, 1, "test", **options)
        assert x.shape == (B, T)
        assert 0 <= x.min() and x.max() < len(task.vocab)
        assert y[y >= 0].max() < len(task.vocab)


# ----------------------------------------------------------------------------- train and test lengths

def test_lengths_train_at_the_first_test_longer():
    for task in tasks.TASKS.values():
        assert list(task.lengths) == sorted(task.lengths) and len(task.lengths) >= 2
        assert task.lengths[-1] >= 4 * task.lengths[0]
    assert tasks.TASKS["parity"].lengths[::2] == (64, 256)
    for name in ("flip-flop", "counting", "parity", "mqar"):
        assert tasks.TASKS[name].lengths[0] == tasks.TASKS[name].T


def test_copy_trains_up_to_max_len_and_tests_at_the_length_asked():
    def string_lengths(x):
        return [n for row in x.tolist() for n in np.diff(np.flatnonzero(np.isin(row, [1, 2])))[::2] - 1]
    task, x, _, _ = rows("copy")
    train = string_lengths(x)
    assert min(train) >= 1 and max(train) <= 8 and len(set(train)) > 5
    T, options = task.at(64)
    x, y, answer = tasks.batch(task, B, T, 0, "test", **options)
    assert T == 130 and set(string_lengths(x)) == {64}
    assert (answer.max(dim=1).values == torch.arange(B)).all(), "one example a row"


def test_flipflop_test_is_sparse():
    def share_of_ignores(x):
        return (x[:, 2::2] == tasks.FLIPFLOP_VOCAB.index("i")).float().mean().item()  # after the first write
    _, train, _, _ = rows("flip-flop", T=2000)
    _, test, _, _ = rows("flip-flop", T=2000, split="test")
    assert share_of_ignores(train) == pytest.approx(0.8, abs=0.01)
    assert share_of_ignores(test) == pytest.approx(0.98, abs=0.005)


def test_counting_test_values_stay_in_the_trained_range():
    task = tasks.TASKS["counting"]
    values = lambda y: {int(task.vocab[t]) for t in y[y >= 0].tolist()}  # noqa: E731
    train = values(tasks.batch(task, 512, task.T, 0)[1])
    test = values(tasks.batch(task, 512, task.lengths[-1], 0, "test")[1])
    assert train == test == set(range(11)), "the same counts 0 .. 10 at every length"


def test_counting_trains_on_programs_of_every_length_and_tests_on_full_rows():
    task = tasks.TASKS["counting"]
    ends = lambda y: (y >= 0).int().argmax(dim=1)  # noqa: E731  where `print v` predicts the value
    _, _, train, _ = rows("counting")
    assert len(set(ends(train).tolist())) > B // 2, "programs of many lengths"
    _, x, test, _ = rows("counting", T=256, split="test")
    assert (ends(test) >= 256 - 2).all(), "the test program fills its row"
    assert ((x == task.vocab.index("pass")).sum(dim=1) > 100).all(), "the longer row is mostly pass"


# ----------------------------------------------------------------------------- accuracy by hand

def test_accuracy_by_hand():
    y = torch.tensor([[-1, 3, 4, -1, 5], [2, -1, -1, 7, 7]])
    answer = torch.tensor([[-1, 0, 0, -1, 1], [2, -1, -1, 3, 3]])
    predicted = torch.tensor([[9, 3, 0, 9, 5], [2, 9, 9, 7, 1]])  # wrong: answer 0's 2nd, answer 3's 2nd
    # tokens: 6 scored, 4 right; answers: 1 and 2 right, 0 and 3 each have one wrong token
    expected = dict(token=4 / 6, answer=2 / 4, tokens=6, answers=4)
    assert tasks.accuracy(predicted, y, answer) == pytest.approx(expected)
    logits = torch.nn.functional.one_hot(predicted, 10).float()
    assert tasks.accuracy(logits, y, answer) == pytest.approx(expected), "logits: their argmax"
    all_right = tasks.accuracy(y.clamp(min=0), y, answer)
    assert all_right["token"] == all_right["answer"] == 1.0
    assert math.isnan(tasks.accuracy(predicted, torch.full_like(y, -1), torch.full_like(y, -1))["token"])


def test_accuracy_scores_targets_with_id_0():
    """Parity's "0" is id 0 and a target like any other: an all-ones predictor is right on the ones only."""
    y = torch.tensor([[0, 1, 1, 0, -1], [0, 0, 1, -1, -1]])
    answer = torch.tensor([[0, 0, 0, 0, -1], [1, 1, 1, -1, -1]])
    got = tasks.accuracy(torch.ones_like(y), y, answer)
    assert got == pytest.approx(dict(token=3 / 7, answer=0.0, tokens=7, answers=2))
    _, x, y, answer = rows("parity", T=64)
    got = tasks.accuracy(torch.ones_like(y), y, answer)
    assert got["tokens"] == B * 64 and got["token"] == pytest.approx((y == 1).float().mean().item())
    assert 0.4 < got["token"] < 0.6


class Oracle(torch.nn.Module):
    """A stand-in model that sees the targets: every target right in the rows where right(row) holds (rows
    numbered within a batch), every one wrong elsewhere (the id after the target's). Its loss is the cross-entropy over the targets, as GPT's."""

    def __init__(self, vocab_size, right):
        super().__init__()
        self.V, self.right = vocab_size, right

    def forward(self, x, y):
        right = self.right(torch.arange(len(y)))[:, None]
        predicted = torch.where(right, y.clamp(min=0), (y.clamp(min=0) + 1) % self.V)
        logits = 10.0 * torch.nn.functional.one_hot(predicted, self.V).float()  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1)
        return logits, loss


def test_evaluate_pools_whole_answers_over_batches():
    """Copy at string length 8: 9 target tokens to an answer (the copy and its dot), one answer a row. Right on
    the even rows of each batch of 4 (batches of 4, 4, 2 rows: 5 rows of 10): half of the answers and of the
    tokens, whatever the batch sizes."""
    task = tasks.TASKS["copy"]
    model = Oracle(len(task.vocab), lambda row: row % 2 == 0)
    got = tasks.evaluate(model, task, [8], 4, "cpu", contextlib.nullcontext(), rows=10)[8]
    assert got["acc"] == got["token_acc"] == 0.5
    V = len(task.vocab)  # a right token's loss is log(e^10 + V - 1) - 10, a wrong one's log(e^10 + V - 1)
    assert got["loss"] == pytest.approx(math.log(math.exp(10) + V - 1) - 10 / 2)


# ----------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_the_same_seed_gives_the_same_batch(name):
    a, b, c = (rows(name, seed=s)[1:] for s in (7, 7, 8))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    rng = np.random.default_rng(7)  # a Generator moves on: two draws differ, and the first is seed 7's
    first, second = (tasks.batch(name, B, tasks.TASKS[name].T, rng)[0] for _ in range(2))
    assert torch.equal(first, a[0]) and not torch.equal(first, second)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("call, message", [
    (lambda: tasks.batch("sort", 2, 8, 0), "unknown task 'sort'; choose one of: copy, flip-flop"),
    (lambda: tasks.batch("copy", 2, 64, 0, colour=1), "copy has no option colour; its options: min_len"),
    (lambda: tasks.batch("copy", 2, 64, 0, split="val"), "split='val': choose train or test"),
    (lambda: tasks.batch("copy", 2, 16, 0), "T=16 is too short for strings of 8"),
    (lambda: tasks.batch("copy", 2, 64, 0, min_len=5, max_len=3), "need 1 <= min_len <= max_len"),
    (lambda: tasks.batch("counting", 2, 64, 0, variables=3), "use T >= 104 or a smaller max_value"),
    (lambda: tasks.batch("counting", 2, 200, 0, max_value=21), "choose 0 to 20"),
    (lambda: tasks.batch("flip-flop", 2, 64, 0, p_i=1.0), "must be in [0, 1)"),
    (lambda: tasks.batch("parity", 0, 64, 0), "B=0, T=64: both must be >= 1"),
    (lambda: tasks.batch("mqar", 2, 64, 0, keys=17), "keys=17: choose 1 to 16 (a..p)"),
    (lambda: tasks.batch("mqar", 2, 64, 0, keys=3), "pairs=4: choose 1 to keys=3"),
    (lambda: tasks.batch("mqar", 2, 64, 0, pairs=3), "queries=4: choose 1 to pairs=3"),
    (lambda: tasks.batch("mqar", 2, 62, 0, pairs=16, queries=16), "use T >= 63"),
])
def test_bad_input_is_one_line(call, message):
    with pytest.raises(SystemExit, match=None) as error:
        call()
    text = str(error.value)
    assert message in text and "\n" not in text and text.startswith("tasks: ")


def test_what_a_task_asks_is_told_with_the_values_it_runs_with():
    """A task's line (train.py's header, python tasks.py) names the options, the row length and the test lengths
    of this run, not the defaults with the options appended: no "1-8 letters ... (max_len=31)"."""
    cases = [("copy", ["max_len=31"], None, None, "strings of 1-31 letters, tested at 8, 16 and 32", "1-8"),
             ("copy", ["min_len=3", "max_len=3", "letters=2"], None, (3,), "strings of 3 letters of a..b, tested at 3",
              "26"),
             ("mqar", ["pairs=2", "queries=2"], 32, None, "2 pairs and 2 queries of 16 keys in 32 tokens", "4 pairs"),
             ("mqar", ["pairs=1", "queries=1"], None, None, "1 pair and 1 query of", "16 tokens; tested at 8"),
             ("flip-flop", ["p_i=0.5"], 32, (32, 64), "train at p_i = 0.5 in rows of 32, test at p_i = 0.98 (sparser) "
              "at 32 and 64", "0.8"),
             ("counting", ["max_value=4"], None, None, "one variable's ++ up to 4 in rows of 64", "up to 10"),
             ("parity", [], 32, (32, 128), "trained at 32, tested at 32 and 128", "64")]
    for name, options, T, lengths, said, not_said in cases:
        what = tasks.with_options(name, options, T, lengths).what
        assert said in what and not_said not in what and "=" not in what.replace("p_i = ", ""), what
    assert tasks.TASKS["mqar"].what.startswith("recall the value of each queried key: 4 pairs and 4 queries")


def test_task_options_reach_both_splits_with_their_types():
    """--task-option NAME=VALUE: the task's own option, typed as its default, in training and test rows
    (the test split still makes its rows full); a value that cannot be made is refused before training."""
    task = tasks.with_options("counting", ["variables=3", "max_value=4"], T=128)
    assert task.train == dict(variables=3, max_value=4, full=False) and "3 variables up to 4 each" in task.what
    for split in ("train", "test"):
        _, y, _ = tasks.batch(task, 64, 128, 0, split)
        x, _, _ = tasks.batch(task, 64, 128, 0, split)
        names = {w for row in x.tolist() for w in words(task, torch.tensor(row)) if w in tasks.VARIABLES}
        values = {task.vocab[v] for v in y[y >= 0].tolist()}
        assert names == {"a", "b", "c"} and values <= {"0", "1", "2", "3", "4"}
    assert tasks.with_options("copy", ["letters=2"]).train["letters"] == 2
    assert tasks.with_options("flip-flop", ["p_i=0.5"]).train["p_i"] == 0.5
    assert tasks.with_options("counting", ["full=true"]).train["full"] is True
    assert tasks.with_options("parity") is tasks.TASKS["parity"]
    mqar = tasks.with_options("mqar", ["pairs=8", "queries=2", "keys=8"], T=64, lengths=(64,))
    for split in ("train", "test"):
        x, y, _ = tasks.batch(mqar, 64, 64, 0, split)
        assert ((y >= 0).sum(dim=1) == 2).all(), "2 queries a row"
        keys = {w for row in x.tolist() for w in words(mqar, torch.tensor(row)) if w in tasks.KEYS}
        assert keys == set("abcdefgh"), "8 pairs of 8 keys: every row has a..h"


def test_mqar_shortest_row_the_error_names_fits():
    x, y, _ = tasks.batch("mqar", 2, 63, 0, pairs=16, queries=16)  # the T the message above asks for
    assert tasks.decode(tasks.MQAR_VOCAB, x[0].tolist()).split().count("*") == 15, "no filler: the hidden answers"
    assert int((y[0] >= 0).sum()) == 16


@pytest.mark.parametrize("options, T, message", [
    (["variables=x"], 64, "'variables=x': variables takes ints"),
    (["full=maybe"], 64, "full takes true or false"),
    (["colour=1"], 64, "counting's options are variables=1, max_value=10, full=False (NAME=VALUE)"),
    (["variables"], 64, "(NAME=VALUE)"),
    (["variables=3"], 64, "use T >= 104"),  # drawn now at the training length, not at the first step
])
def test_bad_task_options_are_one_line(options, T, message):
    with pytest.raises(SystemExit) as error:
        tasks.with_options("counting", options, T=T)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_counting_shortest_row_the_error_names_fits():
    tasks.batch("counting", 2, 104, 0, variables=3)  # the T the message above asks for is enough


def test_main_prints_every_task(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tasks.py", "--seed", "3"])
    runpy.run_path(os.path.join(REPO, "tasks.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert all(f"{name}: " in out for name in tasks.TASKS) and "print a" in out and "mqar: " in out


# ----------------------------------------------------------------------------- the targets can be learned

def train_tiny(name, steps, T=16, **options):
    """A 2-layer, 32-wide RoPE model trained `steps` steps of 64 rows of task `name` (one thread, seed 0), then
    its accuracy on 256 test rows of a seed no training batch had."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: quick even while other work shares the machine
    try:
        torch.manual_seed(0)
        task = tasks.TASKS[name]
        model = GPT(GPTConfig(vocab_size=len(task.vocab), block_size=T, n_layer=2, n_head=2, n_embd=32, pe="rope"))
        optimizer = model.configure_optimizers(0.0, 3e-3, (0.9, 0.95), "cpu")
        for step in range(steps):
            x, y, _ = tasks.batch(task, 64, T, step, **options)
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        x, y, answer = tasks.batch(task, 256, T, 10_000, "test", **options)
        with torch.no_grad():
            return tasks.accuracy(model(x)[0], y, answer)
    finally:
        torch.set_num_threads(threads)


def test_tiny_copy_is_learned():
    """Copying strings of 4 letters: a 2-layer RoPE model gets nearly every whole copy right in 150
    steps (a few seconds; it does by step 100 at seeds 0, 1, 2), so the targets say what they mean."""
    result = train_tiny("copy", steps=150, min_len=4, max_len=4, letters=8)
    assert result["answers"] == 256  # one example of 11 tokens a row
    assert result["answer"] >= 0.95, result


def test_tiny_mqar_learns_to_answer_with_a_value_of_its_row():
    """Two pairs, two queries: in 100 steps a 2-layer RoPE model answers with a value of its row, ~0.52 of the
    queries (seeds 0, 1, 2) against 0.1 by chance, so the targets are the row's values where the queries are.
    Reading: that is the key-blind level, (1 + 1/10)/2 = 0.55. Finding the queried key's own value comes after a
    plateau at that level, of a length that depends on the seed (results/tasks-mqar, width 64, lr 1e-3): at this
    width it had not come after 600 steps at lr 1e-3 (seeds 0-2, 0.56-0.57), so no test asks it."""
    result = train_tiny("mqar", steps=100, pairs=2, queries=2)
    assert result["tokens"] == 512 and result["answers"] == 256, "two queries a row, one answer a row"
    assert result["token"] >= 0.4, result
