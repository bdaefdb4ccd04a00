"""The application layer: run configuration, data sets, the trainer, checkpoints, run folders and reports.

Owns :mod:`.config` (the validated, sectioned run configuration; recipes in ``recipes/``), :mod:`.data`
(bundled and system data sets), :mod:`.trainer` (the :class:`~.trainer.Trainer` loop and
:func:`~.trainer.fit`), :mod:`.strategy` (the hooks a kind of training plugs into), :mod:`.linf` (l_inf
models, schedule and its strategy), :mod:`.cnn` (the l2 CNN, ``model: lipcnn``), :mod:`.monotonic` (monotone
tabular models: constraint spec, strategy, run folders, certify and report with partial dependence),
:mod:`.checkpoints` (atomic, verified checkpoints), :mod:`.runs` (the one reader/writer of run folders) and
:mod:`.report` (certify a run, write its report).  Imports the library below it; only :mod:`lipkit.cli`
imports it.
"""
