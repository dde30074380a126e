"""course_lib: the library behind the course "Sparse activation in neural networks".

Chapter: book/intro

Each module's docstring names the chapter(s) it serves (``Chapter: book/<part>/<stem>``); most
modules share their chapter's stem (``formats``, ``spmm``, ``brain``, ``metrics``, ``moe`` …), the
others are named in the table of README.md. The modules, by part:

* Foundations: ``metrics`` (measuring sparsity, ``ActivationRecorder``), ``activations``
  (ReLU family, top-k, k-WTA with boosting, sparsemax), ``layers``, ``train``, ``data``.
* Brain-inspired motivation: ``brain`` (energy budget, match probability), ``sparse_coding``
  (whitening, ISTA/FISTA, dictionary learning).
* Making sparsity fast: ``formats`` (COO/CSR/BSR/N:M), ``spmm`` (a package: tiered sparse ×
  dense, its Triton kernels in ``spmm.triton_kernels``), ``ffn`` (a package: sparse FFN decode,
  gather GEMV, the fused stack), ``minilm`` (TEAL on a pretrained MiniLM), ``moe``; shared by the kernels:
  ``tiers`` (the tier names and the ``impl=`` keyword), ``numba_team`` (the CPU thread team),
  ``numba_dtypes`` (bf16 and typed zeros in numba kernels), ``hugepages``; the benchmark harness
  ``bench`` with the suites ``bench_spmm``, ``bench_ffn``, ``bench_bandwidth``.
* Interview preparation: ``interview`` (question bank, Anki export), ``interview_coding``.
* Course tooling: ``grading`` (graded checks), ``exercises`` (generates exercises/ from
  solutions/), ``grade`` (the grader CLI).

The kernel modules follow one pattern: ``IMPLEMENTATIONS`` (tier name → function), ``pick_impl``
(what ``impl="auto"`` means), the same tier names everywhere (``ref``, ``numpy``, ``torch``,
``cpu_fast``, ``triton``; see ``tiers``); Triton is needed only when a Triton tier runs.
"""

__version__ = "0.1.0"
