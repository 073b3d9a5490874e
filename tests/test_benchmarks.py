"""The benchmarks run end to end on tiny cases and report well-formed rows; the naive layer the
layer benchmark times computes exactly CSRConv's function."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import layer_bench, model_bench
from csr_jax import CSRConv

REPO = Path(__file__).resolve().parent.parent


def test_model_bench_tiny_rows(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    cases = model_bench.select_cases("tiny", None)
    # The shipped layer file doubles as the "earlier version" that --baseline-layer loads.
    rows = model_bench.run(
        cases,
        ["ordinary", "csr", "csr-baseline"],
        repeats=2,
        target_s=0.0,
        isolate=False,
        json_path=str(out),
        baseline_layer=str(REPO / "csr_jax" / "csr_conv.py"),
    )
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == rows and [r["variant"] for r in rows] == ["ordinary", "csr", "csr-baseline"]
    for row in rows:
        assert row["images_per_s"] > 0 and row["step_ms"] > 0 and len(row["step_ms_repeats"]) == 2
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["step_ms"] * 1e3, rel=1e-2)
        assert row["memory_source"] == "memory_analysis" and row["memory"]["planned_bytes"] > 0
        assert row["compile_s"] > 0 and row["macs_per_image"] > 0
        assert (row["batch"], row["image"], row["dtype"]) == (2, 8, "fp32")
    ordinary, csr, baseline = rows
    # The CSR network has fewer weights (expand T=3, project T=4), as the preset promises; the
    # baseline layer builds the same architecture.
    assert csr["params"] < ordinary["params"]
    assert (baseline["params"], baseline["macs_per_image"]) == (
        csr["params"],
        csr["macs_per_image"],
    )
    table = model_bench.format_table(rows)
    ratio = csr["images_per_s"] / ordinary["images_per_s"]
    assert f"| {ratio:.2f} |" in table and "memory_analysis" in table
    capsys.readouterr()
    model_bench.main(["--table", str(out)])
    assert capsys.readouterr().out.strip() == table


def test_model_table_ratios_and_errors():
    def row(variant, ips, mem, macs, **extra):
        return dict(
            case="c",
            title="Net",
            variant=variant,
            images_per_s=ips,
            macs_per_image=macs,
            memory={"planned_bytes": mem},
            memory_source="memory_analysis",
            compile_s=1.0,
            **extra,
        )

    table = model_bench.format_table(
        [
            row("ordinary", 200.0, 2**30, 100),
            row("csr", 150.0, 3 * 2**29, 120),
            {"case": "d", "title": "Other", "variant": "csr", "error": "timed out"},
        ]
    )
    assert "| Net | csr | 200 | 150 | 0.75 | 1.20 | 0.90 | 1,024 / 1,536 | 1.50 |" in table
    assert "| Other | csr |" in table and "timed out" in table


def test_model_bench_rejects_unknown_cases_and_variants():
    with pytest.raises(SystemExit, match="No 'tiny' case matches"):
        model_bench.select_cases("tiny", ["resnet"])
    with pytest.raises(ValueError, match="Unknown variant"):
        model_bench.make_model(model_bench.PRESETS["tiny"][0], "csr-fast")
    with pytest.raises(SystemExit, match="needs --baseline-layer"):
        model_bench.run([], ["csr-baseline"], repeats=1, target_s=0.0, isolate=False)


def test_train_step_imports_without_the_training_loop_dependencies():
    # GPU images may lack grain, orbax and ml-collections; the benchmark must still get the step.
    code = (
        "import sys\n"
        "for name in ('grain', 'orbax', 'orbax.checkpoint', 'ml_collections', 'clu', 'tensorflow_datasets'):\n"
        "    sys.modules[name] = None\n"
        "from benchmarks import model_bench\n"
        "from csr_jax.train import state, steps\n"
        "from csr_jax.train.mesh import make_data_mesh\n"
        "assert callable(steps.make_train_step) and callable(state.create_train_state)\n"
        "assert callable(model_bench.build) and callable(make_data_mesh)\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_layer_bench_tiny_row():
    (row,) = layer_bench.run(2, 2, None, [("tiny 3x3", 8, 12, 3, 4, 8)])
    for key in ("csr_ms", "scan_ms", "naive_ms", "conv_ms"):
        assert row[key] > 0, key
    # The naive step-by-step loop ran on CSRConv's own variables and computed the same function.
    assert row["naive_matches"] and row["naive_max_abs_diff"] < 1e-4
    assert row["csr_over_conv"] == pytest.approx(row["csr_ms"] / row["conv_ms"], rel=1e-2)
    json.loads(json.dumps(row))
    table = layer_bench.format_table([row]).splitlines()
    assert table[0].count("|") == table[1].count("|") == table[2].count("|") == 12
    assert table[2].startswith("| tiny 3x3 | 8x8 | 2 |")
    with_baseline = layer_bench.format_table(
        [dict(row, baseline_ms=2 * row["csr_ms"], baseline_over_csr=2.0)]
    )
    assert with_baseline.splitlines()[2].endswith(f"| {2 * row['csr_ms']:.1f} | 2.00 |")


@pytest.mark.parametrize("c_in,c_out,k,T", [(6, 13, 1, 3)])
def test_naive_layer_equals_csrconv(c_in, c_out, k, T):
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, c_in))
    variables = CSRConv(c_out, k, T).init(jax.random.key(1), x)
    # Move alpha and beta off 0.5, where alpha*relu - beta*r + r would hide a swapped role.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.asarray({"alpha": 0.8, "beta": -0.3}.get(path[-1].key, v), v.dtype),
        variables,
    )
    y_csr = jax.jit(CSRConv(c_out, k, T).apply)(variables, x)
    y_naive = jax.jit(layer_bench.NaiveCSRConv(c_out, k, T).apply)(variables, x)
    np.testing.assert_allclose(np.asarray(y_naive), np.asarray(y_csr), rtol=1e-5, atol=1e-5)


def test_layer_bench_select_runs_cases_at_another_steps_and_size():
    cases = layer_bench.select(layer_bench.CASES, ["resnet56"], 8, steps=16)
    assert cases == [("resnet56 3x3 64->64 T=16", 64, 64, 3, 16, 8)]
    assert layer_bench.select(layer_bench.CASES, ["project"], None, steps=2) == [
        ("mbv2 project 1x1 576->96 T=2", 576, 96, 1, 2, 32),
        ("mbv2 project 1x1 576->96 T=2", 576, 96, 1, 2, 8),
    ]


def test_depthwise_ab_loads_a_revision_that_computes_the_same_conv():
    """The A/B benchmark's "before" module is read from git and computes the same depthwise conv
    (values and gradients) as the working tree's, so its timings compare like for like."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import depthwise_ab
    from csr_jax import depthwise

    old = depthwise_ab.load_module_at("HEAD")
    assert old is not depthwise and hasattr(old, "_taps")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 6, 5, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 1, 3)), jnp.float32)
    pads = ((1, 1), (1, 1))
    f_old = lambda x, w: jnp.sum(jnp.sin(old._taps(x, w, (2, 2), pads)))
    f_new = lambda x, w: jnp.sum(jnp.sin(depthwise._taps(x, w, (2, 2), pads)))
    np.testing.assert_allclose(f_old(x, w), f_new(x, w), rtol=1e-6)
    for a, b in zip(jax.grad(f_old, (0, 1))(x, w), jax.grad(f_new, (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_depthwise_ab_flax_batchnorm_before_turns_the_fused_backward_off():
    """With --flax-batchnorm-before the 'before' step traces nn.BatchNorm's autodiff, and the
    working tree's fused BatchNorm is back afterwards."""
    import jax
    import jax.numpy as jnp

    from benchmarks import depthwise_ab
    from csr_jax import depthwise
    from csr_jax.models.batch_norm import FusedBatchNorm

    bn = FusedBatchNorm(use_running_average=False)
    x = jnp.ones((2, 3, 3, 4))
    variables = bn.init(jax.random.key(0), x)
    traced = lambda: str(
        jax.make_jaxpr(lambda v, x: bn.apply(v, x, mutable=["batch_stats"])[0])(variables, x)
    )
    with depthwise.forced_impl("taps"):
        assert "custom_vjp_call" in traced()
        with depthwise_ab._before(None, flax_batchnorm=True)():
            assert "custom_vjp_call" not in traced()
        assert "custom_vjp_call" in traced()


def test_depthwise_ab_csr_stepwise_r2_before_switches_only_the_composed_second_step():
    """With --csr-stepwise-r2-before a widening 1x1 CSRConv (T=3, g_in 2 < g_out 4) in the XLA
    form traces r_2 = V h_1 instead of forming U V (one dot fewer); the depthwise convs keep
    their CPU path; the working tree's form is back afterwards."""
    import jax
    import jax.numpy as jnp

    from benchmarks import depthwise_ab
    from csr_jax import CSRConv, depthwise, native

    layer = CSRConv(12, 1, 3)
    x = jnp.ones((1, 3, 3, 6))
    params = layer.init(jax.random.key(0), x)
    dots = lambda: str(jax.make_jaxpr(layer.apply)(params, x)).count("dot_general")
    with depthwise.forced_impl("taps"), native.disabled():
        composed = dots()
        with depthwise_ab._before(None, False, csr_stepwise_r2=True)():
            assert dots() == composed - 1
            assert depthwise.default_impl() == "taps"
        assert dots() == composed


def test_depthwise_ab_xla_pointwise_csr_before_switches_the_native_layer_off():
    """With --xla-pointwise-csr-before a widening 1x1 CSRConv traces the XLA form instead of the
    native layer, computing the same values; the native layer is back afterwards."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import depthwise_ab
    from csr_jax import CSRConv, depthwise, native

    assert native.available(), native.build_error()
    layer = CSRConv(12, 1, 3)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 3, 3, 6)), jnp.float32)
    params = layer.init(jax.random.key(0), x)

    def run():
        text = jax.jit(lambda p, x: layer.apply(p, x)).lower(params, x).as_text()
        return "csr_jax_pointwise_csr_forward" in text, layer.apply(params, x)

    with depthwise.forced_impl("taps"):
        native_on, y_native = run()
        with depthwise_ab._before(None, False, xla_pointwise_csr=True)():
            native_off, y_xla = run()
        native_back, _ = run()
    assert (native_on, native_off, native_back) == (True, False, True)
    np.testing.assert_allclose(y_native, y_xla, rtol=1e-5, atol=1e-6)


def test_depthwise_ab_toggles_of_section_11_change_the_traced_step_and_not_its_values():
    """--bn-shared-center-before, --csr-stack-before and --csr-stored-update-before each trace a
    different program (the barrier, the join, the checkpoint) computing the same values and
    gradients; the working tree's forms are back afterwards."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import depthwise_ab
    from csr_jax import CSRConv, depthwise, native
    from csr_jax.models.batch_norm import FusedBatchNorm

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 3, 6)), jnp.float32)
    layer = CSRConv(6, 1, 3)
    bn = FusedBatchNorm(use_running_average=False)
    csr_vars, bn_vars = layer.init(jax.random.key(0), x), bn.init(jax.random.key(1), x)

    def loss(p, x):
        y = layer.apply(p["csr"], x)
        y, _ = bn.apply(p["bn"], y, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y))

    params = {"csr": csr_vars, "bn": bn_vars}
    grad = jax.grad(loss, (0, 1))
    # The toggles change the XLA forms (the BatchNorm barrier is in its XLA backward).
    with depthwise.forced_impl("taps"), native.disabled():
        want_jaxpr, want = str(jax.make_jaxpr(grad)(params, x)), grad(params, x)
        for toggle in ("bn_shared_center", "csr_stack", "csr_stored_update"):
            with depthwise_ab._before(None, False, **{toggle: True})():
                got_jaxpr, got = str(jax.make_jaxpr(grad)(params, x)), grad(params, x)
            assert got_jaxpr != want_jaxpr, toggle
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=toggle)
        assert str(jax.make_jaxpr(grad)(params, x)) == want_jaxpr


