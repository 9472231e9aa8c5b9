"""
Five synthetic tasks on which positional encodings part ways, each small enough to learn in CPU minutes:

    copy       repeat a string: find the next letter by where it sits        (Jelassi et al. 2024)
    flip-flop  recall the last bit written, past any amount of noise        (Liu et al. 2023)
    counting   count the statements that matter, not the tokens between     (CoPE, Golovneva et al. 2024)
    parity     carry one bit of state along every token                     (Selective RoPE's S2)
    mqar       recall the value paired with a key, however far back         (Zoology, Arora et al. 2023)

Each trains at one length and is tested at longer ones: does what the model learnt carry over?
RoPE's angle between two tokens is their distance; CARoPE's and Selective RoPE's is a sum over the
tokens in between, so it can count only the ones that matter. That is what these tasks probe.

Read it top to bottom: the vocabularies and the shared shift, one generator per task (its format in
its docstring), the table TASKS, then batch and accuracy, the two calls a training loop makes:

    task = TASKS["copy"]
    x, y, answer = batch(task, B, task.T, rng)          # training rows; rng: a seed or a numpy Generator
    logits, loss = model(x, y)                          # y is -1 where nothing is predicted
    for length in task.lengths:                         # the training length first, then longer ones
        T, options = task.at(length)
        x, y, answer = batch(task, B, T, rng, "test", **options)
        accuracy(model(x)[0], y, answer)                # {"token": .., "answer": .., "tokens": .., ..}

x (B, T) are the model's input ids, y (B, T) the targets (-1 where there is no answer; the model's
cross-entropy skips them), answer (B, T) names the answer each target belongs to (-1 where none), so
an answer of several tokens (a copied string) counts as right only when every token of it is.
`python tasks.py` prints an example of each task.
"""

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from support import cli

# -----------------------------------------------------------------------------
# Vocabularies: a token's id is its index. Every task has a pad "*" or needs none.

LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
COPY_VOCAB = ("*", "$", "|", ".") + LETTERS  # 30
FLIPFLOP_VOCAB = ("w", "r", "i", "0", "1")  # write, read, ignore; the bits
VARIABLES = tuple("abcde")
COUNTING_VOCAB = ("*",) + VARIABLES + ("=", ";", "++", "pass", "print") + tuple(str(v) for v in range(21))  # 32
PARITY_VOCAB = ("0", "1")
KEYS, VALUES = tuple("abcdefghijklmnop"), tuple("0123456789")
MQAR_VOCAB = ("*",) + KEYS + VALUES  # 27: a filler, then keys below values, as Zoology's


def ids(vocab, words):
    """Token names -> ids."""
    index = {w: i for i, w in enumerate(vocab)}
    return [index[w] for w in words]


def decode(vocab, row):
    """Ids -> one string of token names, for printing (and for the tests' interpreter)."""
    return " ".join(vocab[i] for i in row)


def next_token(tokens, answer):
    """Language-model form of a stream of T + 1 tokens: x = tokens[:-1], y = tokens[1:] where an
    answer is and -1 elsewhere. answer (B, T + 1) numbers each row's answers 0, 1, ..; -1 for none."""
    x, y, answer = tokens[:, :-1], tokens[:, 1:].copy(), answer[:, 1:]
    y[answer < 0] = -1
    return x, y, answer


def refuse(message):
    raise SystemExit(f"tasks: {message}")


# -----------------------------------------------------------------------------
# The generators: make(rng, B, T, **options) -> x, y, answer as numpy (B, T) int64


