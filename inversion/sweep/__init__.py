"""One sweep engine for the ablation, the label-restoration benchmark and the training sweeps.

* :mod:`.engine`: a plan of runs -> the ones not yet finished -> execute -> record -> rewrite the result files;
* :mod:`.ledger`: the validated, append-only JSON-lines ledger ``runs.jsonl`` that makes a sweep resumable;
* :mod:`.executors`: where runs execute, in this process (the default) or as Ray tasks;
* :mod:`.options`: the executor options of the sweep commands (``--executor``, ``--address``, ...).
"""

from inversion.sweep.engine import Run, Sweep, execute
from inversion.sweep.executors import EXECUTORS, ExecutorError, make_executor
from inversion.sweep.ledger import LEDGER_NAME, RecordSchema

__all__ = ["EXECUTORS", "LEDGER_NAME", "ExecutorError", "RecordSchema", "Run", "Sweep", "execute", "make_executor"]
