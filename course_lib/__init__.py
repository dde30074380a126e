"""course_lib: the library behind the course "Sparse activation in neural networks".

Modules (one per chapter stem): formats, spmm, bench, activations, layers, metrics, train,
data, sparse_coding, ffn, moe, grading, grade, exercises, interview.
"""

__version__ = "0.1.0"
