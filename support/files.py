"""
Files and folders written safely (support module): atomic writes, the temp files a killed writer leaves behind,
the lock that keeps two processes out of one folder, and the check of an --out-dir. prepare_data.py, train.py
(its run folders and checkpoints) and compare.py write through these.

Every file is written atomically (a temp file NAME.carope-save-PID.tmp, then a rename), so a killed process leaves
either the old file or the new one, never half of one; remove_stale_temps clears the temp files it leaves. Only
regular files are replaced so: a device or a pipe given as a file name (/dev/null) is written in place.
Only the standard library is needed here.
"""

import errno
import hashlib
import json
import os
import re
import stat
from pathlib import Path

# -----------------------------------------------------------------------------
# writing files atomically, hashing them


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write(path, write):
    """Call write(f) on a temp file in path's directory, fsync, then rename it to path, so that path is
    either absent/old or complete, never half-written (os.replace is atomic within one filesystem).
    train.py saves its checkpoints through this too. Only a regular file is replaced: a symlink's target is, and
    a character device or a pipe (/dev/null, a terminal, >(...)) is written in place; anything else is refused."""
    if in_place(path):
        with open(path, "wb") as f:
            write(f)
        return
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)  # the link stays a link
    tmp = path.with_name(f"{path.name}.{TEMP_TAG}-{os.getpid()}.tmp")  # a name only this project writes
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: leave no temp file behind
        tmp.unlink(missing_ok=True)
        raise


def in_place(path):
    """True if path is a character device or a pipe, which a rename would replace (as root, --json /dev/null would
    replace the system's /dev/null); False for a regular file or none; OSError for a folder or a block device."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there (yet): a new regular file
        return False
    if stat.S_ISREG(mode):
        return False
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return True
    what = "a folder" if stat.S_ISDIR(mode) else "a block device" if stat.S_ISBLK(mode) else "a socket"
    raise OSError(errno.EEXIST, f"{what}, not a file: give a file name", str(path))


def _atomic_write(path, chunks):
    """atomic_write of byte chunks; returns the sha256 of what was written."""
    h = hashlib.sha256()

    def write(f):
        for chunk in chunks:
            f.write(chunk)
            h.update(chunk)
    atomic_write(path, write)
    return h.hexdigest()


def _write_json(path, obj):
    _atomic_write(path, [json.dumps(obj, indent=1).encode() + b"\n"])


TEMP_TAG = "carope-save"


def remove_stale_temps(folder):
    """Delete the temp files that atomic_write left in folder (not its subfolders) when its process was killed
    mid-save: NAME.carope-save-PID.tmp whose PID is no running process; nobody else's. Returns the removed paths."""
    if os.name == "nt" or not Path(folder).is_dir():  # on Windows os.kill(pid, 0) would terminate the process
        return []
    removed = []
    for p in sorted(Path(folder).glob(f"*.{TEMP_TAG}-*.tmp")):
        m = re.fullmatch(rf".+\.{TEMP_TAG}-(\d+)\.tmp", p.name)
        if not m or not p.is_file() or int(m[1]) in (0, os.getpid()) or pid_alive(int(m[1])):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def pid_alive(pid):
    """Whether pid may be a running process: signal 0 only checks that it exists; one under another user, or a
    number that is no pid, counts as alive (not ours to judge). pid 0 would signal our own group: never asked."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it
        return True
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True


def last_holder(folder):
    """The pid that last locked folder (FolderLock writes it into FOLDER/.lock and leaves it there), or None."""
    try:
        text = (Path(folder) / ".lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None

# -----------------------------------------------------------------------------
# folders: one writer at a time, and an --out-dir that cannot be one


class FolderLock:
    """An exclusive lock on a folder for as long as it is held (fcntl.flock on FOLDER/.lock, which records the
    holder's pid), so two processes never write one run or one build at once; without fcntl (Windows) nothing
    is locked. `with FolderLock(folder, "train.py"):` or acquire() ... release()."""

    def __init__(self, folder, tool):
        self.folder, self.tool, self.file = Path(folder), tool, None

    def acquire(self, wait=False):
        """wait=True: if another process holds the folder, say so once and wait for it (a build of seconds)."""
        try:
            import fcntl
        except ImportError:
            return self
        self.created = not self.folder.exists()  # then release() removes it again if nothing was written
        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.folder / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            if not wait:
                f.close()
                raise SystemExit(f"{self.folder} is in use by another {self.tool} (pid {holder}): wait until it is "
                                 "done, or use another folder") from None
            print(f"{self.folder} is in use by another {self.tool} (pid {holder}): waiting until it is done", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        return self

    def release(self):
        if self.file is not None:
            self.file.close()  # closing the file drops the lock
            self.file = None
            if self.created and [p.name for p in self.folder.iterdir()] == [".lock"]:
                (self.folder / ".lock").unlink(missing_ok=True)  # a run or build that stopped before its first write
                self.folder.rmdir()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def nearest_existing(path):
    """The nearest path at or above `path` that exists (absolute): where os.makedirs(path) starts writing, and
    a file there means no folder can be made."""
    parent = os.path.abspath(path)
    while not os.path.exists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    return parent


def check_out_dir(out_dir):
    """One line for an --out-dir that is a file, or lies under one, rather than [Errno 17] File exists."""
    parent = nearest_existing(out_dir)
    if os.path.exists(parent) and not os.path.isdir(parent):
        what = "it" if parent == os.path.abspath(out_dir) else parent
        raise ValueError(f"--out-dir {out_dir}: {what} is a file, not a folder; pass a folder's name")
