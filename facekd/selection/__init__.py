"""Neuron selection (Luo, Zhu, Liu, Wang, Tang, "Face Model Compression by Distilling
Knowledge from Neurons", AAAI 2016): which teacher neurons the student regresses.

``select_neurons`` (energy, mean-field solver, exact K) works on an ``(N, D)`` array of teacher
activations; ``run_selection`` produces that array from a teacher or a ``TeacherCache`` and
writes ``selection.json``; ``NeuronSelection`` is the saved result that
``facekd.losses.neuron_selection.NeuronSelectionLoss`` loads. Modules: ``attributes`` (CelebA
names, IA/NA split, file readers), ``statistics`` (per-neuron scores), ``solver`` (mean
field, bisection), ``core`` (``select_neurons``), ``run`` (extraction and saving).
"""

from facekd.selection.attributes import (
    CELEBA_ATTRIBUTES,
    DEFAULT_IA,
    DEFAULT_NA,
    read_attribute_file,
    validate_split,
)
from facekd.selection.core import K_RATIO, MODES, NeuronSelection, select_neurons
from facekd.selection.run import dataset_image_keys, extract_embeddings, run_selection

__all__ = [
    "CELEBA_ATTRIBUTES",
    "DEFAULT_IA",
    "DEFAULT_NA",
    "K_RATIO",
    "MODES",
    "NeuronSelection",
    "dataset_image_keys",
    "extract_embeddings",
    "read_attribute_file",
    "run_selection",
    "select_neurons",
    "validate_split",
]
