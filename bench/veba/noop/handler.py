"""A no-op veba-cloudevent function that records when it starts, like the peers' tasks.

It runs in the function's own venv (``python -I``), so it finds the shared
recorder through BENCH_ROOT rather than an installed package.
"""

import os
import sys

sys.path.insert(0, os.environ["BENCH_ROOT"])

from bench.recorder import StartRecorder

_recorder = StartRecorder(os.environ["BENCH_OUT"], "veba")


def handle(event, ctx):
    _recorder.record(event.id)
