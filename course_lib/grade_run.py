"""Execute a graded notebook with nbval and collect what every cell did.
Chapter: every ``solutions/<stem>`` exercises page (the grader, README "Exercises and grading").

nbval stays the executor (``--nbval-lax``, the current environment's kernel). Three additions
to its kernel handling, installed once by :func:`patch_nbval`:

* a kernel that dies while starting is started again (up to three times): no notebook code has
  run then, so the result cannot change;
* while a cell runs, the kernel process is polled: a kernel that dies (``os._exit``, a signal)
  fails the cell within a second as "the kernel died", instead of after the cell timeout;
* a per-notebook time cap: no cell may run past the notebook's deadline.
"""

from __future__ import annotations

import io
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

import pytest

_KERNEL_START_ATTEMPTS = 3
_POLL_S = 0.25


class KernelDied(RuntimeError):
    """The kernel process exited while a cell was running."""


@dataclass
class Limits:
    """The cell timeout and the notebook's deadline (``time.monotonic()`` seconds)."""

    cell_s: float
    notebook_s: float
    deadline: float = 0.0
    hit: str = ""  # "" | "cell" | "notebook": which limit stopped the last cell


LIMITS = Limits(120.0, 600.0)


def _start_with_retries(start):
    def start_new_kernel(*args, **kwargs):
        for attempt in range(1, _KERNEL_START_ATTEMPTS + 1):
            try:
                return start(*args, **kwargs)
            except RuntimeError:  # died or timed out while starting; nbval has shut it down
                if attempt == _KERNEL_START_ATTEMPTS:
                    raise

    start_new_kernel.course_patched = True
    return start_new_kernel


def _await_reply_watching(original):
    """RunningKernel.await_reply that notices a dead kernel and honours the notebook deadline."""

    def await_reply(self, msg_id, timeout=None):
        if timeout is None:
            return original(self, msg_id, timeout)
        start = time.monotonic()
        cell_end = start + float(timeout)
        end = min(cell_end, LIMITS.deadline) if LIMITS.deadline else cell_end
        while True:
            left = end - time.monotonic()
            if left <= 0:
                LIMITS.hit = "notebook" if LIMITS.deadline and end < cell_end else "cell"
                raise Empty
            try:
                return original(self, msg_id, min(_POLL_S, left))
            except Empty:
                if not self.is_alive():
                    code = getattr(getattr(getattr(self.km, "provisioner", None), "process", None),
                                   "returncode", None)
                    status = f" (exit status {code})" if code is not None else ""
                    raise KernelDied(f"the kernel died while this cell ran{status}: it exited or "
                                     "was killed, e.g. by os._exit, a signal or running out of "
                                     "memory") from None

    await_reply.course_patched = True
    return await_reply


def patch_nbval() -> None:
    """Install the retrying start and the watching ``await_reply`` (idempotent)."""
    from nbval import kernel
    if not getattr(kernel.start_new_kernel, "course_patched", False):
        kernel.start_new_kernel = _start_with_retries(kernel.start_new_kernel)
    if not getattr(kernel.RunningKernel.await_reply, "course_patched", False):
        kernel.RunningKernel.await_reply = _await_reply_watching(kernel.RunningKernel.await_reply)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class Collector:
    """pytest plugin: the outcome and error of every executed notebook cell."""

    def __init__(self):
        self.cells: list[dict] = []

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.failed):
            self.cells.append({"cell": getattr(report, "course_cell", -1),
                               "passed": report.passed,
                               "meta": getattr(report, "course_meta", {}),
                               "error": getattr(report, "course_error", "")})

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        cell = getattr(item, "cell", None)
        report.course_cell = getattr(item, "cell_num", -1)
        report.course_meta = dict(cell.metadata.get("course_grade", {})) if cell is not None else {}
        errors = [o for o in (getattr(item, "test_outputs", None) or []) if "ename" in o]
        if call.excinfo is not None and call.excinfo.errisinstance(KernelDied):
            report.course_error = str(call.excinfo.value)
        elif (errors and errors[-1]["ename"] == "KeyboardInterrupt") or (
                call.excinfo is not None and "Timeout" in str(call.excinfo.value)):
            report.course_error = _timeout_message()
        elif errors:
            ename, evalue = errors[-1]["ename"], errors[-1]["evalue"]
            report.course_error = f"{ename}: {evalue}" if evalue else ename
        elif call.excinfo is not None:
            text = str(call.excinfo.value)
            if "Kernel dead" in text:
                text = "not run: the kernel had died in an earlier cell"
            report.course_error = _first_line(text) or call.excinfo.typename


def _timeout_message() -> str:
    if LIMITS.hit == "notebook":
        return (f"Timeout: the notebook's time limit of {LIMITS.notebook_s:g} s was reached "
                "while this cell ran")
    return f"Timeout: the cell ran longer than the per-cell limit of {LIMITS.cell_s:g} s"


def run_notebook(path: Path, cell_s: float, notebook_s: float) -> list[dict]:
    """Execute one notebook with nbval; one record per code cell that ran."""
    patch_nbval()
    LIMITS.cell_s, LIMITS.notebook_s, LIMITS.hit = cell_s, notebook_s, ""
    LIMITS.deadline = time.monotonic() + notebook_s
    collector = Collector()
    args = [str(path), "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={cell_s:g}",
            "-p", "no:cacheprovider", "-q", "--no-header", "-o", "addopts=", "-o", "testpaths=",
            "--rootdir", str(path.parent)]
    try:
        with redirect_stdout(io.StringIO()):
            pytest.main(args, plugins=[collector])
    finally:
        LIMITS.deadline = 0.0
    return collector.cells
