"""Metric writers: JSON lines, TensorBoard event files and the log.

They follow `clu.metric_writers`' interface (`write_scalars`, `write_hparams`, `flush`,
`close`) but do not import it: `clu.metric_writers` imports TensorFlow at package import time, and
the training loop must run where only jax/flax/optax/orbax/grain are installed. TensorBoard files
are written with tensorboardX when it is installed.

`<workdir>/metrics.jsonl` holds one JSON object per write: `{"step": int, "time": unix seconds,
"<split>/<name>": float, ...}` with splits `train` (means since the previous write) and `eval`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from etils import epath

METRICS_FILE = "metrics.jsonl"
DISCARDED_FILE = "metrics.discarded.jsonl"


def _to_float(value: Any) -> float:
    return float(np.asarray(value))


class JsonlWriter:
    """Appends `{"step": ..., "time": ..., **scalars}` lines (appending keeps resumed runs whole).

    Local files are appended to; object stores (gs://...) cannot append, so there the whole file
    is rewritten on each write (it stays small: one line per log interval).
    """

    def __init__(self, path: str):
        self.path = epath.Path(path)
        self._remote = "://" in str(path)
        if self._remote:
            self._lines = self.path.read_text().splitlines() if self.path.exists() else []
            self._file = None
        else:
            self._file = open(path, "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step), "time": time.time()}
        record.update({k: _to_float(v) for k, v in scalars.items()})
        line = json.dumps(record)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        else:
            self._lines.append(line)
            self.path.write_text("\n".join(self._lines) + "\n")

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        del hparams  # The config is saved as config.json next to this file.

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class TensorBoardWriter:
    """TensorBoard event files via tensorboardX (no TensorFlow)."""

    def __init__(self, logdir: str):
        import tensorboardX  # pylint: disable=g-import-not-at-top

        self._writer = tensorboardX.SummaryWriter(logdir=logdir)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, _to_float(value), global_step=int(step))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        text = "\n".join(f"    {k}: {v}" for k, v in sorted(hparams.items()))
        self._writer.add_text("config", text, global_step=0)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class LoggingWriter:
    """One log line per write."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        text = ", ".join(f"{k}={_to_float(v):.5g}" for k, v in sorted(scalars.items()))
        logging.info("[%d] %s", step, text)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        logging.info("config: %s", dict(hparams))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MultiWriter:
    """Fans every call out to several writers."""

    def __init__(self, writers: Sequence[Any]):
        self.writers = list(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_hparams(hparams)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


def create_writer(workdir: str, *, tensorboard: bool = True) -> MultiWriter:
    """Writers for process 0 (JSONL + TensorBoard + log); other processes write nothing."""
    if jax.process_index() != 0:
        return MultiWriter([])
    writers: list[Any] = [JsonlWriter(os.path.join(workdir, METRICS_FILE)), LoggingWriter()]
    if tensorboard:
        try:
            writers.append(TensorBoardWriter(os.path.join(workdir, "tensorboard")))
        except ImportError:
            logging.warning(
                "tensorboardX is not installed: no TensorBoard files "
                "(pip install tensorboardX). metrics.jsonl is still written."
            )
        except Exception as e:  # pylint: disable=broad-except
            # E.g. a remote workdir tensorboardX cannot write to: metrics.jsonl still has everything.
            logging.warning(
                "No TensorBoard files (%s: %s); metrics.jsonl is still written.",
                type(e).__name__,
                e,
            )
    return MultiWriter(writers)


_FLAGS = ("nonfinite", "nonfinite_state")


def repair_metrics(workdir: str, resumed_from: int | None) -> int:
    """Makes metrics.jsonl describe exactly the run being resumed; returns the lines set aside.

    A crash can tear the last line (half written), and lines logged after the checkpoint being
    resumed from describe steps that will be trained again (after a SIGKILL, or a fallback to an
    older checkpoint). Both are moved to metrics.discarded.jsonl (not deleted), so the file stays
    valid JSON lines with one history, as an uninterrupted run writes it. Process 0 only.
    """
    path = epath.Path(workdir) / METRICS_FILE
    if jax.process_index() != 0 or not path.exists():
        return 0
    text = path.read_text()
    keep, drop = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            drop.append(line)
            continue
        (drop if resumed_from is None or step > resumed_from else keep).append(line)
    if not drop and (not text or text.endswith("\n")):
        return 0
    if drop:
        discarded = epath.Path(workdir) / DISCARDED_FILE
        old = discarded.read_text() if discarded.exists() else ""
        discarded.write_text(old + "".join(line + "\n" for line in drop))
        logging.warning(
            "metrics.jsonl: set aside %d line(s) (torn, or after the resumed step %s) in %s.",
            len(drop),
            resumed_from,
            discarded,
        )
    path.write_text("".join(line + "\n" for line in keep))
    return len(drop)


class TrainMetrics:
    """Per-step device metrics, fetched to the host only when summarised.

    Keeping them on device until a log/checkpoint boundary avoids a host sync per step; the
    `nonfinite` flag of every step is still inspected, so the first bad step is reported exactly.
    """

    def __init__(self):
        self._steps: list[int] = []
        self._metrics: list[dict[str, jax.Array]] = []

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        """`step` is the 1-based number of the step that produced `metrics`."""
        self._steps.append(step)
        self._metrics.append(metrics)

    def __len__(self) -> int:
        return len(self._steps)

    def summarize(self) -> tuple[dict[str, float], dict[str, float] | None]:
        """(means over the pending steps, the first non-finite step's metrics or None).

        A step is non-finite when its loss, its gradients or the state it produced (params, batch
        statistics, optimizer state) has a NaN/Inf; its metrics come with `step` added, so the error
        names that step and *its* learning rate.
        """
        if not self._metrics:
            return {}, None
        fetched = jax.device_get(self._metrics)
        steps = self._steps
        self._steps, self._metrics = [], []
        first_bad = None
        for step, m in zip(steps, fetched):
            if float(m["nonfinite"]) > 0:
                first_bad = {k: float(v) for k, v in m.items()}
                first_bad["step"] = step
                break
        means = {
            k: float(np.mean([float(m[k]) for m in fetched])) for k in fetched[0] if k not in _FLAGS
        }
        means["learning_rate"] = float(fetched[-1]["learning_rate"])
        return means, first_bad
