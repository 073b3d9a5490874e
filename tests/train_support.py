"""Shared helpers for the training tests (this module holds no tests).

The training tests run the real loop on a tiny CSR ResNet-20 (widths 4/8/8, 8x8 digits) so that
a run compiles in seconds on a 2-core CPU. Runs in other processes (8 virtual devices, two JAX
processes, SIGTERM) use the same config file and are compared with one uninterrupted
single-device reference run, computed once per test session and shared by the xdist workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS = 8

TINY_CONFIG = textwrap.dedent('''
    """Tiny CSR ResNet-20 on 8x8 digits: the training tests' config."""
    from experiments.configs import digits


    def get_config(arg=None):
        config = digits.get_config()
        config.image_size = 8
        config.model_overrides.widths = (4, 8, 8)
        config.batch_size = 16
        config.eval_batch_size = 40
        config.num_epochs = None
        config.num_train_steps = {num_steps}
        config.learning_rate = 0.05
        config.warmup_epochs = 0.0
        config.log_every_steps = 1
        config.eval_every_steps = 4
        config.checkpoint_every_steps = 4
        config.tensorboard = False
        return config
''').format(num_steps=NUM_STEPS)


def compile_cache_dir(tmp_root: Path) -> str:
    """A persistent XLA compilation cache shared by the test processes of one session."""
    path = tmp_root / "jax_compile_cache"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def enable_compile_cache(tmp_root: Path) -> None:
    """Identical programs (the same tiny model in several runs) compile once per session."""
    import jax

    jax.config.update("jax_compilation_cache_dir", compile_cache_dir(tmp_root))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def write_tiny_config(directory: Path) -> Path:
    path = directory / "tiny_config.py"
    if not path.exists():
        path.write_text(TINY_CONFIG)
    return path


def load_config(path: Path, arg: str | None = None):
    """`get_config(arg)` of a config file, as `--config path:arg` would load it."""
    import importlib.util

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(f"cfg_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def subprocess_env(tmp_root: Path, **extra: str) -> dict[str, str]:
    """Environment for a child JAX process: repo importable, CPU only, shared compile cache."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = compile_cache_dir(tmp_root)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 240, script: str | None = None
) -> subprocess.CompletedProcess:
    """`python -m experiments.train ARGS` (or `python -c SCRIPT ARGS`) from the repo root."""
    cmd = [sys.executable] + (["-c", script] if script else ["-m", "experiments.train"]) + args
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


_DRIVER = """\
import os, signal, sys, time
from absl import app
import csr_jax.data as data

{setup}
original = data.make_train_iterator


class Hooked:
    def __init__(self, it):
        self.it, self.count = it, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.count += 1
        if self.count == {at_batch}:
{action}
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


data.make_train_iterator = lambda *a, **k: Hooked(original(*a, **k))
from experiments import train
sys.argv = ["experiments.train"] + sys.argv[1:]
app.run(train.main)
"""


def train_driver(at_batch: int, action: str, setup: str = "") -> str:
    """Source of `python -m experiments.train ARGS` whose train iterator runs `action` when batch
    `at_batch` is requested: a fault (a signal, a pause) at a known step of a real run.

    `action` and `setup` are Python statements; `setup` runs first (e.g. to take the test's own
    arguments off sys.argv before absl parses the rest).
    """
    body = textwrap.indent(textwrap.dedent(action).strip(), " " * 12)
    return _DRIVER.format(setup=textwrap.dedent(setup).strip(), at_batch=int(at_batch), action=body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_arrays(workdir: Path | str) -> dict:
    """The latest checkpoint's state as NumPy arrays (any mesh can have written it)."""
    from csr_jax.train import Checkpointer

    ckpt = Checkpointer(str(workdir))
    try:
        return ckpt.restore_arrays()
    finally:
        ckpt.close()


def final_arrays_at(workdir: Path | str, step: int) -> dict:
    """The state of checkpoint `step` as NumPy arrays."""
    from csr_jax.train import Checkpointer

    ckpt = Checkpointer(str(workdir))
    try:
        return ckpt.restore_arrays(step)
    finally:
        ckpt.close()


def train_losses(workdir: Path | str) -> dict[int, float]:
    """Per-step training loss from metrics.jsonl (log_every_steps=1)."""
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            out[record["step"]] = record["train/loss"]
    return out


def assert_trees_close(a, b, rtol: float, atol: float) -> None:
    import jax

    paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
    leaves_b = jax.tree.leaves(b)
    assert len(paths_a) == len(leaves_b), "different tree structures"
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(paths_a, leaves_b):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
        )


@contextlib.contextmanager
def locked(path: Path):
    """Holds an exclusive file lock, so xdist workers build a shared run only once."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def reference_run(tmp_root: Path) -> Path:
    """The uninterrupted single-process, single-device run of the tiny config (once a session).

    Returns its workdir (checkpoints, metrics.jsonl, summary.json).
    """
    root = tmp_root / "reference"
    root.mkdir(parents=True, exist_ok=True)
    workdir = root / "workdir"
    with locked(root / "lock"):
        if not (workdir / "summary.json").exists():
            import jax

            from csr_jax.train import train_and_evaluate

            assert jax.device_count() == 1, "the reference run needs a single-device process"
            config = load_config(write_tiny_config(root))
            train_and_evaluate(config, str(workdir))
    return workdir


def session_root(tmp_path_factory) -> Path:
    """A directory shared by all xdist workers of this session (the plain basetemp without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
