"""A run's surroundings: run directory, Accelerator, logging, the printed config, seeding and the error exits.

``RunSession(cfg, job)`` is made first by every training script (``with RunSession(cfg, job) as session:``). It
creates the ``accelerate.Accelerator`` (device, mixed precision, TensorBoard tracker), decides the run directory
(``runs/<job>-<preset>`` unless ``--run.dir``), takes it for this job alone (``runlock.RunLock``: a second job in
a live directory stops at once, naming the owner; released when the session closes), refuses to start over an
existing run without ``--resume`` or ``--run.overwrite``, prints the config and its hash and writes them to
``config.json``, reads the fault-injection variable, and seeds everything with ``train.seed``. Under a launcher
(``accelerate launch``, ``torchrun``) it also watches the launcher: if it dies, the run stops as on SIGTERM
(signals.py).

Logs: progress bars (the trainer's, the tokeniser's) only when stderr is a terminal and ``run.progress`` is on;
a log file or a pipe gets the periodic log lines (and ``<run>/train.log`` always does), never carriage-return
frames.

``run_main(fn)`` runs a script's ``main`` and turns the project's expected failures into one clear line on
stderr and an exit status: 2 for bad config/data, a busy run directory or a failed write (disk full), 3 for a
non-finite stop, 128+N after signal N.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import sys
from pathlib import Path

import torch

from ..errors import ConfigError, DataError, NonFiniteError, StorageError, TrainingInterrupted
from ..files import write_json_atomic
from .config import config_hash, config_to_dict, format_config, hashed_fields
from .faults import Faults
from .runlock import RunLock
from .signals import launcher_pid

log = logging.getLogger("urlstm_triton.training")
__all__ = ["RunSession", "run_main", "progress_bars", "DataError"]


def _launcher_relays_to_a_terminal() -> bool:
    """Whether this process's stderr reaches a terminal through its launcher: accelerate >= 1.16 reads its child's
    stderr from a pipe and writes it on to its own, so a bar drawn into the pipe shows exactly when the
    launcher's stderr is a terminal (Linux: where ``/proc/<launcher>/fd/2`` points)."""
    parent = launcher_pid()
    if parent is None:
        return False
    try:  # a pipe (a file is a log, as torchrun's --redirects writes: no bars there) to a launcher on a terminal
        if not stat.S_ISFIFO(os.fstat(sys.stderr.fileno()).st_mode):
            return False
        target = os.readlink(f"/proc/{parent}/fd/2")
    except (OSError, ValueError, AttributeError):  # no fd behind sys.stderr, or the launcher's fds are not ours
        return False
    return target.startswith(("/dev/pts/", "/dev/tty"))


def progress_bars(wanted: bool) -> bool:
    """Whether to draw progress bars: asked for, and stderr is a terminal (directly, or through the launcher)."""
    return bool(wanted) and (sys.stderr.isatty() or _launcher_relays_to_a_terminal())


def _quiet_library_bars() -> None:
    """No progress bars from the data libraries (``datasets.map`` while tokenising) either; without importing
    ``datasets`` for the jobs that never use it."""
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    else:
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # read when datasets is imported


class _TqdmHandler(logging.StreamHandler):
    """Log lines printed above the progress bar instead of through it."""

    def __init__(self):
        super().__init__(sys.stderr)

    def emit(self, record):
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _RunLogFile(logging.FileHandler):
    """``<run>/train.log``. A write that fails (disk full) is reported once, in one line, instead of logging's
    traceback for every record; the records still reach stderr."""

    failed = False

    def handleError(self, record):
        if not self.failed:
            self.failed = True
            print(f"warning: cannot write {self.baseFilename} ({sys.exc_info()[1]}); log lines go to stderr only",
                  file=sys.stderr)


def _setup_logging(run_dir: Path, is_main: bool, rank: int) -> None:
    root = logging.getLogger("urlstm_triton")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s " + (f"[rank {rank}] " if rank else "") + "%(message)s",
                            "%H:%M:%S")
    stream = _TqdmHandler()
    stream.setFormatter(fmt)
    stream.setLevel(logging.INFO if is_main else logging.WARNING)
    root.addHandler(stream)
    if is_main:
        fileh = _RunLogFile(run_dir / "train.log")
        fileh.setFormatter(fmt)
        root.addHandler(fileh)
    root.propagate = True  # harmless unless the application configured the root logger; lets pytest capture


