"""walkthrough.py: it runs clean as a script, every check in it runs, it draws its three pictures,
each cell stands alone, and it uses carope.py's own code rather than copies of it."""

import ast
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "walkthrough.py")


def source():
    with open(SCRIPT, encoding="utf-8") as f:
        return f.read()


def cells():
    """The percent-format cells: [(kind, text)], kind "markdown" or "code", in file order."""
    out = []
    for line in source().splitlines(keepends=True):
        if line.startswith("# %%"):
            out.append(["markdown" if "[markdown]" in line else "code", ""])
        else:
            assert out, "walkthrough.py must start with a '# %%' cell marker"
            out[-1][1] += line
    return [tuple(c) for c in out]


def check_calls(tree):
    """Every call of check(...) in the tree."""
    calls = (n for n in ast.walk(tree) if isinstance(n, ast.Call))
    return [n for n in calls if isinstance(n.func, ast.Name) and n.func.id == "check"]


def test_walkthrough_runs_clean_and_every_check_runs(tmp_path):
    # from another folder, as a user might run it; 300 s because CI's 2 cores are busy with other tests
    r = subprocess.run([sys.executable, SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, f"walkthrough.py failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    last = r.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"walkthrough: (\d+) checks passed in \d+ s", last)
    assert m, f"the last line should count the checks, got: {last!r}"
    n_calls = len(check_calls(ast.parse(source())))
    # each check() call site runs exactly once (none sits in a loop or a skipped branch)
    assert int(m.group(1)) == n_calls
    assert len(re.findall(r"^  checked: ", r.stdout, flags=re.M)) == n_calls
    # its three pictures, under out/walkthrough/ of the folder it ran from, as whole PNG files
    pictures = tmp_path / "out" / "walkthrough"
    assert sorted(p.name for p in pictures.iterdir()) == ["clock.png", "rotation.png", "turns.png"]  # no .tmp left
    for name in ("turns.png", "rotation.png", "clock.png"):
        png = (pictures / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", f"{name} is not a PNG"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width >= 1000 and height >= 500, f"{name} is {width} x {height} pixels"
        assert png[-8:-4] == b"IEND", f"{name} is cut short"
        assert f"  drew {os.path.join('out', 'walkthrough', name)}" in r.stdout.splitlines()


def test_cells_parse_alone_and_alternate_text_and_check():
    kinds = [kind for kind, _ in cells()]
    # a title, the imports, then eleven ideas: each a text cell followed by a code cell
    assert kinds == ["markdown", "code"] + ["markdown", "code"] * 11
    for n, (kind, text) in enumerate(cells()):
        tree = compile(text, f"walkthrough.py cell {n}", "exec", ast.PyCF_ONLY_AST)  # each cell parses on its own
        if kind == "markdown":  # text only: comment lines and blank lines, nothing that runs
            assert tree.body == [], f"markdown cell {n} holds code"
            assert all(not line.strip() or line.startswith("#") for line in text.splitlines())
    ideas = [text for kind, text in cells()[2:] if kind == "markdown"]
    assert [re.search(r"^# ## (\d+)\. ", t, flags=re.M).group(1) for t in ideas] == [str(i) for i in range(1, 12)]
    code = [text for kind, text in cells()[2:] if kind == "code"]
    for i, text in enumerate(code, start=1):
        assert check_calls(ast.parse(text)), f"idea {i}'s cell checks nothing"


def test_uses_carope_own_code_not_copies():
    with open(os.path.join(ROOT, "carope.py"), encoding="utf-8") as f:
        carope_names = {n.name for n in ast.parse(f.read()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    tree = ast.parse(source())
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert not defined & carope_names, f"walkthrough.py redefines carope.py's {sorted(defined & carope_names)}"
    imports = (n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "carope")
    imported = {a.name for n in imports for a in n.names}
    assert {"rotate", "rope_frequencies", "RoPE", "CARoPE", "GPT", "GPTConfig", "LayerCache"} <= imported


def test_save_writes_the_file_and_shows_it_only_in_a_notebook(tmp_path, monkeypatch):
    """The pictures' helper, taken from walkthrough.py as it stands: a script writes the PNG and
    closes the figure; under an IPython kernel (a notebook) it also shows the figure inline."""
    tree = ast.parse(source())
    helper = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "save")
    monkeypatch.chdir(tmp_path)
    for kernel in (False, True):
        calls = []
        fake_plt = type("plt", (), {"show": staticmethod(lambda: calls.append("show")),
                                    "close": staticmethod(lambda fig: calls.append("close"))})
        fake_sys = type("sys", (), {"modules": {"ipykernel": object()} if kernel else {}})
        fig = type("fig", (), {"savefig": lambda self, path, **kw: open(path, "wb").write(b"png")})()
        scope = {"plt": fake_plt, "sys": fake_sys, "os": os, "PICTURES": tmp_path / "pictures"}
        exec(compile(ast.Module([helper], []), "walkthrough.py", "exec"), scope)
        scope["save"](fig, "a.png")
        assert (tmp_path / "pictures" / "a.png").read_bytes() == b"png"
        assert calls == (["show"] if kernel else ["close"])


def test_triton_interpret_left_in_the_environment_is_not_used(tmp_path):
    """TRITON_INTERPRET=1 (left over from the kernel tests) would run CARoPE's fused kernel in Python on the CPU,
    ~100x slower: the walkthrough's first cell drops it, with a note, before carope imports the kernel file."""
    first = next(text for kind, text in cells() if kind == "code")
    probe = first + "\nfrom support import carope_triton\nprint('interpret', carope_triton.INTERPRET)\n"
    (tmp_path / "probe.py").write_text(probe)
    r = subprocess.run([sys.executable, str(tmp_path / "probe.py")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "interpret False" in r.stdout and "note: TRITON_INTERPRET=1 is set" in r.stdout, r.stdout


def test_help_says_what_it_does_and_an_unknown_flag_is_one_line_with_status_2(tmp_path):
    """--help and a mistyped flag return at once: neither runs the walkthrough (nothing printed of step 1, no
    pictures drawn)."""
    run = lambda *argv: subprocess.run([sys.executable, SCRIPT, *argv], cwd=tmp_path, capture_output=True,  # noqa: E731
                                       text=True, timeout=120)
    r = run("--help")
    assert r.returncode == 0 and "eleven small steps" in r.stdout and "1. A rotation" not in r.stdout, r.stdout
    for bad in ("--bogus-flag", "extra"):
        r = run(bad)
        assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
        assert r.stderr.strip() == f"walkthrough.py: unrecognized arguments: {bad} (it takes none but --help)"
    assert not (tmp_path / "out").exists()