def test_depthwise_ab_native_toggles_swap_the_kernels_for_the_xla_forms():
    """--xla-depthwise-before / --xla-batch-norm-before trace the step without the native
    depthwise / BatchNorm kernels (and only those), with the same values and gradients."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    from benchmarks import depthwise_ab
    from csr_jax import depthwise
    from csr_jax.models.batch_norm import FusedBatchNorm

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 4)), jnp.float32)
    bn = FusedBatchNorm(use_running_average=False, activation=nn.relu6)
    kernel = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 1, 4)), jnp.float32)
    bn_vars = bn.init(jax.random.key(1), x)

    def loss(k, p, x):
        y = depthwise.depthwise_conv(x, k, 1, "SAME")
        return jnp.sum(jnp.sin(bn.apply(p, y, mutable=["batch_stats"])[0]))

    def run():
        grad = jax.grad(loss, (0, 1, 2))
        return str(jax.make_jaxpr(grad)(kernel, bn_vars, x)), grad(kernel, bn_vars, x)

    with depthwise.forced_impl("taps"):
        want_jaxpr, want = run()
        assert "csr_jax_depthwise" in want_jaxpr and "csr_jax_batch_norm" in want_jaxpr
        for toggle, gone, kept in (
            ("xla_depthwise", "csr_jax_depthwise", "csr_jax_batch_norm"),
            ("xla_batch_norm", "csr_jax_batch_norm", "csr_jax_depthwise"),
        ):
            with depthwise_ab._before(None, False, **{toggle: True})():
                got_jaxpr, got = run()
            assert gone not in got_jaxpr and kept in got_jaxpr, toggle
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=toggle)
        assert run()[0] == want_jaxpr


def test_step_profile_attributes_kernel_time_to_ops():
    """The profiler matches trace events to HLO instructions and their JAX ops: the tiny
    MobileNetV2's depthwise and 1x1 convs show up by name, and the thread shares cover the step."""
    from benchmarks import step_profile

    hlo = (
        "  %pad_slice_fusion.12 = f32[2,8,8,4]{3,2,1,0} fusion(%x), kind=kLoop, "
        'metadata={op_name="jit(step)/jvp(MobileNetV2)/block_3/depthwise/slice" stack_frame_id=4}'
    )
    assert step_profile.op_names(hlo) == {
        "pad_slice_fusion.12": "jvp(MobileNetV2)/block_N/depthwise/slice"
    }
    assert step_profile.kind_of("pad_slice_fusion.12") == "pad_slice_fusion"

    case = model_bench.select_cases("tiny", None)[0]
    summary = step_profile.profile(case, "ordinary", steps=1)
    ops = " ".join(op for _, op in summary["by_op"])
    assert "depthwise" in ops and "dot_general" in ops
    assert summary["kernel_ms_per_step"] > 0
    assert abs(sum(summary["kernels_running_share"].values()) - 1.0) < 1e-6
    report = step_profile.format_report(case.id, "ordinary", summary, top=5)
    assert "| fusion kind | op | kernels/step | ms/step |" in report
