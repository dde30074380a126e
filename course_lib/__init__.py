"""course_lib: the library behind the course "Sparse activation in neural networks".

One module per chapter stem (the chapter ``book/<part>/<stem>.ipynb`` imports it):

* Foundations: ``metrics`` (measuring sparsity, ``ActivationRecorder``), ``activations``
  (ReLU family, top-k, k-WTA with boosting, sparsemax), ``layers``, ``train``, ``data``.
* Brain-inspired motivation: ``brain`` (energy budget, match probability), ``sparse_coding``
  (whitening, ISTA/FISTA, dictionary learning).
* Making sparsity fast: ``formats`` (COO/CSR/BSR/N:M), ``spmm`` (tiered sparse × dense),
  ``ffn`` (sparse FFN decode, gather GEMV), ``minilm`` (TEAL on a pretrained MiniLM), ``moe``;
  ``bench`` with the suites ``bench_spmm`` and ``bench_ffn``.
* Interview preparation: ``interview`` (question bank, Anki export), ``interview_coding``.
* Course tooling: ``grading`` (graded checks), ``exercises`` (generates exercises/ from
  solutions/), ``grade`` (the grader CLI).
"""

__version__ = "0.1.0"
