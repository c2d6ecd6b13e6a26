"""Checks that guard the package's structure (docs/design.md, style: one owner per file format,
no import cycles, lazy imports say why, a public API per module).

Each check is a small function over source text, so each is also tested on a made-up example
that must fail: a check that cannot fail guards nothing.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "alseg"


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.as_posix()


def _sources(*roots: Path) -> list[Path]:
    return sorted(f for root in roots for f in root.rglob("*.py"))


# --------------------------------------------------------------------------- import cycles


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports, anywhere in the file (also inside functions).

    ``from a.b import c`` counts as an import of ``a.b`` and, when ``a.b.c`` is a module, of that
    module too. A module importing its own package (``__init__``) does not count: the package
    is being imported already.
    """
    files = {module_name(f, root): f for f in _sources(root)}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        base = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")[: len(base.split(".")) - node.level + 1]
                    source = ".".join(parts + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [source] + [f"{source}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                if t in files and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycle_between_alseg_modules():
    cycles = import_cycles(import_graph(PACKAGE))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_import_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = _write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "a.py": "from pkg.b import f\n",
            "b.py": "def f():\n    from . import c  # lazy: start-up\n",
            "c.py": "import pkg.a\n",
            "d.py": "import pkg\nfrom pkg.a import f\n",
        },
    )
    assert import_cycles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.c"]]


# --------------------------------------------------------------------------- package layers

LAYERS = [
    # the foundation: plain modules every layer may use
    "errors",
    "seeds",
    "runtime",
    "progress",
    "atomic",
    # the pipeline, bottom-up (docs/layout.md draws it)
    "dataset",
    "plans",
    "data",
    "model",
    "scoring",
    "strategies",
    "active",
    "trained",
    "predict",
    "report",
    "cli",
    "__main__",
]
"""alseg's top-level parts, bottom-up: each may import only the parts listed before it."""


def upward_imports(graph: dict[str, set[str]], layers: list[str]) -> list[str]:
    """Imports from a part to a part listed after it (or to one not listed at all), as
    ``"importer -> imported"``; the package's own ``__init__`` counts as no part."""
    rank = {name: i for i, name in enumerate(layers)}

    def part(module: str) -> str | None:
        bits = module.split(".")
        return bits[1] if len(bits) > 1 else None

    found = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            a, b = part(src), part(dst)
            if a is None or b is None or a == b:
                continue
            if a not in rank or b not in rank or rank[b] > rank[a]:
                found.append(f"{src} -> {dst}")
    return found


def test_packages_import_only_the_layers_below_them():
    graph = import_graph(PACKAGE)
    parts = {m.split(".")[1] for m in graph if m.count(".")}
    assert parts <= set(LAYERS), f"parts missing from LAYERS: {sorted(parts - set(LAYERS))}"
    upward = upward_imports(graph, LAYERS)
    assert not upward, "imports that point up the layers: " + "; ".join(upward)


def test_layer_check_finds_an_upward_import_inside_a_function(tmp_path):
    pkg = _write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "def f():\n    from pkg.high.b import g  # lazy: start-up\n",
            "high/__init__.py": "",
            "high/b.py": "from pkg.low.a import f\ndef g():\n    return f\n",
            "top.py": "import pkg.high.b\n",
        },
    )
    graph = import_graph(pkg)
    assert upward_imports(graph, ["low", "high", "top"]) == ["pkg.low.a -> pkg.high.b"]
    assert upward_imports(graph, ["low", "high"]) == [  # an unlisted part is flagged
        "pkg.low.a -> pkg.high.b",
        "pkg.top -> pkg.high.b",
    ]
    assert upward_imports(graph, ["high", "low", "top"]) == ["pkg.high.b -> pkg.low.a"]


# --------------------------------------------------------------------------- imports inside functions

LAZY_REASON = re.compile(r"\blazy\b|\blazily\b|\bstart-up\b|\bimport cycle\b", re.IGNORECASE)
"""The convention: an import inside a function carries a comment saying why, and the comment
says "lazy" (or "start-up", or "import cycle"), e.g. ``import torch  # lazy: ...``. The comment
goes on the import's line, on any line of a run of consecutive imports, or on the comment
lines just above that run."""

LAZY_IMPORT_NOT_YET_CHECKED: tuple[str, ...] = ()
"""Paths not checked yet (none: every module is)."""


def _comments(source: str) -> dict[int, str]:
    return {
        tok.start[0]: tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }


