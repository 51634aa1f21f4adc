"""Instance-wise batch label restoration from final-layer gradients (iLRG and baselines).

Works on plain tensors/arrays and never imports :mod:`inversion`.
"""
