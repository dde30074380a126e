"""The one process-wide numba set-up shared by the CPU kernels (``spmm.cpu_fast``, ``ffn``).

numba's ``omp`` threading layer loads a ``libgomp.so.1`` that clashes with the OpenMP runtime
bundled with torch; measured here, a 13 MB gather took 12 ms under ``omp`` and 0.8 ms under
``workqueue``. The layer is fixed at the first parallel launch in a process, so it is chosen
here, once, before any kernel module compiles: ``workqueue``, unless the user set
``NUMBA_THREADING_LAYER``.
"""

import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

__all__ = ["numba"]
