"""The training loop every job shares: optimiser, schedule, accumulation, clipping, guards, checkpoints, logs.

``Trainer(session, model, objective).fit()`` trains ``model`` on ``objective`` for ``train.steps`` optimiser steps and
returns the summary it also writes to ``<run>/summary.json``. One step: get the objective's micro-batches, forward
and backward each under autocast (gradient sync only on the last), clip, check loss and gradient norm for
non-finite values (all processes decide together), then step the optimiser and the schedule or skip. After each
step: metrics line, TensorBoard/tqdm every ``run.log_every``, validation every ``train.eval_every``, a checkpoint
every ``train.save_every`` and at the end, and a graceful stop if SIGINT/SIGTERM arrived or the launcher died. A
failure or a stop is recorded in ``summary.json`` (``status`` and ``reason``) whenever the summary can be written.

Exact resume: a checkpoint (``accelerator.save_state``, see checkpoint.py) holds the model, optimiser, schedule,
loss scaler, every process's RNG states (python, numpy, torch, CUDA), the objects registered for checkpointing
(the guard's counters and the trainer's ``Progress``) and, per process, the objective's state (data position,
carried state); it is written after step s is complete, and resuming continues with step s+1 in exactly the
state the uninterrupted run had. Evaluation runs under a forked RNG so it never changes the training stream.
Sharded setups (FSDP, DeepSpeed) checkpoint through the same ``save_state``. ``--resume`` takes the newest
checkpoint that verifies; when checkpoints exist but none does, it stops with what is wrong with each (starting
from scratch instead only with ``--run.overwrite``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..errors import (ConfigError, CorruptCheckpoint, NonFiniteError, RunDirectoryInUse, StorageError,
                       TrainingInterrupted)
from .checkpoint import CheckpointManager
from .config import config_to_dict
from .guard import NonFiniteGuard
from .objective import Objective
from .records import MetricsLog, write_summary
from .schedule import warmup_cosine
from .session import RunSession, progress_bars
from .signals import GracefulStop

log = logging.getLogger("urlstm_triton.training")


def build_optimizer(params, train_cfg) -> torch.optim.Optimizer:
    t = train_cfg
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay)


@dataclass
class Progress:
    """The trainer's counters; registered for checkpointing, so ``save_state``/``load_state`` carry them."""

    step: int = 0
    units_seen: int = 0
    train_seconds: float = 0.0

    def state_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step, self.units_seen = int(state["step"]), int(state["units_seen"])
        self.train_seconds = float(state["train_seconds"])


SHARDED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")  # distributed types whose unwrapped model holds only a shard


