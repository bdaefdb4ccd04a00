"""The application layer: run configuration, data sets, the trainer, checkpoints and reports.

Owns :mod:`.config` (validated run configuration, recipes in ``recipes/``), :mod:`.data` (bundled and
system data sets), :mod:`.trainer` (training loop and checkpoints), :mod:`.linf` (the l_inf schedule and
model builders) and :mod:`.report` (run folders: certify, report, load).  Imports the library below it;
only :mod:`lipkit.cli` imports it.
"""
