"""Small utilities with no knowledge of the pipeline: atomic files, run folders, plotting, memory estimates,
interrupts and the OpenMP wait policy. Importing this package loads nothing heavy."""
