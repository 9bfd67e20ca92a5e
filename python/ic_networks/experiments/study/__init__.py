"""``ic-networks study``: the from-scratch and WLD ablations of docs/fidelity.md, over seeds.

Data (Fashion-MNIST, local files only): a fixed validation split of ``val_images`` images is held
out of the 60,000 training images (permutation seeded by :data:`SPLIT_SEED`, the same for every
run), the training set is the next ``train_images`` images of that permutation, and the official
10,000 test images are evaluated once per run at the end. Settings are compared and chosen on the
validation split; the test set is only reported.

Part ``scratch``: networks ``cnn`` (the demo's :class:`~ic_networks.models.cnn.FmnistCNN`, no
residual path) and ``resnet`` (:class:`~ic_networks.models.cnn.FmnistResNet`, depth 8), plain and
IC, trained from random weights with the ``scratch-fmnist`` recipe (SGD, cosine lr). Cells
(:func:`scratch_cells`): plain and the IC default at each learning rate of ``lrs`` (the same
tuning budget for both; ``resnet``: the first lr only), and, at the first lr, one IC factor
changed at a time: W' initialisation (``scaled`` by 1/k², ``zeros``, ``normal``), alpha
(learnable from 1, learnable from 0.1) and b1 (``-0.5``, ``+0.5``); ``resnet`` leaves out
``normal`` and ``+0.5`` (:data:`_CNN_ONLY`).

Part ``wld``: every seed's plain ``cnn`` of part ``scratch`` (first lr) is the teacher; the student
is its conversion (alpha learnt from ``alpha_start``) trained for ``wld_epochs`` with the
``wld-fmnist`` recipe. Cells (:func:`wld_cells`): the cross-entropy control (the plain model
fine-tuned with CE for the same steps), WLD as the recipe says, and one change at a time: the IC
branch's learning rate x10 and x100 (``ic_lr_mult``), alpha from 0.1, ``e = 0.05``, ``tau = 1``.

Every (cell, seed) is one run in its own folder (``OUT/runs/<part>/<cell>/seed<k>``) whose
``result.json`` is written atomically at its end; a second ``study`` with the same settings reuses
finished runs, so an interrupted study resumes. Runs go to ``jobs`` worker processes with one
torch thread each. ``OUT/results.json`` holds every run and the summary, ``OUT/report.md`` the
tables, ``OUT/study.png`` the plots.

Modules: :mod:`.grid` (the configuration and the cells), :mod:`.runner` (one run, and the cached
process-pool runner), :mod:`.summary` (statistics), :mod:`.report` (Markdown), :mod:`.plots`,
:mod:`.run` (:func:`run_study`, which joins them).
"""

from .grid import NETS, PARTS, SPLIT_SEED, ScratchCell, StudyConfig, WldCell, scratch_cells, wld_cells
from .plots import plot_study
from .report import format_report
from .run import run_study
from .runner import run_all, run_job
from .summary import summarize

__all__ = [
    "NETS",
    "PARTS",
    "SPLIT_SEED",
    "StudyConfig",
    "ScratchCell",
    "WldCell",
    "scratch_cells",
    "wld_cells",
    "run_study",
    "run_job",
    "run_all",
    "summarize",
    "format_report",
    "plot_study",
]
