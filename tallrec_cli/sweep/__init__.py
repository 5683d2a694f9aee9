"""Few-shot sweeps: TALLRec's Table 1 (AUC at 16 / 64 / 256 samples per domain) as one resumable run.

A sweep is a grid of cells: (domain, extra-axis values, shots, seed). A trained cell is a normal train
run folder (SWEEP/cells/<id>/, manifest written last by `tallrec_cli.train.run`) plus its evaluations
(RUN/eval/<test>/ written by `tallrec_cli.eval.run`) and ``sweep-eval.json``, the cell's summary,
written last. A zero-shot cell (shots 0) evaluates the base model and holds a ``zero-shot-cell``
manifest instead of a training run. Classic references (`tallrec_cli.eval.baselines`) stand beside the cells:
equal-data ones fitted on each cell's own records and their histories, full-data ones on the training split;
their per-record scores are stored in SWEEP/baselines/ for the paired comparisons with the tuned model.

Modules: `spec` (the spec and its fingerprint), `grid` (cells, each validated up front), `run` (training
and evaluating cells, resumable, on one or several devices), `references`, `paired` (paired differences
over seeds and what they say), `report` (results from the folders).

Folder layout::

    SWEEP/sweep.yaml       resolved sweep config + fingerprint (recipe and test hashes) + its hash
    SWEEP/index.json       every cell with its status (pending/running/done/failed/interrupted), atomic
    SWEEP/cells/<id>/      train run folder + eval/ + sweep-eval.json
    SWEEP/baselines/*.json reference AUCs and per-record scores per sample (domain, train data, shots,
                           seed) and per training pool (full data), each listing its cells
    SWEEP/logs/<id>.log    output of cells run as subprocesses (--devices); <id>.failure.json why one failed
    SWEEP/results.json, results.csv, sweep.png   rebuilt from the folders above alone (results.json holds
                           the paired comparisons and findings too)

Resume: a cell is finished when its manifest holds the cell's training config and ``sweep-eval.json``
the cell's evaluation fingerprint; a trained cell without ``sweep-eval.json`` is only re-evaluated; a
folder without a manifest is deleted and redone.
"""

from tallrec_cli.sweep.grid import Cell, expand_grid, prepare_sweep
from tallrec_cli.sweep.report import build_report, missing_cells, reference_observations, summarize
from tallrec_cli.sweep.run import (
                                   CellFailure,
                                   SubprocessLauncher,
                                   SweepIndex,
                                   failure_path,
                                   read_failure,
                                   run_single_cell,
                                   run_sweep,
                                   schedule,
)
from tallrec_cli.sweep.spec import SweepSpec, load_sweep_spec, resolve_spec

__all__ = ["Cell", "CellFailure", "SubprocessLauncher", "SweepIndex", "SweepSpec", "build_report", "expand_grid",
           "failure_path", "load_sweep_spec", "missing_cells", "prepare_sweep", "read_failure", "reference_observations",
           "resolve_spec", "run_single_cell", "run_sweep", "schedule", "summarize"]
