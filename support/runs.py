"""
A run's folder (support module): config.json, log.jsonl and ckpt.pt, and the rules that keep them.

- Nothing is written before every setting and the folder itself have been checked (check_out_dir).
- A folder holding another run is only replaced with --overwrite; a resumed run writes beside its checkpoint.
- log.jsonl gets every step, flushed; on resume it is cut back to the checkpoint's step (a torn last line,
  from a crash, is dropped).
- Ctrl-C waits for the step in progress, saves the last completed step and prints how to continue.
- A failed write (disk full, read-only) is one line saying what was kept.

A run beside a committed sweep of its recipe is in sweeps.py.
"""

import errno
import json
import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager

from support import checkpoints, files
RUN_FILES = ("log.jsonl", "config.json", "ckpt.pt")  # what a run leaves in its --out-dir


def same_file(a, b):  # also for folders; either may not exist yet
    return os.path.realpath(a) == os.path.realpath(b)


def check_out_dir(d, resume, overwrite):
    """Before the run touches anything: --out-dir must be a folder we can write, and hold no other run."""
    if not str(d).strip():
        raise SystemExit("--out-dir '': an empty name; pass a folder, e.g. --out-dir out")
    if os.path.exists(d) and not os.path.isdir(d):
        raise SystemExit(f"--out-dir {d} is a file, not a folder: pass another --out-dir")
    parent = files.nearest_existing(d)
    if not os.path.isdir(parent):
        raise SystemExit(f"--out-dir {d}: {parent} is a file, so the folder cannot be made: pass another --out-dir")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SystemExit(f"--out-dir {d}: cannot write in {parent} (read-only or no permission): "
                         f"pass another --out-dir")
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(d, f))]
    resuming_here = resume and same_file(os.path.dirname(resume) or ".", d)
    if resuming_here and overwrite:  # (into another --out-dir, --overwrite replaces the run there: a branch)
        raise SystemExit(f"--overwrite starts the run in {d} afresh, --resume {resume} continues it: drop "
                         f"--overwrite to continue it, or drop --resume and pass --out-dir {d} --overwrite to start "
                         f"it again")
    if found and not resuming_here and not overwrite:
        if "ckpt.pt" not in found:  # it stopped before its first checkpoint: there is nothing to continue
            raise SystemExit(f"{d} holds a run that ended without a checkpoint ({', '.join(found)}), so it cannot be "
                             f"continued: start it again with --overwrite, or pass another --out-dir")
        raise SystemExit(f"{d} already holds a run ({', '.join(found)}): continue it with --resume "
                         f"{os.path.join(d, 'ckpt.pt')}, replace it with --overwrite, or pass another --out-dir")


def read_log(path, resume_step, master=True):
    """The lines of a run's log.jsonl up to the checkpoint's step, so that on resume no step appears twice.
    A crash or a full disk can cut the last line short: that one is dropped; a bad line elsewhere is an error."""
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    kept = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            step = record.get("step", 0)
        except (json.JSONDecodeError, AttributeError):
            if i == len(lines) - 1:
                if master:
                    print(f"note: {path}: dropped its last line, written only in part")
                break
            raise SystemExit(f"{path}: line {i + 1} of {len(lines)} is not a log record: delete or repair that "
                             f"line, then resume again")
        if step <= resume_step:
            kept.append(line + "\n")
    return kept


