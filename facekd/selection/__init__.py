"""Neuron selection (Luo, Zhu, Liu, Wang, Tang, "Face Model Compression by Distilling
Knowledge from Neurons", AAAI 2016): which teacher neurons the student regresses.

``select_neurons`` (energy, mean-field solver, exact K) works on an ``(N, D)`` array of teacher
activations; ``NeuronSelection`` is the saved result that
``facekd.losses.neuron_selection.NeuronSelectionLoss`` loads. Pure statistics: running a
teacher over a data set to get the activations is ``facekd.teachers.select_neurons``
(``run_selection``). Modules: ``attributes`` (CelebA names, IA/NA split, attribute-file
readers), ``statistics`` (per-neuron scores), ``solver`` (mean field, bisection), ``core``
(``select_neurons``).
"""

from facekd.selection.attributes import (
    CELEBA_ATTRIBUTES,
    DEFAULT_IA,
    DEFAULT_NA,
    read_attribute_file,
    validate_split,
)
from facekd.selection.core import K_RATIO, MODES, NeuronSelection, select_neurons

__all__ = [
    "CELEBA_ATTRIBUTES",
    "DEFAULT_IA",
    "DEFAULT_NA",
    "K_RATIO",
    "MODES",
    "NeuronSelection",
    "read_attribute_file",
    "select_neurons",
    "validate_split",
]