def unexplained_lazy_imports(path: Path) -> list[str]:
    """``file:line: import`` for each run of imports inside a function without a reason."""
    source = path.read_text()
    lines, comments = source.splitlines(), _comments(source)
    found = []
    for fn in ast.walk(ast.parse(source, str(path))):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            for field in ("body", "orelse", "finalbody", "handlers"):
                block = getattr(node, field, None)
                if not isinstance(block, list):
                    continue
                runs: list[list[ast.stmt]] = []
                for stmt in block:
                    if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        runs.append([])
                    elif runs and runs[-1]:
                        runs[-1].append(stmt)
                    else:
                        runs.append([stmt])
                for run in filter(None, runs):
                    first, last = run[0].lineno, run[-1].end_lineno
                    above = first - 1
                    while above >= 1 and lines[above - 1].lstrip().startswith("#"):
                        above -= 1
                    said = " ".join(comments.get(i, "") for i in range(above + 1, last + 1))
                    if not LAZY_REASON.search(said):
                        found.append(f"{_rel(path)}:{first}: {lines[first - 1].strip()}")
    return sorted(set(found))


def test_imports_inside_functions_say_why():
    files = [f for f in _sources(PACKAGE, REPO / "benchmarks") if not _rel(f).startswith(LAZY_IMPORT_NOT_YET_CHECKED)]
    offenders = [line for f in files for line in unexplained_lazy_imports(f)]
    assert not offenders, "imports inside functions without a '# lazy: why' comment:\n" + "\n".join(offenders)


def test_lazy_import_check_needs_the_reason(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import os\n"
        "def ok():\n"
        "    # lazy: torch is slow to import\n"
        "    import torch\n"
        "    from x import y\n"
        "\n"
        "    from alseg import z\n"
        "def ok_inline():\n"
        "    import torch  # start-up\n"
        "def bad():\n"
        "    import numpy as np  # imported here\n"
        "def bad_later():\n"
        "    import sklearn  # lazy: slow\n"
        "    x = 1\n"
        "    if x:\n"
        "        import scipy\n"
    )
    assert [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in unexplained_lazy_imports(f)] == ["11", "16"]


# --------------------------------------------------------------------------- one owner per file format

FORMAT_OWNERS = {
    # the preprocessed cache
    re.compile(r"_seg\.npy"): {"alseg/data/cache.py"},
    re.compile(r"\bmanifest\.json\b"): {
        "alseg/data/cache.py",
        "alseg/active/rundir.py",  # not the cache's: the annotation package's (RUN/annotate/round_XXX/), its own format
    },
    # the run directory
    re.compile(r"\bstate\.json\b"): {"alseg/active/rundir.py"},
    re.compile(r"\bconfig\.json\b"): {"alseg/active/rundir.py"},
    re.compile(r"\bround_"): {"alseg/active/rundir.py"},
    # the plan folder
    re.compile(r"\bplans\.json\b"): {
        "alseg/plans/models.py",
        "alseg/active/rundir.py",  # the run directory's own copy of the plan (RUN/plans.json)
    },
    re.compile(r"\bfingerprint\.json\b"): {"alseg/plans/models.py"},
    # alseg train's output folder
    re.compile(r"\b(model|last)\.ckpt\b"): {"alseg/model/train.py"},
    re.compile(r"^checkpoints$"): {
        "alseg/model/train.py",
        "alseg/active/rundir.py",  # the run directory's RUN/checkpoints/round_XXX.ckpt
    },
    # the run directory's records: round files (RoundRecord) and metrics.csv rows (MetricsRow), whose
    # keys only their models spell; everyone else reads and writes the typed fields
    re.compile(r"^labelled_voxels_per_class$"): {"alseg/active/rundir.py"},
    re.compile(r"^agreement_mean$"): {"alseg/active/rundir.py"},
    re.compile(r"^seconds_(train|eval|score|select)$"): {
        "alseg/active/rundir.py",
        "alseg/active/experiments/redundancy.py",  # the key of its own result JSON (--json), not metrics.csv's
    },
    re.compile(r"\bmetrics\.csv\b"): {
        "alseg/active/rundir.py",
        "alseg/model/train.py",  # alseg train's output folder (OUT/metrics.csv), not the run directory's
    },
}

FORMAT_NAMES_NOT_YET_MOVED: set[tuple[str, str]] = set()
"""Names spelled outside their owner in files maintained elsewhere for now; remove an entry
when it is fixed (the test then keeps it fixed)."""


def _docstring_nodes(tree: ast.AST) -> set[int]:
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def format_names_outside_owner(
    path: Path, owners: dict[re.Pattern, set[str]], rel: str | None = None
) -> set[tuple[str, str, int]]:
    """``(file, pattern, line)`` for each string literal in code (not docstrings, not prose with
    spaces such as help texts and error messages) that spells a file name of a format the file
    does not own. Parts of f-strings count."""
    rel = rel or _rel(path)
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstring_nodes(tree)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if re.search(r"\s", node.value):
                continue  # prose naming a file for the reader, not a name the code builds
            for pattern, owner_files in owners.items():
                if pattern.search(node.value) and rel not in owner_files:
                    found.add((rel, pattern.pattern, node.lineno))
    return found


