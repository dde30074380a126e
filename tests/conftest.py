"""Shared test set-up: a small, deadline-free hypothesis profile (CI has 2 cores), and kernel
starts that survive a port taken by a parallel worker (the book's notebooks run under nbval)."""

import os

from hypothesis import HealthCheck, settings

from course_lib.grade_run import patch_nbval

patch_nbval()

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
