"""Benchmarks: ratios against a reference measured side by side in the same run (interleaved, median
of several), never timed unit tests. One module per benchmark (``medrobust bench <name>``):

* :mod:`.attacks` — attack throughput against torchattacks; the value of early stopping;
* :mod:`.ingest` — ingest files/s against bare pydicom;
* :mod:`.methods` — clean/FGSM/PGD accuracy of every training method at the same budget;
* :mod:`.train_cost` — epoch time of every training method as a ratio to standard training;
* :mod:`.two_moon` — the ARFL paper's two-moon experiment (Table 1).

Each writes ``<out>.json`` and ``<out>.md`` with the command that reproduces it (:mod:`.report`);
the committed results are in ``benchmarks/``.
"""