def test_each_file_format_is_spelled_by_its_owner_only():
    found = set().union(*(format_names_outside_owner(f, FORMAT_OWNERS) for f in _sources(PACKAGE)))
    offenders = sorted(hit for hit in found if hit[:2] not in FORMAT_NAMES_NOT_YET_MOVED)
    assert not offenders, "file names spelled outside their owner:\n" + "\n".join(
        f"{f}:{n}: {p}" for f, p, n in offenders
    )
    fixed = FORMAT_NAMES_NOT_YET_MOVED - {hit[:2] for hit in found}
    assert not fixed, f"fixed, remove from FORMAT_NAMES_NOT_YET_MOVED: {sorted(fixed)}"


def test_format_owner_check_finds_a_stray_name(tmp_path):
    f = (
        _write(
            tmp_path,
            {
                "m.py": (
                    '"""Writes RUN/state.json."""\n'
                    'HELP = "see state.json for the labelled items"\n'
                    "def path(run, r):\n"
                    '    return run / "state.json", run / f"round_{r:03d}.json", "foreground_x"\n'
                )
            },
        )
        / "m.py"
    )
    owners = {re.compile(r"\bstate\.json\b"): {"owner.py"}, re.compile(r"\bround_"): {"owner.py"}}
    assert sorted(format_names_outside_owner(f, owners, rel="m.py")) == [
        ("m.py", r"\bround_", 4),
        ("m.py", r"\bstate\.json\b", 4),
    ]
    assert not format_names_outside_owner(f, owners, rel="owner.py")


# --------------------------------------------------------------------------- no "spec" as a document

SPEC_DOCUMENT = re.compile(r"\bspec(s|\.md)?\b", re.IGNORECASE)


def spec_mentions(source: str, name: str = "<source>") -> list[str]:
    """Comments and docstrings that cite a "spec" document (code names such as a ``spec``
    argument are not comments and do not count)."""
    found = [(line, text) for line, text in _comments(source).items() if SPEC_DOCUMENT.search(text)]
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and SPEC_DOCUMENT.search(doc):
                found.append((node.body[0].lineno, doc.strip().splitlines()[0]))
    return [f"{name}:{line}: {text.strip()[:100]}" for line, text in sorted(found)]


def test_no_comment_or_docstring_cites_a_spec():
    offenders = [hit for f in _sources(PACKAGE) for hit in spec_mentions(f.read_text(), _rel(f))]
    assert not offenders, "comments/docstrings citing a spec (say what and why instead):\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    ("source", "hits"),
    [
        ('"""As the spec says."""\n', 1),
        ("x = 1  # spec §3.2\n", 1),
        ("def f():\n    '''See Spec.md.'''\n", 1),
        ("# special, specific, treespec, LeafSpec, inspect, specification\n", 0),
        ("def parse(spec: str):\n    return spec.split(',')\n", 0),
    ],
)
def test_spec_check_tells_documents_from_words(source, hits):
    assert len(spec_mentions(source)) == hits


# --------------------------------------------------------------------------- __all__


def public_modules_without_all(root: Path) -> list[str]:
    missing = []
    for f in _sources(root):
        if f.name.startswith("_") or f.name == "cli.py":
            continue
        tree = ast.parse(f.read_text(), str(f))
        names = {
            t.id
            for node in tree.body
            for t in (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            if isinstance(t, ast.Name)
        }
        if "__all__" not in names:
            missing.append(_rel(f))
    return missing


def test_public_modules_define_all():
    missing = public_modules_without_all(PACKAGE)
    assert not missing, "public modules without __all__: " + ", ".join(missing)


def test_all_check_finds_a_module_without_it(tmp_path):
    _write(
        tmp_path / "pkg",
        {"__init__.py": "", "_private.py": "", "cli.py": "", "ok.py": "__all__ = []\n", "bad.py": "x = 1\n"},
    )
    assert [Path(m).name for m in public_modules_without_all(tmp_path / "pkg")] == ["bad.py"]


# --------------------------------------------------------------------------- the loop driver stays small

DRIVER_MAX_LINES = 300
"""LoopDriver keeps the round sequence; selection, oracles, evaluation and resume checks live
with their owners (alseg.active.selection, .oracles, .evaluation, .resume)."""


def class_lines(source: str, name: str) -> int:
    """Lines of class ``name`` in ``source`` (decorators excluded), 0 when there is none."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node.end_lineno - node.lineno + 1
    return 0


def test_loop_driver_keeps_only_the_round_sequence():
    lines = class_lines((PACKAGE / "active" / "loop.py").read_text(), "LoopDriver")
    assert 0 < lines < DRIVER_MAX_LINES, f"LoopDriver has {lines} lines; move a step to the module that owns it"


def test_class_lines_counts_a_class_and_misses_none():
    source = "x = 1\n\nclass A:\n    def f(self):\n        return 1\n\n    def g(self):\n        pass\n\ny = 2\n"
    assert class_lines(source, "A") == 6
    assert class_lines(source, "B") == 0
