"""course_lib.grade_rules: tampering, answer leaks and statement rules are found statically,
and honest solutions (every course solution) are not flagged."""

import pytest

from course_lib import grade_rules
from course_lib.exercises import load_bundle

SETUP = ["import numpy as np\nimport torch\nfrom course_lib import formats, grading, ffn\n"
         "from course_lib import interview_coding as ic"]
FORBID = ["course_lib.formats", "scipy.sparse"]


def findings(source, forbid=FORBID, rules=(), setup=SETUP):
    return grade_rules.check_cells(setup, [("formats.1", source, list(forbid), list(rules))])


@pytest.mark.parametrize("source", [
    "grading.check_function = lambda *a, **k: None",
    "np.isclose = lambda *a, **k: np.array(True)",
    "import numpy\nnumpy.testing.assert_allclose = print",
    "get_ipython().set_custom_exc((AssertionError,), lambda *a: None)",
    "ip = get_ipython()\nip.ast_transformers.append(None)",
    "import sys\nsys.modules['course_lib.grading'] = None",
    "import builtins\nbuiltins.AssertionError = KeyError",
    "exec('x = 1')",
    "eval('1')",
    "f = __import__('course_lib').formats",
    "import importlib\nm = importlib.import_module('course_lib.formats')",
    "import os\nos._exit(0)",
    "from IPython import get_ipython",
    "from course_lib import grading as g\ng.check_function = None",
    "setattr(formats, 'dense_to_csr_ref', print)",
    "def f():\n    return sys._getframe(1).f_globals",
    "g = globals()",
    "x = getattr(formats, 'dense_' + 'to_csr_ref')",
    "np.os.system('true')",
    "%time 1 + 1",
    "from course_lib.grading import check_function",
    "import pickle",
    "open('/tmp/x', 'w')",
    "formats.CSR.from_dense = staticmethod(lambda A: None)",
])
def test_tampering_is_found(source):
    kinds = {f.kind for f in findings(source)}
    assert "tamper" in kinds, source


@pytest.mark.parametrize("source", [
    "def dense_to_csr(A):\n    return formats.dense_to_csr_ref(A)",
    "dense_to_csr = formats.dense_to_csr_ref",
    "from course_lib.formats import dense_to_csr_ref as mine",
    "from course_lib.formats import CSR\ndef dense_to_csr(A):\n    c = CSR.from_dense(A)\n"
    "    return c.indptr, c.indices, c.data",
    "import course_lib.formats as F\nx = F.CSR",
    "F = formats\ndef dense_to_csr(A):\n    return F.dense_to_csr_ref(A)",
    "import scipy.sparse as sp\ndef dense_to_csr(A):\n    M = sp.csr_matrix(A)\n"
    "    return M.indptr, M.indices, M.data",
    "from scipy import sparse\nx = sparse.csr_matrix",
    "x = getattr(formats, 'dense_to_csr_ref')",
    "name = 'dense_to_csr_ref'",
])
def test_answer_leaks_are_found(source):
    kinds = {f.kind for f in findings(source)}
    assert kinds == {"forbidden"}, (source, findings(source))


@pytest.mark.parametrize("source", [
    "def dense_to_csr(A):\n    rows, cols = np.nonzero(A)\n    counts = np.bincount(rows, minlength=A.shape[0])\n"
    "    return np.concatenate([[0], np.cumsum(counts)]), cols, A[rows, cols]",
    "def f(model):\n    return sum(len(m._forward_hooks) for m in model.modules())",
    "import math\nfrom collections import defaultdict\nC = defaultdict(float)\nC[0, 1] += 2.0",
    "import numpy as np\nx = getattr(np, 'float32')",
    "sparse = 3\nsparse_matrix = sparse + 1",
])
def test_honest_code_is_not_flagged(source):
    assert findings(source) == []


def test_no_gather_rule():
    rule = [{"rule": "no_gather", "arrays": ["Wt"], "index": "idx"}]
    ok = "def g(Wt, v, idx):\n    y = torch.zeros(Wt.shape[1])\n    for j in idx.tolist():\n" \
         "        y += v[j] * Wt[j]\n    return y"
    assert findings(ok, forbid=[], rules=rule) == []
    for bad in ["def g(Wt, v, idx):\n    return v[idx] @ Wt[idx]",
                "def g(Wt, v, idx):\n    return v[idx] @ Wt[idx.long(), :]",
                "def g(Wt, v, idx):\n    return v[idx] @ Wt.index_select(0, idx)",
                "def g(Wt, v, idx):\n    return v[idx] @ Wt[idx.tolist()]"]:
        assert {f.kind for f in findings(bad, forbid=[], rules=rule)} == {"rule"}, bad
    with pytest.raises(ValueError, match="unknown rule"):
        findings(ok, forbid=[], rules=[{"rule": "no_such_rule"}])


def test_every_course_solution_passes_the_rules():
    """The rules must not flag any honest solution of the course (false positives cost points)."""
    for stem, entry in load_bundle()["notebooks"].items():
        setup = [c["source"] for c in entry["cells"] if c["role"] == "setup"]
        sols = [(c["exercise"], c["source"], c["forbid"], c["rules"])
                for c in entry["cells"] if c["role"] == "solution"]
        assert grade_rules.check_cells(setup, sols) == [], stem
