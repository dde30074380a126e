"""Static rules the grader applies to a learner's solution cells before running them.
Chapter: every ``solutions/<stem>`` exercises page (the grading rules in README).

Two kinds of finding, each with a one-line reason:

* **tampering** — code that reaches into the interpreter, IPython, the grader or another
  module's attributes (``exec``, ``get_ipython``, ``sys.modules``, ``setattr``, assigning
  ``np.isclose = …``, importing ``importlib``/``os``/``IPython`` …). Solutions to these
  exercises never need any of it; a notebook with such a cell earns 0 and is not run.
* **answer leaks and statement rules** — a solution that uses the course's implementation of an
  exercise (the names in the solution cell's ``forbid`` list, resolved through the cell's
  imports and aliases, also as ``getattr`` strings), or breaks a rule its statement names
  (``no_gather``: never build ``W[idx]``). The exercise earns 0.

The analysis is syntactic: it resolves names, attributes and imports, not values computed at
run time. README's threat model says what that leaves open.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

#: how the course names its references (``formats.dense_to_csr_ref``, ``ic.spmv_oracle``)
_REFERENCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*_(ref|oracle)")

#: call targets that evaluate code or reach frames/namespaces
BANNED_NAMES = {"exec", "eval", "compile", "__import__", "globals", "locals", "vars", "setattr",
                "delattr", "open", "breakpoint", "get_ipython", "__builtins__"}
#: attributes that expose interpreter internals or IPython's execution machinery
BANNED_ATTRS = {"__dict__", "__globals__", "__builtins__", "__code__", "__closure__",
                "__subclasses__", "__bases__", "__mro__", "__getattribute__", "__setattr__",
                "__class__", "__module__", "__loader__", "__spec__",
                "f_globals", "f_locals", "f_back", "f_builtins", "tb_frame", "gi_frame",
                "cr_frame", "ast_transformers", "input_transformers_cleanup",
                "input_transformers_post", "set_custom_exc", "run_cell", "run_line_magic",
                "run_cell_magic", "register_magic_function", "user_ns", "settrace",
                "setprofile", "_getframe", "excepthook", "meta_path", "path_hooks",
                # modules smuggled in as attributes of another module (np.os, torch.sys, …)
                "sys", "os", "builtins", "importlib", "subprocess"}
#: modules a solution may not import (the first component, or the full dotted name)
BANNED_MODULES = {"builtins", "importlib", "ctypes", "gc", "inspect", "os", "sys", "subprocess",
                  "multiprocessing", "signal", "pickle", "marshal", "types", "code", "codeop",
                  "runpy", "IPython", "ipykernel", "jupyter_client", "nbval", "pytest", "unittest",
                  "shutil", "pathlib", "io", "tempfile", "socket", "dill", "cloudpickle",
                  "course_lib.grading", "course_lib.grade", "course_lib.grade_rules",
                  "course_lib.exercises"}


@dataclass(frozen=True)
class Finding:
    kind: str  # "tamper" | "forbidden" | "rule"
    exercise: str
    message: str


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ['a', 'b', 'c'] for a chain of names/attributes; None otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


def aliases(trees: list[ast.AST]) -> dict[str, str]:
    """Local name → dotted module path, from imports and plain ``x = module.attr`` assignments."""
    table: dict[str, str] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        table[a.asname] = a.name
                    else:
                        table[a.name.split(".")[0]] = a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    table[a.asname or a.name] = f"{node.module}.{a.name}"
    for tree in trees:  # second pass: aliases of aliases (F = formats; f = F.dense_to_csr_ref)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                path = _resolve(node.value, table)
                if path:
                    table[node.targets[0].id] = path
    return table


def _resolve(node: ast.AST, table: dict[str, str]) -> str | None:
    """The dotted path an expression names, through the alias table (or None)."""
    if isinstance(node, ast.Call) and _dotted(node.func) == ["getattr"] and len(node.args) >= 2 \
            and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
        base = _resolve(node.args[0], table)
        return f"{base}.{node.args[1].value}" if base else None
    parts = _dotted(node)
    if not parts or parts[0] not in table:
        return None
    return ".".join([table[parts[0]], *parts[1:]])


def _matches(path: str, forbidden: str) -> bool:
    return path == forbidden or path.startswith(forbidden + ".")


def _banned_module(name: str) -> bool:
    return name in BANNED_MODULES or name.split(".")[0] in BANNED_MODULES


def tampering(tree: ast.AST, table: dict[str, str], exercise: str) -> list[Finding]:
    """Findings of code that reaches the interpreter, IPython, the grader or module attributes."""
    found = []

    def flag(what: str):
        found.append(Finding("tamper", exercise, f"uses {what}, which solutions may not use"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in BANNED_NAMES:
            flag(f"`{node.id}`")
        elif isinstance(node, ast.Attribute) and node.attr in BANNED_ATTRS:
            flag(f"`.{node.attr}`")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if _banned_module(a.name):
                    flag(f"`import {a.name}`")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or _banned_module(module) or any(
                    _banned_module(f"{module}.{a.name}") for a in node.names):
                flag(f"`from {'.' * node.level}{module} import …`")
            if any(a.name == "*" for a in node.names):
                flag(f"`from {module} import *`")
        elif isinstance(node, ast.Call) and _dotted(node.func) == ["getattr"] and (
                len(node.args) < 2 or not isinstance(node.args[1], ast.Constant)):
            flag("`getattr` with a computed name")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, (ast.Attribute, ast.Subscript)):
                        base = sub.value
                        while isinstance(base, (ast.Attribute, ast.Subscript)):
                            base = base.value
                        if isinstance(base, ast.Name) and base.id in table:
                            flag(f"an assignment to an attribute of the module `{base.id}`")
    return found


def forbidden_uses(tree: ast.AST, table: dict[str, str], forbid: list[str],
                   exercise: str) -> list[Finding]:
    """Uses of the course's implementation of an exercise (names in ``forbid``)."""
    found = []
    # names only the course's references carry: matched also as bare names and strings
    leaves = {f.rsplit(".", 1)[-1] for f in forbid if f.endswith(("_ref", "_oracle"))}
    for node in ast.walk(tree):
        path = None
        if isinstance(node, (ast.Attribute, ast.Name, ast.Call)):
            path = _resolve(node, table)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                hit = next((f for f in forbid if _matches(f"{node.module}.{a.name}", f)
                            or _matches(node.module, f)), None)
                if hit:
                    found.append(Finding("forbidden", exercise, f"imports `{hit}`, the course's "
                                         "implementation of this exercise"))
        elif isinstance(node, ast.Import):
            for a in node.names:
                hit = next((f for f in forbid if _matches(a.name, f)), None)
                if hit:
                    found.append(Finding("forbidden", exercise, f"imports `{hit}`"))
        if path:
            hit = next((f for f in forbid if _matches(path, f)), None)
            if hit:
                found.append(Finding("forbidden", exercise, f"uses `{hit}`, the course's "
                                     "implementation of this exercise"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                node.value in leaves or _REFERENCE_NAME.fullmatch(node.value)):
            found.append(Finding("forbidden", exercise,
                                 f"names {node.value!r}, the course's implementation"))
        if isinstance(node, ast.Name) and node.id in leaves and node.id not in table:
            found.append(Finding("forbidden", exercise, f"uses `{node.id}`"))
    return _unique(found)


def _no_gather(tree: ast.AST, arrays: list[str], index: str, exercise: str) -> list[Finding]:
    """``W[idx]``-style gathers of the named arrays, and index_select/take/gather calls."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in {"index_select", "take", "gather", "take_along_dim",
                                   "masked_select"}:
            found.append(Finding("rule", exercise, f"calls `{node.func.attr}`, which builds the "
                                 "gathered matrix the statement forbids"))
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id in arrays:
            index_expr = node.slice
            names = {n.id for n in ast.walk(index_expr) if isinstance(n, ast.Name)}
            gathers = index in names or isinstance(index_expr, (ast.List, ast.Call)) or (
                isinstance(index_expr, ast.Tuple) and any(
                    isinstance(e, (ast.List, ast.Call)) or index in
                    {n.id for n in ast.walk(e) if isinstance(n, ast.Name)} for e in index_expr.elts))
            if gathers:
                found.append(Finding("rule", exercise, f"indexes `{node.value.id}` with a set of "
                                     f"rows (`{ast.unparse(node)}`), which the statement forbids"))
    return _unique(found)


RULES = {"no_gather": _no_gather}


def _unique(found: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(found))


def parse(source: str) -> ast.AST | None:
    """The AST of a cell (IPython magics count as tampering: they parse to get_ipython())."""
    from IPython.core.inputtransformer2 import TransformerManager
    try:
        return ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError:
        return None


def check_cells(setup_sources: list[str], solutions: list[tuple[str, str, list[str], list[dict]]]
                ) -> list[Finding]:
    """Findings for a notebook's learner solution cells.

    ``solutions``: (exercise id, learner source, forbid list, rules) per solution cell.
    Aliases come from the course's set-up cells and every solution cell, so an import in one
    cell resolves a name used in another.
    """
    setup = [t for t in map(parse, setup_sources) if t is not None]
    trees = [(ex, parse(src), forbid, rules) for ex, src, forbid, rules in solutions]
    table = aliases(setup + [t for _, t, _, _ in trees if t is not None])
    found = []
    for ex, tree, forbid, rules in trees:
        if tree is None:
            continue  # a syntax error shows up when the cell runs
        found += tampering(tree, table, ex)
        found += forbidden_uses(tree, table, forbid, ex)
        for rule in rules:
            name = rule.get("rule")
            if name not in RULES:
                raise ValueError(f"unknown rule {name!r} for exercise {ex}")
            found += RULES[name](tree, rule.get("arrays", []), rule.get("index", "idx"), ex)
    return _unique(found)
