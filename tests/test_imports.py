"""Light imports: each module loads only what its job needs.

A layer user installs only jax, flax and numpy (`pip install csr_jax`); the training stack
(optax, orbax, grain, tensorflow-datasets, scikit-learn, tensorboardX) and the plotting stack
(matplotlib) are extras. These checks run each import in a fresh interpreter and read
``sys.modules`` afterwards, since an earlier import in the test process would hide a heavy one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

TRAINING_STACK = (
    "optax",
    "orbax",
    "grain",
    "tensorflow_datasets",
    "tensorflow",
    "sklearn",
    "tensorboardX",
)
PLOTTING = ("matplotlib",)
NUMERICS = ("jax", "flax")


def _loaded_after(code: str) -> set[str]:
    """Top-level package names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = (
        code
        + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code, forbidden",
    [
        # The package itself: nothing numerical until a name is used.
        ("import csr_jax", NUMERICS + TRAINING_STACK + PLOTTING),
        # The layer and the backbones: jax and flax only.
        (
            "from csr_jax import CSRConv, models, accounting, surgery, policy\n"
            "models.create('resnet20', num_classes=10, csr='t2')",
            TRAINING_STACK + PLOTTING,
        ),
        # Reading run summaries and tables needs no JAX (and no matplotlib until a figure is drawn).
        ("import csr_jax.report", NUMERICS + TRAINING_STACK + PLOTTING),
        # Policies are plain Python data.
        ("import csr_jax.policy", NUMERICS + TRAINING_STACK + PLOTTING),
        # What a dataset looks like, without the pipeline that reads it.
        ("from csr_jax.data.info import DatasetInfo", NUMERICS + TRAINING_STACK + PLOTTING),
        ("import csr_jax.data", NUMERICS + TRAINING_STACK + PLOTTING),
    ],
)
def test_import_loads_only_what_it_needs(code, forbidden):
    loaded = _loaded_after(code)
    assert not loaded & set(forbidden), f"{code!r} loaded {sorted(loaded & set(forbidden))}"


def test_lazy_names_resolve_to_their_modules():
    """The lazily exported names are the real objects, and a typo is an AttributeError."""
    import csr_jax
    import csr_jax.data
    from csr_jax.csr_conv import CSRConv
    from csr_jax.data import pipeline

    assert csr_jax.CSRConv is CSRConv
    assert set(csr_jax.__all__) <= set(dir(csr_jax))
    for name in csr_jax.__all__:
        assert getattr(csr_jax, name) is not None
    assert csr_jax.data.make_train_iterator is pipeline.make_train_iterator
    with pytest.raises(AttributeError, match="no attribute 'CSRconv'"):
        csr_jax.CSRconv  # noqa: B018
