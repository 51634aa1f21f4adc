"""OpenMP's idle threads sleep instead of spinning: set before torch loads its OpenMP runtime.

libgomp lets a thread that finished its share of a parallel region spin for a while before it
sleeps, and reads that policy once, when torch loads it. On a machine shared with other busy
processes the spinning threads take the cores the working ones need, and a small attack
collapses (``scripts/bench_threads.py``: the default run's 300 steps beside four busy processes
took 24-28 s with libgomp's default policy, 3.6-3.7 s with ``OMP_WAIT_POLICY=PASSIVE``).

This module is imported first by :mod:`inversion`, so every command gets the passive policy;
a user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is kept, and where torch was imported
before :mod:`inversion` nothing changes (the runtime has already read its settings).
"""

import os
import sys

if "torch" not in sys.modules and "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