def copy_rows(rng, B, T, min_len, max_len, letters):
    """Copy: `$ s | s .`, loss on the copy only: the model sees `$ s |` and must write s back, then `.`.

        $ c a b | c a b . $ d d | d d . * * *      (x; y holds the copy "c a b ." and "d d .")

    String lengths are uniform in [min_len, max_len], letters from the first `letters` of a..z.
    Examples are packed into each row while they fit, then `*` pads it (no target on a pad).
    The copy's j-th letter is the letter j places after `$`: the model must find it by position
    (or by the letters before it). Train up to max_len; test at one longer length (copy_length).
    """
    if not 1 <= min_len <= max_len:
        refuse(f"copy: min_len={min_len}, max_len={max_len}: need 1 <= min_len <= max_len")
    if not 1 <= letters <= len(LETTERS):
        refuse(f"copy: letters={letters}: choose 1 to {len(LETTERS)}")
    if T + 1 < 2 * max_len + 3:
        refuse(f"copy: T={T} is too short for strings of {max_len}: one example is 2 * {max_len} + 3 "
               f"tokens; use T >= {2 * max_len + 2} or a smaller max_len")
    dollar, bar, dot = ids(COPY_VOCAB, "$|.")
    first = COPY_VOCAB.index("a")
    tokens = np.zeros((B, T + 1), dtype=np.int64)  # "*" is id 0
    answer = np.full((B, T + 1), -1, dtype=np.int64)
    for b in range(B):
        t, k = 0, 0  # next free place in the row, examples so far
        while True:
            n = rng.integers(min_len, max_len + 1)
            if t + 2 * n + 3 > T + 1:
                break  # the next example does not fit: pad the rest
            s = rng.integers(first, first + letters, n)
            tokens[b, t:t + 2 * n + 3] = np.concatenate(([dollar], s, [bar], s, [dot]))
            answer[b, t + n + 2:t + 2 * n + 3] = k  # the copy and its "."
            t, k = t + 2 * n + 3, k + 1
    return next_token(tokens, answer)


