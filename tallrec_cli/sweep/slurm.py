"""`tallrec sweep ... --emit slurm`: a sweep as a Slurm job array, one cell per array task.

The sweep folder is prepared exactly as `tallrec sweep` prepares it (every cell validated, sweep.yaml,
baselines, index.json); the script's body runs ``tallrec sweep run-cell SWEEP CELL --record`` for the
cell of ``$SLURM_ARRAY_TASK_ID``, which writes into the same folder and records its status in the index
under a file lock (tasks finish concurrently). ``tallrec sweep report SWEEP`` merges the finished cells;
re-emitting after failures lists only the cells still to run.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tallrec_cli.core.errors import ConfigError
from tallrec_cli.core.files import write_text_atomic
from tallrec_cli.sweep.grid import prepare_sweep
from tallrec_cli.sweep.run import prepare_folder, start_grid
from tallrec_cli.sweep.spec import SweepRecord

SCRIPT_NAME = "slurm/sweep-array.sh"
DEFAULT_OPTIONS = ("--gres=gpu:1", "--cpus-per-task=8")


@dataclass(frozen=True)
class EmittedArray:
    script: Path
    cells: list[str]  # array index -> cell id
    finished: list[str]  # cells already done, not in the array


def script_text(sweep_dir: Path, cell_ids: Sequence[str], options: Sequence[str], python: str) -> str:
    """The job-array script: #SBATCH header, then a body that runs cell CELLS[$SLURM_ARRAY_TASK_ID]."""
    header = [f"#SBATCH --job-name=tallrec-{sweep_dir.name}", f"#SBATCH --array=0-{len(cell_ids) - 1}",
              f"#SBATCH --output={sweep_dir / 'logs'}/slurm-%A_%a.log"]
    header += [f"#SBATCH {option}" for option in options]
    cells = "\n".join(f"  {shlex.quote(cell_id)}" for cell_id in cell_ids)
    return (
        "#!/bin/bash\n" + "\n".join(header) + "\n"
        f"# Written by `tallrec sweep ... --emit slurm`: one sweep cell per array task.\n"
        f"# Submit: sbatch {sweep_dir / SCRIPT_NAME}\n"
        f"# When every task has finished: tallrec sweep report {sweep_dir}\n"
        "set -euo pipefail\n"
        f"CELLS=(\n{cells}\n)\n"
        'CELL="${CELLS[${SLURM_ARRAY_TASK_ID:?set by sbatch --array}]}"\n'
        f"exec {shlex.quote(python)} -m tallrec_cli sweep run-cell {shlex.quote(str(sweep_dir))} \"$CELL\" --record\n"
    )


def emit_slurm(spec, sweep_dir: str | Path, overwrite: bool = False, options: Sequence[str] = (),
               log: Callable[[str], None] | None = None) -> EmittedArray:
    """Prepare ``sweep_dir`` like `run_sweep` does and write SWEEP/slurm/sweep-array.sh for the cells left."""
    import os

    bad = [option for option in options if not option.startswith("--") or option.startswith("--array")]
    if bad:
        raise ConfigError(f"--slurm-option {bad[0]!r}: give sbatch options as --name=value (the array is set by tallrec)",
                          "e.g. --slurm-option=--partition=gpu --slurm-option=--time=04:00:00")
    sweep_dir = Path(sweep_dir).resolve()
    spec, cells, configs = prepare_sweep(spec)
    record = SweepRecord.of(spec)
    prepare_folder(sweep_dir, record, cells, overwrite)
    _, results, pending, _ = start_grid(spec, sweep_dir, cells, configs, record.config_hash,
                                        log or (lambda message: None))
    if not pending:
        raise ConfigError(f"every cell of {sweep_dir} is finished; there is nothing to submit",
                          f"tallrec sweep report {sweep_dir}")
    chosen = list(options) or list(DEFAULT_OPTIONS)
    script = sweep_dir / SCRIPT_NAME
    (sweep_dir / "logs").mkdir(parents=True, exist_ok=True)
    write_text_atomic(script, script_text(sweep_dir, [cell.id for cell in pending], chosen, sys.executable))
    os.chmod(script, 0o755)
    return EmittedArray(script, [cell.id for cell in pending], sorted(results))
