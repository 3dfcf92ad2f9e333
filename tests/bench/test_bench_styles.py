"""`python -m bench styles --quick` end to end on a tiny store: both configurations start,
serve every style and write the JSON and the plot. Structure only, no timing asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import styles as bench_styles
from bench.__main__ import BENCHMARKS
from model_store import ModelStore
from nets.multistyle_net import MultiStyleNet
from nets.style_net import StyleNet

STYLES = ["a", "b", "c"]


def tiny_store(root: Path) -> Path:
    store = ModelStore(root)
    torch.manual_seed(0)
    store.save(MultiStyleNet(STYLES), name="multi", task="style", architecture="multistyle",
               options={"styles": STYLES, "upsample": "resize_conv", "padding": "reflect"})
    for name in STYLES:
        store.save(StyleNet(norm="instance"), name=name, task="style", architecture="style",
                   options={"norm": "instance"})
    return root


@pytest.mark.timeout(120)
def test_styles_quick(tmp_path: Path) -> None:
    assert BENCHMARKS["styles"] == "bench.styles"
    out = tmp_path / "styles.json"
    store = tiny_store(tmp_path / "store")
    assert bench_styles.main([
        "--quick", "--device", "cpu", "--store", str(store), "--styles", ",".join(STYLES),
        "--multistyle", "multi", "--batch-policy", "fixed", "--images", str(tmp_path / "none"),
        "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"cpu", "cores", "torch", "threads", "gpu"} <= set(result["machine"])
    assert result["styles"] == STYLES and result["levels"] == [1, 2] and result["quick"]
    assert set(result["sweeps"]) == {"per_style", "multistyle"}
    multi = result["sweeps"]["multistyle"]
    assert multi["settings"]["SERVICE_STYLE_BACKEND"] == "multi"
    assert [m["name"] for m in multi["models"]] == ["multi"]
    assert multi["models"][0]["styles"] == STYLES
    for sweep in result["sweeps"].values():
        rows = sweep["runs"]
        assert [r["concurrency"] for r in rows] == [1, 2]
        for r in rows:
            assert {"throughput_per_s", "p50_ms", "p99_ms", "errors", "mean_batch"} <= set(r)
            assert r["errors_total"] == 0 and r["forward_passes"] >= 1
    assert set(result["comparison"]) == {"1", "2"}
    assert out.with_suffix(".png").stat().st_size > 0
