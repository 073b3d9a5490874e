"""experiments.param_table: the rows agree with the built networks and accounting, the files and
the README block are written as documented, and the committed table covers every model."""

from __future__ import annotations

import csv
import os

import jax
import jax.numpy as jnp
import pytest

from csr_jax import accounting, models
from experiments import param_table

RESULTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "results"
)


def eval_call(module, x):
    return module(x, train=False)


@pytest.fixture(scope="module")
def mobilenet_rows():
    return param_table.model_rows("mobilenetv2_cifar", verify=True)


def test_rows_cover_every_T_and_the_reference(mobilenet_rows):
    assert [r.preset for r in mobilenet_rows] == ["t1", "t2", "t3", "t4", "t8", "reference"]
    assert [r.steps for r in mobilenet_rows] == ["1", "2", "3", "4", "8", "3, 4"]
    t1 = mobilenet_rows[0]
    assert (
        t1.ordinary_params == t1.csr_params == 2_237_770
    )  # The standard count for this net (docs/backbones.md §1)
    assert t1.csr_layers == 0 and t1.reduction == 0.0 and t1.csr_macs == t1.ordinary_macs
    counts = [r.csr_params for r in mobilenet_rows[:5]]
    assert all(a > b for a, b in zip(counts, counts[1:]))
    for r in mobilenet_rows:
        assert r.reduction == pytest.approx(100 * (1 - r.csr_params / r.ordinary_params))
    reference = mobilenet_rows[-1]
    assert (
        reference.csr_layers == 34 and reference.conv_layers == 53
    )  # 17 expand + 17 project of 53 convs


def test_macs_match_layer_report_of_the_built_networks(mobilenet_rows):
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    ordinary = models.create("mobilenetv2_cifar", num_classes=10)
    csr = models.create("mobilenetv2_cifar", num_classes=10, csr="reference")
    reference = mobilenet_rows[-1]
    assert reference.ordinary_macs == accounting.model_macs(ordinary, x, method=eval_call)
    assert reference.csr_macs == accounting.model_macs(csr, x, method=eval_call)
    # docs/backbones.md §2: the reference CSR-MobileNetV2 does about as many MACs as the ordinary net; it saves
    # parameters, not compute.
    assert abs(reference.macs_change) < 10 and reference.reduction > 40


def test_verify_catches_a_wrong_closed_form(monkeypatch):
    monkeypatch.setattr(param_table.accounting, "csr_conv_params", lambda *a, **k: 1)
    with pytest.raises(RuntimeError, match="closed form"):
        param_table.model_rows("resnet20", steps=(2,), verify=True)


README = "# Title\n\nintro\n\n<!-- PARAM_TABLE_START -->\nold table\nmore old\n<!-- PARAM_TABLE_END -->\n\ntail\n"


def test_command_writes_markdown_csv_and_the_readme_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    out = tmp_path / "results"
    assert (
        param_table.main(["--models", "resnet20", "--out-dir", str(out), "--readme", str(readme)])
        == 0
    )

    markdown = (out / "param_table.md").read_text()
    assert (
        markdown.startswith("| model | preset | T |")
        and "| resnet20 | t4 | 4 | 18/19 | 269,722 |" in markdown
    )
    assert "**t{N}** (resnet20)" in markdown
    with open(out / "param_table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["preset"] for r in rows] == ["t1", "t2", "t3", "t4", "t8"]
    assert all(r["ordinary_params"] == "269722" for r in rows)
    assert int(rows[4]["csr_params"]) < int(rows[1]["csr_params"]) < 269722

    text = readme.read_text()
    assert "old table" not in text and markdown in text
    assert text.startswith("# Title\n\nintro\n\n<!-- PARAM_TABLE_START -->\n")
    assert text.endswith("<!-- PARAM_TABLE_END -->\n\ntail\n")
    param_table.main(["--models", "resnet20", "--out-dir", str(out), "--readme", str(readme)])
    assert readme.read_text() == text  # rerunning changes nothing


def test_readme_without_markers_is_refused_before_any_work(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    with pytest.raises(SystemExit):
        param_table.main(
            ["--models", "resnet20", "--out-dir", str(tmp_path / "r"), "--readme", str(readme)]
        )
    assert "PARAM_TABLE_START" in capsys.readouterr().err
    assert readme.read_text() == "# no markers here\n" and not (tmp_path / "r").exists()


def test_unknown_model_is_refused_with_the_valid_names(capsys):
    with pytest.raises(SystemExit):
        param_table.main(["--models", "resnet21"])
    assert "resnet20" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    [
        "no markers\n",
        "<!-- PARAM_TABLE_END -->\n<!-- PARAM_TABLE_START -->\n",
        "<!-- PARAM_TABLE_START -->\n<!-- PARAM_TABLE_START -->\n<!-- PARAM_TABLE_END -->\n",
    ],
)
def test_replace_block_rejects_missing_or_misordered_markers(text):
    with pytest.raises(ValueError, match="marker"):
        param_table.replace_block(text, "table")


def test_committed_table_covers_every_model_and_preset():
    with open(os.path.join(RESULTS, "param_table.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert os.path.exists(os.path.join(RESULTS, "param_table.md"))
    listed = {(r["model"], r["preset"]) for r in rows}
    expected = {(m, p) for m in models.list_models() for p in ["t1", *models.list_presets(m)]}
    assert expected <= listed
    spec = {
        "vgg16_cifar": 14_728_266,
        "resnet56": 853_018,
        "resnet110": 1_727_962,
        "densenet40": 1_019_722,
        "mobilenetv2_cifar": 2_237_770,
        "resnet50": 25_557_032,
        "mobilenetv2": 3_504_872,
        "efficientnet_b0": 5_288_548,
        "vgg16_bn": 138_365_992,
    }
    for r in rows:
        if r["model"] in spec:
            assert int(r["ordinary_params"]) == spec[r["model"]]
        assert int(r["csr_params"]) <= int(r["ordinary_params"])
