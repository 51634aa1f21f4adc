"""Small utilities with no knowledge of the pipeline: atomic files, records of configs (plain dicts, digests, YAML
files), run folders, plotting, memory estimates, interrupts, the OpenMP wait policy, choices and user errors.
Importing this package loads nothing heavy."""