def flipflop_rows(rng, B, T, p_i):
    """Flip-flop: pairs of an instruction and a bit; after each read, the last bit written.

        w 1 i 0 i 1 r 1 i 1 w 0 i 1 r 0        (the bit after each `r` is an answer)

    `w b` writes b, `i b` is noise, `r b` reads: b is the last bit written. Instructions are i with
    probability p_i, w or r with (1 - p_i)/2 each. Liu et al. train at p_i = 0.8 and test "sparse"
    at 0.98: rare writes and reads far apart. The answer sits on the bit, so it is predicted from `r`.
    Reading: each row starts with a write, so every read has an answer, and its last whole pair is
    a read, so every row has at least one answer, even at p_i = 0.98.
    """
    if not 0 <= p_i < 1:
        refuse(f"flip-flop: p_i={p_i}: the share of ignores must be in [0, 1)")
    if T < 3:
        refuse(f"flip-flop: T={T} holds no write and read: use T >= 3")
    w, r, i, zero = ids(FLIPFLOP_VOCAB, "wri0")
    pairs = T // 2 + 1  # 2 * pairs >= T + 1 tokens
    op = rng.choice([w, r, i], size=(B, pairs), p=[(1 - p_i) / 2, (1 - p_i) / 2, p_i])
    op[:, 0], op[:, (T - 1) // 2] = w, r  # a write first; a read on the last pair whose bit is in y
    bit = rng.integers(0, 2, (B, pairs))
    last_write = np.maximum.accumulate(np.where(op == w, np.arange(pairs), 0), axis=1)  # (B, pairs)
    bit = np.where(op == r, np.take_along_axis(bit, last_write, axis=1), bit)  # a read repeats it
    tokens = np.stack((op, zero + bit), axis=2).reshape(B, 2 * pairs)  # w b w b ..: (B, 2 * pairs)
    is_read = np.stack((np.zeros_like(op), op == r), axis=2).reshape(B, 2 * pairs)  # on the read's bit
    answer = np.where(is_read, np.cumsum(is_read, axis=1) - 1, -1)
    return next_token(tokens[:, :T + 1], answer[:, :T + 1])


def counting_rows(rng, B, T, variables, max_value, full):
    """Counting: a tiny program; after `print a`, the value of a.

        a = 0 ; pass ; a ++ ; pass ; pass ; a ++ ; pass ; print a 2 * * *     (y holds the final "2")

    Every variable starts at 0 and gets a number of `++` uniform in [0, max_value], placed at random
    among `pass` statements; one program a row, then pads. The number of `pass` is uniform up to
    what fits the row (full=False, training) or fills it (full=True, the test). The counts do not
    depend on T: a test at a greater length asks for the same counts over a longer distance.
    Reading: programs of every length in training, as CoPE's generator has: in rows of one length,
    the share of `++` among the statements would give the count away, and that does not carry over.
    variables > 1 (b, c, ..) print one of them at random: the others' `++` must be told apart.
    """
    if not 1 <= variables <= len(VARIABLES):
        refuse(f"counting: variables={variables}: choose 1 to {len(VARIABLES)}")
    if not 0 <= max_value <= 20:
        refuse(f"counting: max_value={max_value}: choose 0 to 20 (the vocabulary's values)")
    room = T + 1 - 4 * variables - 3  # tokens between the `v = 0 ;` and `print v n`
    if room < 3 * variables * max_value:
        refuse(f"counting: T={T} is too short for {variables} variable(s) counting to {max_value}: "
               f"use T >= {4 * variables + 2 + 3 * variables * max_value} or a smaller max_value")
    names = VARIABLES[:variables]
    program_start = [word for v in names for word in (v, "=", "0", ";")]
    tokens = np.zeros((B, T + 1), dtype=np.int64)  # "*" is id 0
    answer = np.full((B, T + 1), -1, dtype=np.int64)
    for b in range(B):
        counts = rng.integers(0, max_value + 1, variables)
        increments = np.repeat(np.arange(variables), counts)  # which variable each `++` is for
        most = (room - 3 * len(increments)) // 2  # the `pass ;` that fit
        passes = most if full else rng.integers(0, most + 1)
        order = rng.permutation(np.concatenate((increments, np.full(passes, -1))))  # -1: a pass
        shown = rng.integers(variables)
        words = list(program_start)
        for v in order:
            words += ["pass", ";"] if v < 0 else [names[v], "++", ";"]
        words += ["print", names[shown], str(counts[shown])]
        tokens[b, :len(words)] = ids(COUNTING_VOCAB, words)
        answer[b, len(words) - 1] = 0  # the value
    return next_token(tokens, answer)


def parity_rows(rng, B, T):
    """Parity: bits in, the parity of the bits so far out, at every position (not shifted).

        x  0 1 1 0 1 0
        y  0 1 0 0 1 1

    The group S2 of Selective RoPE's state tracking: a token's answer depends on every token
    before it. The whole row is one answer, so the answer accuracy is the sequence accuracy.
    """
    x = rng.integers(0, 2, (B, T))
    y = np.cumsum(x, axis=1) % 2  # y_t = x_1 xor .. xor x_t
    return x, y, np.zeros((B, T), dtype=np.int64)


def mqar_rows(rng, B, T, pairs, queries, keys):
    """MQAR, multi-query associative recall: key-value pairs, then queries; after a queried key, its value.

        x  * c 7 * * a 2 * f 2 * * * a * * * * f * * c * * *
        y  _ _ _ _ _ _ _ _ _ _ _ _ _ 2 _ _ _ _ 2 _ _ 7 _ _ _      (_: no target)

    A row holds `pairs` pairs `k v` (distinct keys from the first `keys` of a..p; values 0..9, drawn
    with replacement), then `queries` of those keys, each once, in random order. After a queried key
    the answer is its value, in y only: x shows `*` there (Zoology's inputs show noise), so no query
    is answered by elimination from the answers before it. A key's first `k v` is its pair, a later
    `k` a query: only a model that finds the earlier `k` and reads the token after it gets the value.
    The row is full: `*` fillers take every place the pairs and queries leave, at random among them.
    What a longer row changes: only the number of `*`. Trained at 16 tokens (4 pairs, 4 queries and
    one `*`), tested at 32 and 64: the same pairs and queries, so the same things to remember, lie
    further apart, a query about 2x and 4x as far from its pair. So the test probes the distance
    between a query and its key, not the number of things to remember.
    Reading: 16 keys for a few pairs, so which keys a row holds is random; values with replacement,
    so two keys can share one. Chance is 1/10 a query; a model that ignores the key and picks a value
    of its row gets (1 + (pairs - 1) / 10) / pairs, 0.325 at 4 pairs. A row's queries are one answer:
    the token accuracy is per query, the answer accuracy per row (every query right).
    Reading: the lookup comes after a plateau at that key-blind level. The task recipe's lr 3e-3 did
    not leave it (RoPE: 0.373 a query after 20,000 steps of 32 rows); at lr 1e-3, within 2,000 steps,
    7 (RoPE) to 10 (Selective RoPE) of 10 seeds of a rotary encoding did, NoPE in none. So
    results/tasks-mqar trains with --lr 1e-3 --max-steps 2000 and shows the training length's
    accuracy: a seed still on the plateau shows there.
    """
    if not 1 <= keys <= len(KEYS):
        refuse(f"mqar: keys={keys}: choose 1 to {len(KEYS)} (a..p)")
    if not 1 <= pairs <= keys:
        refuse(f"mqar: pairs={pairs}: choose 1 to keys={keys} (each pair has its own key)")
    if not 1 <= queries <= pairs:
        refuse(f"mqar: queries={queries}: choose 1 to pairs={pairs} (each key is queried at most once)")
    items = pairs + queries  # 2 tokens each: `k v`, or a query's `k` and its hidden answer
    if T + 1 < 2 * items:
        refuse(f"mqar: T={T} is too short for {pairs} pairs and {queries} queries: use T >= {2 * items - 1}")
    fillers = T + 1 - 2 * items
    first_key, first_value = MQAR_VOCAB.index("a"), MQAR_VOCAB.index("0")
    tokens = np.zeros((B, T + 1), dtype=np.int64)  # "*" is id 0
    answer = np.full((B, T + 1), -1, dtype=np.int64)
    for b in range(B):
        key = first_key + rng.choice(keys, pairs, replace=False)
        value = first_value + rng.integers(0, len(VALUES), pairs)
        asked = rng.choice(pairs, queries, replace=False)  # which pairs are queried, in order
        slot = np.sort(rng.choice(items + fillers, items, replace=False))  # the items' places among fillers
        start = slot + np.arange(items)  # each item before it is 2 tokens, not 1
        tokens[b, start] = np.concatenate((key, key[asked]))
        tokens[b, start + 1] = np.concatenate((value, value[asked]))
        answer[b, start[pairs:] + 1] = 0  # the queries' values, predicted from their keys: one answer
    x, y, answer = next_token(tokens, answer)
    x[:, 1:][y[:, :-1] >= 0] = 0  # each answer in y only: a "*" follows the query's key in x
    return x, y, answer


# -----------------------------------------------------------------------------
# The tasks, with the lengths and options they train and test at


def same_length(length):
    """The row to test at `length`: T = length, the test split's options unchanged."""
    return length, {}


def copy_length(length):
    """Copy is tested at a string length: one `$ s | s .` of that length a row."""
    return 2 * length + 2, dict(min_len=length, max_len=length)


def row_length(T, train):
    """The length a task trains at: its rows' T (train: the training split's options)."""
    return T


def copy_trained(T, train):
    """Copy trains at its longest string, max_len, however long the rows that hold the strings."""
    return train["max_len"]


def listing(lengths):
    """(8, 16, 32) -> '8, 16 and 32'."""
    return " and ".join(filter(None, (", ".join(map(str, lengths[:-1])), str(lengths[-1]))))


def plural(n, word, words=None):
    return f"{n} {word if n == 1 else words or word + 's'}"


# What each task asks, as run: (the training split's options, the test split's, T, the test lengths) -> text


def copy_what(train, test, T, lengths):
    size = train["max_len"] if train["min_len"] == train["max_len"] else f"{train['min_len']}-{train['max_len']}"
    letters = "" if train["letters"] == len(LETTERS) else f" of a..{LETTERS[train['letters'] - 1]}"
    return (f"copy a string: strings of {size} letter{'s' if train['max_len'] > 1 else ''}{letters}, tested at "
            f"{listing(lengths)}")


def flipflop_what(train, test, T, lengths):
    sparser = " (sparser)" if test["p_i"] > train["p_i"] else ""
    return (f"recall the last written bit: train at p_i = {train['p_i']} in rows of {T}, test at p_i = "
            f"{test['p_i']}{sparser} at {listing(lengths)}")


def counting_what(train, test, T, lengths):
    n, top = train["variables"], train["max_value"]
    what = f"one variable's ++ up to {top}" if n == 1 else f"the ++ of {n} variables up to {top} each (one printed)"
    return (f"count {what} in {'full rows' if train['full'] else 'rows'} of {T}; tested at {listing(lengths)} in "
            f"full rows: only more pass")


def parity_what(train, test, T, lengths):
    return f"the running parity of a bit string, trained at {T}, tested at {listing(lengths)}"


def mqar_what(train, test, T, lengths):
    return (f"recall the value of each queried key: {plural(train['pairs'], 'pair')} and "
            f"{plural(train['queries'], 'query', 'queries')} of {train['keys']} keys in {T} tokens; tested at "
            f"{listing(lengths)}: longer rows, only more *")


@dataclass(frozen=True)
class Task:
    name: str
    make: Callable  # make(rng, B, T, **options) -> x, y, answer (numpy)
    vocab: tuple  # token names; a token's id is its index
    T: int  # the training row length (the model's block_size)
    lengths: tuple  # where accuracy is reported; the first is the training length
    train: dict  # the training split's options
    test: dict = field(default_factory=dict)  # what the test split changes
    at: Callable = same_length  # length -> (T, options) of the test row at that length
    trained: Callable = row_length  # (T, train options) -> the length it trains at, on the scale of `lengths`
    describe: Callable = None  # (train options, test options, T, lengths) -> what it asks, as run
    what: str = ""  # describe's text for T, lengths and the options (with_options: those of the run)

    def __post_init__(self):
        if not self.what:
            object.__setattr__(self, "what", self.describe(self.train, {**self.train, **self.test}, self.T,
                                                           self.lengths))


TASKS = {t.name: t for t in (
    Task("copy", copy_rows, COPY_VOCAB, T=64, lengths=(8, 16, 32),
         train=dict(min_len=1, max_len=8, letters=26), at=copy_length, trained=copy_trained, describe=copy_what),
    Task("flip-flop", flipflop_rows, FLIPFLOP_VOCAB, T=64, lengths=(64, 128, 256),
         train=dict(p_i=0.8), test=dict(p_i=0.98), describe=flipflop_what),
    Task("counting", counting_rows, COUNTING_VOCAB, T=64, lengths=(64, 128, 256),
         train=dict(variables=1, max_value=10, full=False), test=dict(full=True), describe=counting_what),
    Task("parity", parity_rows, PARITY_VOCAB, T=64, lengths=(64, 128, 256), train={}, describe=parity_what),
    Task("mqar", mqar_rows, MQAR_VOCAB, T=16, lengths=(16, 32, 64), train=dict(pairs=4, queries=4, keys=16),
         describe=mqar_what),
)}


# -----------------------------------------------------------------------------
# The training loop's two calls


def get_task(task):
    """A Task from its name (or the Task itself)."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        refuse(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[task]


def with_options(task, options=(), T=None, lengths=None):
    """The task with NAME=VALUE options (train.py --task-option) in both splits: with_options("counting",
    ["variables=3"]); the test split still changes what it changes (p_i, full). One row is drawn at the
    training length T and at each test length, so what cannot be made is refused now, in one line."""
    task = get_task(task)
    train, T, lengths = {**task.train, **parse_options(task, options)}, T or task.T, lengths or task.lengths
    what = task.describe(train, {**train, **task.test}, T, tuple(lengths))  # as run: these options, T, lengths
    if (train, what) != (task.train, task.what):
        task = replace(task, train=train, what=what)
    where = f"training rows of T={T} tokens"
    try:
        batch(task, 1, T, 0)
        for length in lengths:
            T_test, test_options = task.at(length)
            where = (f"test length {length}{f' (rows of T={T_test})' if T_test != length else ''}, one of the test "
                     f"lengths {','.join(map(str, lengths))} (train.py --eval-lens)")
            batch(task, 1, T_test, 0, "test", **test_options)
    except SystemExit as e:  # the generator's own line, with which row it could not make
        refuse(f"{where}: {str(e.code).removeprefix('tasks: ')}")
    return task


def parse_options(task, options):
    """{name: value} of NAME=VALUE texts, each value of the type of the task's own (int, float, a bool as
    true/false)."""
    task, chosen = get_task(task), {}
    for text in options or ():
        name, _, value = text.partition("=")
        kind = type(task.train.get(name))
        if name not in task.train or not value:
            refuse(f"--task-option {text!r}: {task.name}'s options are "
                   f"{', '.join(f'{k}={v}' for k, v in task.train.items()) or 'none'} (NAME=VALUE)")
        try:
            chosen[name] = {"true": True, "false": False}[value.lower()] if kind is bool else kind(value)
        except (KeyError, ValueError):
            refuse(f"--task-option {text!r}: {name} takes {'true or false' if kind is bool else kind.__name__ + 's'}")
    return chosen


def batch(task, B, T, rng, split="train", **options):
    """B rows of T tokens: x, y, answer as torch int64 (B, T).

    rng: a seed or a numpy Generator (the same seed gives the same batch). split "train" or "test"
    picks the task's options; **options override them (copy: min_len, max_len, letters; flip-flop:
    p_i; counting: variables, max_value, full; mqar: pairs, queries, keys). Answer ids are unique over
    the batch, in reading order.
    """
    task = get_task(task)
    if split not in ("train", "test"):
        refuse(f"split={split!r}: choose train or test")
    unknown = set(options) - set(task.train) - set(task.test)
    if unknown:
        refuse(f"{task.name} has no option {', '.join(sorted(unknown))}; "
               f"its options: {', '.join(task.train) or 'none'}")
    if B < 1 or T < 1:
        refuse(f"B={B}, T={T}: both must be >= 1")
    chosen = {**task.train, **(task.test if split == "test" else {}), **options}
    x, y, answer = task.make(np.random.default_rng(rng), B, T, **chosen)
    per_row = answer.max(axis=1) + 1  # answers in each row (ids 0 .. n-1)
    first = np.cumsum(per_row) - per_row  # the id the row's first answer takes in the batch
    answer = np.where(answer >= 0, answer + first[:, None], -1)
    return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in (x, y, answer))


def accuracy(logits, y, answer):
    """Accuracy over the targets (y >= 0): per token, and per whole answer (right only if every
    token of it is). logits (B, T, V) or predicted ids (B, T). Returns the two shares and the counts
    they are over, so several batches can be pooled; a share is nan where there is nothing to count."""
    predicted = logits.argmax(dim=-1) if logits.is_floating_point() else logits
    scored = y >= 0
    right = (predicted == y)[scored]
    names, which = answer[scored].unique(return_inverse=True)
    wrong = torch.zeros(len(names), device=y.device).index_add_(0, which, (~right).float())  # per answer
    return dict(token=right.float().mean().item(), answer=(wrong == 0).float().mean().item(),
                tokens=int(scored.sum()), answers=len(names))


# -----------------------------------------------------------------------------
# For train.py --task: batches drawn on the fly, and accuracy on the test split by length

TEST_SEED, TEST_ROWS = 1234, 512  # the same test rows for every run and every evaluation


class Loader:
    """Training batches of a task with the interface of train.py's TokenLoader: next_batch() -> (x, y), and a
    state a checkpoint keeps. Every rank draws the whole world's batch and keeps its own B rows."""

    def __init__(self, task, B, T, rank, world, seed):
        self.task, self.B, self.T, self.rank, self.world = get_task(task), B, T, rank, world
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def next_batch(self):
        x, y, _ = batch(self.task, self.world * self.B, self.T, self.rng)
        return x[self.rank * self.B:(self.rank + 1) * self.B], y[self.rank * self.B:(self.rank + 1) * self.B]

    def state_dict(self):
        return dict(rng=self.rng.bit_generator.state)

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