class RunSession:
    def __init__(self, cfg, job: str):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.job = job
        run = cfg.run
        if run.threads:
            torch.set_num_threads(run.threads)
        self.run_dir = Path(run.dir or f"runs/{job}-{run.preset or 'custom'}")
        self.hash = config_hash(cfg)
        self.hashed = hashed_fields(cfg)
        kwargs = dict(
            cpu=run.cpu,
            mixed_precision=cfg.train.mixed_precision,
            step_scheduler_with_optimizer=False,  # one scheduler step per optimiser step, any process count
            project_dir=str(self.run_dir),
        )
        if run.tensorboard:
            kwargs["log_with"] = "tensorboard"
        self.accelerator = Accelerator(**kwargs)
        acc = self.accelerator
        self.faults = Faults(process_index=acc.process_index)  # a bad URLSTM_FAULTS stops here, before any work
        self.launcher_pid = launcher_pid()  # read now: the launcher may die before training starts
        self.lock = RunLock(self.run_dir) if acc.is_main_process else None  # one owner: the main process
        self.run_on_main(lambda: self.lock.acquire())
        try:
            self._start(job, set_seed)
        except BaseException:
            self.close()
            raise

    def run_on_main(self, action) -> None:
        """Run ``action`` on the main process only and raise its error on every process: the others must not go on
        into a collective the main process will never join. Collective."""
        error = None
        if self.accelerator.is_main_process:
            try:
                action()
            except Exception as e:  # noqa: BLE001 - shared with the other processes, then raised everywhere
                error = e
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [error]
            broadcast_object_list(box)
            error = box[0]
        if error is not None:
            raise error

    def _start(self, job: str, set_seed) -> None:
        cfg, run, acc = self.cfg, self.cfg.run, self.accelerator
        ckpt_dir = self.run_dir / "checkpoints"
        has_ckpt = ckpt_dir.is_dir() and any(p.name.startswith("step-") for p in ckpt_dir.iterdir())
        if has_ckpt and not (run.resume or run.resume_from):
            if not run.overwrite:
                raise ConfigError(
                    f"run directory {self.run_dir} already holds checkpoints: pass --resume to continue that run, "
                    "--run.overwrite true to start again from scratch, or --run.dir to use another directory")
            self.clear_outputs()
        acc.wait_for_everyone()
        _setup_logging(self.run_dir, acc.is_main_process, acc.process_index)
        if not progress_bars(run.progress):
            _quiet_library_bars()
        log.info("%s run in %s on %s (%d process%s), config hash %s:\n%s", job, self.run_dir, acc.device,
                 acc.num_processes, "" if acc.num_processes == 1 else "es", self.hash, format_config(cfg))
        self.run_on_main(lambda: self._write_config(job))
        set_seed(cfg.train.seed)

    def _write_config(self, job: str) -> None:
        path = self.run_dir / "config.json"
        try:
            write_json_atomic({"job": job, "config_hash": self.hash, "config": config_to_dict(self.cfg)}, path)
        except OSError as e:
            raise StorageError(f"cannot write {path}: {e.strerror or e}") from e

    def clear_outputs(self) -> None:
        """Delete what an earlier run left (checkpoints, TensorBoard events, metrics, summary): ``--run.overwrite``.
        Collective. Only ever called while this session owns the run directory."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)
            # the old run's TensorBoard events would otherwise be drawn as part of the new run's curves
            shutil.rmtree(self.run_dir / "tb", ignore_errors=True)
            for name in ("metrics.jsonl", "summary.json"):
                (self.run_dir / name).unlink(missing_ok=True)
        acc.wait_for_everyone()

    @property
    def ownership_lost(self) -> str:
        """Why this job no longer owns its run directory ('' while it does; always '' off the main process)."""
        return (self.lock.lost or "") if self.lock else ""

    def close(self) -> None:
        """Release the run directory (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def tracker_config(self):
        """The config flattened to scalars, as TensorBoard's hparams want it."""
        flat = {}
        for section, values in config_to_dict(self.cfg).items():
            items = values.items() if isinstance(values, dict) else [("", values)]
            for k, v in items:
                key = f"{section}.{k}" if k else section
                flat[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
        return flat


def run_main(main, argv=None) -> None:
    """Call ``main(argv)``; report expected failures in one line and exit with a status that says which."""
    try:
        main(argv)
    except (ConfigError, DataError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(3)
    except TrainingInterrupted as e:  # the trainer has logged why (stderr and train.log)
        raise SystemExit(128 + e.signum)
    finally:
        # torch.distributed complains at exit if the process group is left open
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            try:
                torch.distributed.destroy_process_group()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
    sys.stdout.flush()