class Run:
    """The folder of a run while it trains. `state(step, position)` builds the checkpoint to save and
    `position()` reads the RNG states and data position after a completed step; only rank 0 writes."""

    def __init__(self, out_dir, master, state, position, resume=None, start_step=0, given=None, world=1):
        self.out_dir, self.master, self.state, self.position = out_dir, master, state, position
        self.given, self.world, self.resume = given or {}, world, resume
        self.ckpt_path, self.log_path, self.config_path = (os.path.join(out_dir, f) for f in
                                                           ("ckpt.pt", "log.jsonl", "config.json"))
        self.done, self.after_done = start_step, position()  # the last completed step, and the state after it
        self.last_good = (resume, start_step) if resume else (None, 0)  # what a failure leaves behind
        self.interrupts, self.log_file, self.kept_log = Interrupts(), None, []
        self.lock = files.FolderLock(out_dir, "train.py")  # one writer per run folder

    def open(self, info):
        """The first write: config.json, and log.jsonl with the resumed run's lines up to its checkpoint."""
        if self.resume:
            self.kept_log = read_log(os.path.join(os.path.dirname(self.resume) or ".", "log.jsonl"), self.done,
                                     self.master)
        if not self.master:
            return
        with self.disk_errors():
            self.lock.acquire()  # then look again: a run started beside us may have finished in between
            try:
                check_out_dir(self.out_dir, self.resume, info["args"].get("overwrite"))
            except SystemExit:
                self.lock.release()
                raise
            if removed := files.remove_stale_temps(self.out_dir):
                print(f"removed {len(removed)} temp file(s) left by a killed save: {', '.join(map(str, removed))}")
            # a new run (--overwrite) first drops the old run's checkpoint, which must not outlive its log
            if os.path.exists(self.ckpt_path) and not (self.resume and same_file(self.ckpt_path, self.resume)):
                os.remove(self.ckpt_path)
            files.atomic_write(self.config_path, lambda f: f.write(json.dumps(info, indent=2).encode()))
            files.atomic_write(self.log_path, lambda f: f.write("".join(self.kept_log).encode()))
            self.log_file = open(self.log_path, "a")

    def evaluated(self, step):
        return any(r.get("type") == "eval" and r.get("step") == step for r in map(json.loads, self.kept_log))

    def log(self, *records):
        """Append records to log.jsonl, flushed so a crash loses none; a train record marks its step done."""
        with self.interrupts:  # all of them or none
            if self.master:
                with self.disk_errors():
                    self.log_file.write("".join(json.dumps(r) + "\n" for r in records))
                    self.log_file.flush()
            for r in records:
                if r["type"] == "train":
                    self.done, self.after_done = r["step"], self.position()

    def save(self):
        """Checkpoint the last completed step (rank 0 writes; every rank remembers it as the last good one)."""
        if self.master and self.last_good != (self.ckpt_path, self.done):
            with self.disk_errors():
                checkpoints.save_checkpoint(self.ckpt_path, self.state(self.done, self.after_done))
        self.last_good = (self.ckpt_path, self.done)

    def close(self):
        if self.log_file is not None:
            self.log_file.close()
        self.lock.release()

    def __enter__(self):
        self.interrupts.install()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not KeyboardInterrupt:
            self.interrupts.uninstall()
            self.lock.release()
            return False
        # a signal in the loop: save step `done` (unless that checkpoint exists already) and say how to go on
        self.interrupts.ignore()
        signum = self.interrupts.signum or signal.SIGINT
        try:
            if self.master:  # rank 0 saves; the weights are the same on every rank after a completed step
                self.save()
                self.close()
                name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
                print(f"interrupted{name}: step {self.done} is saved in {self.ckpt_path}; continue with: "
                      f"{resume_command(self.ckpt_path, self.given, self.world)}", file=sys.stderr)
        finally:
            self.interrupts.uninstall()  # the handlers from before the run
            self.lock.release()
        raise SystemExit(128 + signum)  # 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP

    def kept(self):
        """What a failure now leaves behind, for its message."""
        return f"the last good checkpoint is {self.last_good[0]} (step {self.last_good[1]})" if self.last_good[0] \
            else "no checkpoint was saved yet (--ckpt-every N keeps one)"

    @contextmanager
    def disk_errors(self):
        """A failed write of the log or a checkpoint (ENOSPC, EROFS, EIO...) as one line saying what was kept."""
        try:
            yield
        except FileNotFoundError as e:  # not the disk: the folder went away under the run
            raise SystemExit(f"{self.out_dir}: {e.filename or 'a file'} vanished during the run (was the folder "
                             f"deleted or moved?); {self.kept()}")
        except OSError as e:
            raise SystemExit(f"{write_failure(e)} {self.out_dir}: {e.strerror or e}; {self.kept()}")
        except RuntimeError as e:  # torch.save's own writer (inline_container.cc) raises this when the disk fills,
            cause = next((c for c in causes(e) if isinstance(c, OSError)), None)  # the OSError chained under it
            if cause is None and "write" not in str(e).lower():
                raise
            raise SystemExit(f"{write_failure(cause)} {self.out_dir}: "
                             f"{cause.strerror if cause and cause.strerror else str(e).splitlines()[0]}; {self.kept()}")


def causes(e):
    """e and the exceptions chained under it (raise ... from, or raised while handling another)."""
    seen = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def write_failure(e):
    """What a failed write is called: 'disk full' for ENOSPC (or a quota), 'cannot write' for another errno, both
    when the error says neither (torch.save's own RuntimeError with nothing chained under it)."""
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "disk full: cannot write"
    return "cannot write" if code else "disk full / cannot write"


class Interrupts:
    """While installed, Ctrl-C (SIGINT), SIGTERM (schedulers, `timeout`, preemption) and SIGHUP (a closed
    terminal) raise KeyboardInterrupt, except inside `with interrupts:` blocks (which nest), where they are
    held until the outermost ends: an optimizer step and its log line happen entirely or not at all, so what
    is saved is exactly the last completed step. `signum` says which signal it was."""
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self):
        self.holding, self.pending, self.signum = 0, False, None
        self.previous = {}

    def install(self):
        # only the main thread can set handlers; a run started with a signal ignored (nohup, &) keeps it so
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.SIGNALS:
            default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            if signal.getsignal(sig) is default:
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    @property
    def installed(self):
        return bool(self.previous)

    def ignore(self):
        """While a save after a signal runs: a second signal must not cut it short."""
        for sig in self.previous:
            signal.signal(sig, signal.SIG_IGN)

    def uninstall(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handler(self, signum, frame):
        self.signum = signum
        if self.holding:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def __enter__(self):
        self.holding += 1

    def __exit__(self, exc_type, *_):
        self.holding -= 1
        if self.pending and not self.holding and exc_type is None:
            self.pending = False
            raise KeyboardInterrupt


def resume_command(ckpt_path, given, world):
    """The command that continues a run from ckpt_path (its settings come from the checkpoint)."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
    try:
        script = os.path.relpath(script)
    except ValueError:  # another drive on Windows
        pass
    launcher = ["torchrun", f"--nproc_per_node={world}"] if world > 1 else ["python"]
    machine = [w for k in ("device", "dtype") if k in given for w in (f"--{k}", given[k])]
    if "compile" in given:
        machine.append("--compile" if given["compile"] else "--no-compile")
    return shlex.join(launcher + [script, "--resume", ckpt_path] + machine)