@torch.no_grad()
def evaluate(model, task, lengths, B, device, autocast, rows=TEST_ROWS):
    """{length: loss, acc (whole answers right), token_acc} on `rows` test rows at each length."""
    task, results = get_task(task), {}
    model.eval()
    for length in lengths:
        T, options = task.at(length)
        rng = np.random.default_rng((TEST_SEED, length))
        nats = tokens = right = answers = whole = 0
        for start in range(0, rows, B):
            x, y, answer = (a.to(device) for a in batch(task, min(B, rows - start), T, rng, "test", **options))
            with autocast:
                logits, loss = model(x, y)
            a = accuracy(logits.float(), y, answer)
            nats, tokens = nats + loss.item() * a["tokens"], tokens + a["tokens"]
            right, answers, whole = right + a["token"] * a["tokens"], answers + a["answers"], whole + a["answer"] * a["answers"]
        results[length] = dict(loss=nats / tokens, acc=whole / answers, token_acc=right / tokens)
    model.train()
    return results


if __name__ == "__main__":
    parser = cli.Parser(description="Print an example row of each task (or of one), with its targets.")
    parser.add_argument("task", nargs="?", choices=list(TASKS), help="one task; default: all")
    parser.add_argument("--T", type=cli.positive, default=None, help="row length (default: the task's)")
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--seed", type=cli.seed, default=0)
    args = parser.parse_args()
    for name in [args.task] if args.task else TASKS:
        task = with_options(name, (), args.T)  # its text for rows of --T
        x, y, answer = batch(task, 1, args.T or task.T, args.seed, args.split)
        targets = " ".join(task.vocab[t] if t >= 0 else "_" for t in y[0].tolist())
        print(f"{name}: {task.what}\n  x  {decode(task.vocab, x[0].tolist())}\n  y  {targets}\n")
