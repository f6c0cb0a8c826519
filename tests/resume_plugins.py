"""A plugin for the resume tests: the tiny task of bench_plugins and an entry that can be made slow.

``test-sleeps`` is the diagonal GGN; when ``RESUME_SLEEP_S`` is set, its fit first writes its process id
to ``RESUME_PID_FILE`` and sleeps that long, so a test can kill the run while it is in there.
"""

import os
import time

import bench_plugins  # noqa: F401 - the tiny task

from influence_bench.entries import get_entry, register


@register
class Sleeps(get_entry("diag-ggn")):
    name = "test-sleeps"
    description = "the diagonal GGN, after a sleep when RESUME_SLEEP_S is set"

    def fit(self, problem):
        if os.environ.get("RESUME_SLEEP_S"):
            with open(os.environ["RESUME_PID_FILE"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(float(os.environ["RESUME_SLEEP_S"]))
        return super().fit(problem)
