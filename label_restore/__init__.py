"""Instance-wise batch label restoration from final-layer gradients (iLRG and baselines).

Works on plain tensors/arrays and never imports :mod:`inversion`.

Stage one of the pipeline: from the gradients of the mean cross-entropy with respect to the final linear
layer :math:`z = W e + b` (``grad_weight`` :math:`(C, M)`, ``grad_bias`` :math:`(C,)`), and for iLRG the layer
itself (``weight``, ``bias``), recover how many samples of each class the batch of :math:`K` holds::

    from label_restore import restore_labels, available_methods, RestorationResult, label_metrics
    r = restore_labels("ilrg", grad_weight=gW, grad_bias=gb, weight=W, bias=b, batch_size=K)
    r.counts, r.labels, r.present, r.raw_counts, r.seconds, r.diagnostics

Inputs that contradict a mean cross-entropy gradient of ``K`` samples (e.g. rescaled gradients, a ``batch_size``
smaller than the batch, noise) raise an :class:`InconsistentGradientWarning` and are listed, with the numbers,
in ``r.diagnostics`` (:mod:`.consistency`); an all-zero gradient is refused with ``ValueError``.

Methods (:func:`available_methods`; the built-ins are :data:`METHOD_NAMES`): ``ilrg`` (Ma et al., ICLR 2023),
``aux`` (class-conditional softmax means of labelled auxiliary data the server owns, RLU-style: a stronger threat
model; ``aux_probs=``, ``aux_labels=``), ``idlg`` (extended iDLG), ``gi`` (GradInversion), ``rlg`` (Dang et al.
2021), ``llg`` (Wainakh et al. 2022), ``bias_corrected`` (LLG's counting on the bias gradient). Add one with
:func:`register_method`, saying what it needs (``needs="final_layer"``, ``"auxiliary"`` or ``"update"``:
:func:`method_spec`, :mod:`.api`). Modules: :mod:`.api` (registry), :mod:`._inputs` (validation), :mod:`.ilrg`,
:mod:`.aux`, :mod:`.linsolve`, :mod:`.counting`, :mod:`.existence`, :mod:`.rlg`, :mod:`.llg`, :mod:`.metrics`,
:mod:`.result`, :mod:`.consistency`.
"""

from .api import (
    METHOD_NAMES,
    NEEDS,
    MethodSpec,
    available_methods,
    get_method,
    method_spec,
    register_method,
    restore_labels,
    unregister_method,
)
from .consistency import InconsistentGradientWarning, NoisyGradientWarning
from .errors import LabelRestoreInputError
from .metrics import counts_from_labels, label_metrics
from .result import RestorationResult, labels_from_counts

__all__ = [
    "METHOD_NAMES",
    "NEEDS",
    "InconsistentGradientWarning",
    "LabelRestoreInputError",
    "MethodSpec",
    "NoisyGradientWarning",
    "RestorationResult",
    "available_methods",
    "counts_from_labels",
    "get_method",
    "label_metrics",
    "labels_from_counts",
    "method_spec",
    "register_method",
    "restore_labels",
    "unregister_method",
]