class Trainer:
    def __init__(self, session: RunSession, model: torch.nn.Module, objective: Objective):
        from accelerate.utils import set_seed

        self.session = session
        self.cfg = session.cfg
        self.acc = session.accelerator
        self.objective = objective
        tcfg = self.cfg.train
        self.sharded = str(self.acc.distributed_type).split(".")[-1] in SHARDED
        model = self.acc.prepare(model)  # FSDP wraps the model before the optimiser sees its parameters
        optimizer = self.acc.prepare(build_optimizer(model.parameters(), tcfg))
        self.model, self.optimizer = model, optimizer
        self.scheduler = self.acc.prepare(warmup_cosine(optimizer, tcfg.warmup_steps, tcfg.steps, tcfg.schedule,
                                                        tcfg.min_lr_ratio))
        # with a loss scaler (fp16 on a GPU) an infinite gradient norm is the scaler's business
        self.guard = NonFiniteGuard(tcfg.nonfinite, tcfg.max_nonfinite_skips,
                                    check_grad_norm=self.acc.scaler is None)
        self.progress = Progress()
        self.acc.register_for_checkpointing(self.guard, self.progress)
        self.ckpt = CheckpointManager(session.run_dir / "checkpoints", self.acc, tcfg.keep_checkpoints,
                                      session.hash, session.hashed)
        session.run_on_main(self.ckpt.check_layout)
        self.faults = session.faults
        self.last_checkpoint: Optional[str] = None
        # every process gets its own dropout stream; the model above was initialised identically everywhere
        set_seed(tcfg.seed, device_specific=True)
        self._maybe_resume()

    # ------------------------------------------------------------------------------------------ state
    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model evaluation runs: unwrapped (DDP's wrapper would sync on every forward, and processes may
        run different numbers of evaluation batches), except where the wrapper holds the only full view of the
        parameters (FSDP, DeepSpeed)."""
        return self.model if self.sharded else self.acc.unwrap_model(self.model)

    def save_checkpoint(self) -> Path:
        per_rank = {"objective": self.objective.state_dict()}
        try:
            path = self.ckpt.save(self.step, per_rank, self.faults.save_hook(self.step))
        except StorageError as e:
            kept = self.last_checkpoint or "none was written yet"
            raise StorageError(f"{e}; the last good checkpoint is kept: {kept}") from e.__cause__
        self.last_checkpoint = str(path)
        log.info("checkpoint saved: %s", path)
        return path

    def _maybe_resume(self) -> None:
        run = self.cfg.run
        if run.resume_from:
            path = Path(run.resume_from)
            try:
                manifest = CheckpointManager.verify(path)
            except CorruptCheckpoint as e:
                raise ConfigError(f"--run.resume_from: {e}") from None
            found = (path, manifest)
        elif run.resume:
            found, problems = self.ckpt.scan()
            if found is None:
                self._start_without_checkpoint(problems)
                return
        else:
            return
        path, manifest = found
        if manifest["step"] > self.cfg.train.steps:
            raise ConfigError(f"--train.steps {self.cfg.train.steps} is below the step of checkpoint {path} "
                              f"({manifest['step']}): give --train.steps {manifest['step']} or more to continue it")
        per_rank = self.ckpt.load(path, manifest)  # model, optimiser, schedule, scaler, RNG, guard, progress
        self.objective.load_state_dict(per_rank["objective"])
        self.last_checkpoint = str(path)
        log.info("resumed from %s: continuing at step %d", path, self.step + 1)

    def _start_without_checkpoint(self, problems) -> None:
        """``--resume`` found no usable checkpoint: a fresh start if there were none, else a stop listing what is
        wrong with each (a fresh start over them only with ``--run.overwrite``, which deletes them)."""
        where = self.ckpt.dir
        if not problems:
            log.info("--resume: no checkpoint in %s; starting from scratch", where)
            return
        listing = "; ".join(problems)
        if not self.cfg.run.overwrite:
            raise ConfigError(
                f"--resume: none of the {len(problems)} checkpoint(s) in {where} is usable: {listing}. Restore "
                "them, resume from another with --run.resume_from, or start again from scratch with "
                "--run.overwrite true (deletes them)")
        log.warning("--resume: none of the %d checkpoint(s) in %s is usable (%s); --run.overwrite: deleting them "
                    "and starting again from scratch", len(problems), where, listing)
        self.session.clear_outputs()

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, split: str, max_batches: int = 0) -> Dict[str, float]:
        model = self.eval_model
        was_training = model.training
        model.eval()
        devices = [self.acc.device] if self.acc.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), self.acc.autocast():
                return self.objective.evaluate(model, split, max_batches)
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------------------------------ one step
    def _train_step(self, step: int) -> Dict[str, Any]:
        acc, tcfg = self.acc, self.cfg.train
        micro = self.objective.train_batches(step, tcfg.grad_accum)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        units = 0
        for i, mb in enumerate(micro):
            sync = i == len(micro) - 1
            with (nullcontext() if sync else acc.no_sync(self.model)), acc.autocast():
                loss, n = self.objective.loss(self.model, mb)
                if self.faults.nan_loss(step):
                    loss = loss * float("nan")
            acc.backward(loss / len(micro))
            loss_sum += loss.detach().double()
            units += int(n)
        max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
        # one collective per step: mean loss, units, whether any process was asked to stop, whether the main
        # process lost the run directory to another job, and whether its metrics log failed to write (disk full)
        packed = torch.tensor([float(loss_sum) / len(micro), float(units), float(self._stop.signum),
                               float(bool(self.session.ownership_lost)), float(self._metrics.error is not None)],
                              dtype=torch.float64, device=acc.device)
        if acc.num_processes > 1:
            packed = acc.reduce(packed, reduction="sum")
        loss_val = float(packed[0]) / acc.num_processes
        gnorm = float(grad_norm) if grad_norm is not None else float("nan")
        ok = self.guard.check(step, loss_val, gnorm, self.last_checkpoint)
        if ok:
            self.optimizer.step()
            if not acc.optimizer_step_was_skipped:
                self.scheduler.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            if acc.scaler is not None:
                # clip_grad_norm_ unscaled this step's gradients; update() closes the step (and, having seen
                # the non-finite values, lowers the scale) so the next unscale is allowed
                acc.scaler.update()
            self.objective.on_skipped_step()
            log.warning("step %d: non-finite loss/gradient norm (loss %s, grad norm %s): step skipped (%d/%d)",
                        step, loss_val, gnorm, self.guard.skipped, tcfg.max_nonfinite_skips)
        return {"step": step, "loss": loss_val, "grad_norm": gnorm, "lr": self.scheduler.get_last_lr()[0],
                "units": int(packed[1]), "skipped": not ok, "stop": int(packed[2]), "lost": bool(packed[3]),
                "write_failed": bool(packed[4])}

    # ------------------------------------------------------------------------------------------ the loop
    def fit(self) -> Dict[str, Any]:
        from tqdm.auto import tqdm

        acc, cfg = self.acc, self.cfg
        tcfg = cfg.train
        session = self.session
        main = acc.is_main_process
        self._metrics = metrics = MetricsLog(session.run_dir / "metrics.jsonl", keep_until_step=self.step,
                                             enabled=main)
        if cfg.run.tensorboard:
            acc.init_trackers("tb", config=session.tracker_config())
        # a bar only on a terminal: a log file or a pipe would get every carriage-return frame of it, and has the
        # periodic log lines instead
        bar = tqdm(total=tcfg.steps, initial=self.step, disable=not (main and progress_bars(cfg.run.progress)),
                   dynamic_ncols=True, desc=session.job)
        status = "failed"  # until proven otherwise: an unexpected exception leaves this in the summary
        failure: Optional[BaseException] = None
        lost = False
        evals: Dict[str, Dict[str, float]] = {}
        t0 = time.perf_counter()
        seg_units = 0
        self.model.train()
        try:
            with GracefulStop(parent=session.launcher_pid) as stop:
                self._stop = stop
                while self.step < tcfg.steps:
                    step = self.step + 1
                    row = self._train_step(step)
                    if row["write_failed"]:
                        session.run_on_main(metrics.check)  # the main process's error, raised on every process
                    if row["lost"]:  # another job owns the directory now: write nothing more into it
                        lost = True
                        raise RunDirectoryInUse(
                            f"run directory {session.run_dir} was taken over by another job "
                            f"({session.ownership_lost or 'seen by the main process'}): this job stops at step "
                            f"{step} without writing more")
                    self.progress.step = step
                    seg_units += row["units"]
                    self.progress.units_seen += row["units"]
                    metrics.write({k: row[k] for k in ("step", "loss", "grad_norm", "lr", "skipped")})
                    bar.update(1)
                    if step % cfg.run.log_every == 0 or step == tcfg.steps:
                        rate = seg_units / max(time.perf_counter() - t0, 1e-9)
                        self._log_train(row, rate, bar)
                    if tcfg.eval_every and step % tcfg.eval_every == 0 and step < tcfg.steps:
                        split = self.objective.eval_splits[0]
                        res = self.evaluate(split, tcfg.eval_batches)
                        self._log_eval(split, res, step, metrics)
                    saved = False
                    if (tcfg.save_every and step % tcfg.save_every == 0) or step == tcfg.steps:
                        self.save_checkpoint()
                        saved = True
                    self.faults.after_step(step)
                    # A signal that lands after this step's collective is seen by the other processes only at
                    # the next one. With several processes only that agreed flag stops, so all stop at the same
                    # step: one stopping alone would save (a collective) while the others wait in the next
                    # step's gradient all-reduce, and the job dies with "connection reset" instead of a
                    # checkpoint. A single process stops at once.
                    if row["stop"] or (stop.signum and acc.num_processes == 1):
                        status = "interrupted"
                        if not saved:
                            self.save_checkpoint()
                        interrupted = TrainingInterrupted(stop.signum or 15, self.last_checkpoint, stop.cause)
                        log.warning("%s", interrupted)  # in train.log too: a dead launcher's stderr has no reader
                        raise interrupted
                self.progress.train_seconds += time.perf_counter() - t0
                bar.close()
                for split in self.objective.eval_splits:
                    evals[split] = self.evaluate(split)
                    self._log_eval(split, evals[split], self.step, metrics)
                session.run_on_main(metrics.check)
                status = "completed"
        except NonFiniteError as e:
            status, failure = "stopped: non-finite", e
            raise
        except BaseException as e:  # noqa: BLE001 - recorded, then re-raised
            failure = e
            if status == "failed":
                status = f"failed: {type(e).__name__}"
            raise
        finally:
            bar.close()
            metrics.close()
            wall = time.perf_counter() - t0
            summary = {
                "job": session.job, "status": status, "step": self.step, "steps": tcfg.steps,
                "reason": str(failure) if failure is not None else None,  # why it did not complete
                "config_hash": session.hash, "run_dir": str(session.run_dir),
                "last_checkpoint": self.last_checkpoint, "skipped_steps": self.guard.skipped,
                "units": self.objective.unit, "units_seen": self.progress.units_seen,
                f"train_{self.objective.unit}_per_s": seg_units / max(wall, 1e-9), "wall_s": wall,
                "eval": evals, "config": config_to_dict(cfg),
            }
            if main and not lost:
                self._write_summary(summary, failure)
            if cfg.run.tensorboard and not lost:
                acc.end_training()
        return summary

    def _write_summary(self, summary: Dict[str, Any], failure: Optional[BaseException]) -> None:
        """Write ``summary.json``; if that fails while another error is on its way out (a full disk stopped the
        run), say so in one line and let that error be the one reported."""
        try:
            write_summary(self.session.run_dir / "summary.json", summary)
        except StorageError as e:
            if failure is None:
                raise
            log.error("%s (the summary of this failed run is lost)", e)

    def _log_train(self, row, rate: float, bar) -> None:
        tokens = self.objective.unit == "tokens" and math.isfinite(row["loss"])
        ppl = math.exp(min(row["loss"], 50.0)) if tokens else None
        values = {"train/loss": row["loss"], "train/lr": row["lr"], "train/grad_norm": row["grad_norm"],
                  f"train/{self.objective.unit}_per_s": rate}
        if ppl is not None:
            values["train/ppl"] = ppl
        if self.cfg.run.tensorboard:
            self.acc.log({k: v for k, v in values.items() if math.isfinite(v)}, step=row["step"])
        post = {"loss": f"{row['loss']:.3f}", f"{self.objective.unit[:3]}/s": f"{rate:.0f}"}
        if ppl is not None:
            post["ppl"] = f"{ppl:.1f}"
        bar.set_postfix(post, refresh=False)
        log.info("step %d/%d loss %.4f%s lr %.3g grad norm %.3g %s/s %.0f", row["step"], self.cfg.train.steps,
                 row["loss"], f" ppl {ppl:.2f}" if ppl is not None else "", row["lr"], row["grad_norm"],
                 self.objective.unit, rate)

    def _log_eval(self, split: str, res: Dict[str, float], step: int, metrics: MetricsLog) -> None:
        metrics.write({"step": step, "eval": split, **res})
        if self.cfg.run.tensorboard:
            self.acc.log({f"{split}/{k}": v for k, v in res.items() if isinstance(v, (int, float))
                          and math.isfinite(v)}, step=step)
        log.info("step %d %s: %s", step, split,
                 " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()))
