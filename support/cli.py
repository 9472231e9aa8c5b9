"""
The command-line conventions every script here shares (support module).

One way to check a flag: an argparse `type=` from this file, so a bad value is refused while the
command line is read, before anything is built or written. One way to fail: `Parser` turns every
argparse error into one line, `prog: --flag VALUE: must be ...`, with no usage block.
"""

import argparse
import math
import re
import shlex


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors; abbreviations are off, so --res is not taken for --resume."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        # "argument --lr: nan: must be ..." -> "--lr nan: must be ..."
        message = re.sub(r"^argument (-[\w-]+)(?:/[\w/-]+)?: ", r"\1 ", message)
        raise SystemExit(f"{self.prog}: {message}")


def checked(convert, ok, what):
    """An argparse type: convert(text), then ok(value), else the error '<text>: must be <what>'."""
    def parse(text):
        try:
            value = convert(text)
            good = bool(ok(value))
        except (ValueError, OverflowError, TypeError):
            good = False
        if not good:
            raise argparse.ArgumentTypeError(f"{text}: must be {what}")
        return value
    return parse


def integer(least=1):
    return checked(int, lambda v: v >= least, f"an integer >= {least}")


def parse_count(text):
    """'100M', '1B', '50_000', '2k', '1e6' -> int: a count of tokens, files or steps."""
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}.get(text[-1:].lower(), 1)
    value = float((text[:-1] if scale > 1 else text).replace("_", "")) * scale
    if value != int(value):
        raise ValueError(text)
    return int(value)


def parse_lengths(text):
    """'512,1024,2048' -> [512, 1024, 2048]."""
    return [int(s) for s in text.split(",")]


positive = integer(1)
natural = integer(0)
count = checked(parse_count, lambda v: v >= 1, "a positive whole number (examples: 1000, 50k, 100M, 1B)")
processes = checked(int, lambda v: v >= 1, "a positive whole number of processes, e.g. 2")
lengths = checked(parse_lengths, lambda v: v and min(v) >= 1, "comma-separated positive lengths, e.g. 512,1024")
seed = checked(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32) (numpy's seed range)")
rate = checked(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
amount = checked(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
fraction = checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
device = checked(str, lambda v: re.fullmatch(r"cpu|mps|cuda(:\d+)?", v), "cpu, cuda, cuda:N or mps")


def command(*words):
    """A command line to print for the user to paste: every word shell-quoted."""
    return shlex.join(str(w) for w in words)
