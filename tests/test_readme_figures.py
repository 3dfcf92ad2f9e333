"""Every number in README.md's generated blocks matches the manifest or JSON it came from.

The blocks are written by `python -m report readme`; this test parses them back without
using the report's code, so a stale README (a model retrained, a measurement rerun, a model
added) or a formatting bug shows here. Paper figures are typed in again from the paper.
Refresh with: python -m report {sr,style,speed,gallery} && python -m report readme
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# pytest puts tests/ on sys.path for this file, where tests/train and tests/model_store would
# pass for the packages as namespace packages; with the root on it, the real packages win.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DOCS = REPO / "docs"
# The manifests are read as plain JSON: tests/ on sys.path would shadow the model_store package
# with tests/model_store, and the plain files are what the README must agree with anyway.
MANIFESTS = {p.parent.name: json.loads(p.read_text())
             for p in sorted((REPO / "model_store").glob("*/manifest.json"))}
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
# The paper's Fig. 8 (x4 PSNR / SSIM) and Table 1, its speed table (seconds, GTX Titan X).
PAPER_SR = {"Set5": {"bicubic": (28.43, 0.8114), "pixel": (28.40, 0.8205),
                     "SRCNN": (30.48, 0.8628), "feature": (27.09, 0.7680)},
            "Set14": {"bicubic": (25.99, 0.7301), "pixel": (25.75, 0.6994),
                      "SRCNN": (27.49, 0.7503), "feature": (24.99, 0.6731)}}
PAPER_SPEED = {"256": (3.17, 9.52, 15.86, 0.015), "512": (10.97, 32.91, 54.85, 0.05),
               "1024": (42.89, 128.66, 214.44, 0.21)}


def block(name: str) -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(rf"<!-- BEGIN generated:{name} -->(.*?)<!-- END generated:{name} -->", text,
                  re.S)
    assert m, f"README.md has no generated:{name} block"
    assert m.group(1).strip(), f"README's {name} block is empty: run python -m report"
    return m.group(1)


def tables(text: str) -> list[list[dict[str, str]]]:
    """Each markdown table as a list of {header: cell} rows."""
    found, lines = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            lines.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif lines:
            header, rows = lines[0], lines[2:]
            found.append([dict(zip(header, row, strict=True)) for row in rows])
            lines = []
    return found


def numbers(cell: str) -> list[str]:
    return NUMBER.findall(cell)


def assert_shows(shown: str, value: float) -> None:
    """`shown` is `value` rounded to as many decimals as it prints."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    assert abs(float(shown.replace(",", "")) - value) <= 0.5 * 10 ** -decimals + 1e-9, (
        f"README shows {shown}, the source says {value}")


def assert_cell(cell: str, values: list[float]) -> None:
    shown = numbers(cell)
    assert len(shown) == len(values), f"{cell!r}: expected {len(values)} numbers"
    for s, v in zip(shown, values, strict=True):
        assert_shows(s, v)


def model_name(cell: str) -> str | None:
    m = re.search(r"`([a-z0-9_\-]+)`", cell)
    return m.group(1) if m else None


def test_sr_table_matches_the_manifests():
    sr = json.loads((DOCS / "sr.json").read_text())
    (rows,) = tables(block("sr-table"))
    datasets = [h.removesuffix(" here") for h in rows[0] if h.endswith(" here")]
    assert datasets, "no '<dataset> here' columns"
    shown = set()
    for row in rows:
        factor = int(row["factor"].lstrip("×"))
        name = model_name(row["method"])
        kind = ("SRCNN" if "SRCNN" in row["method"] else "bicubic" if name is None
                else "pixel" if "pixel" in row["method"] else "feature")
        if name:
            manifest = MANIFESTS[name]
            assert manifest["factor"] == factor
            assert manifest["training"]["config"]["loss"] == {"pixel": "pixel",
                                                              "feature": "feat"}[kind]
        for ds in datasets:
            here = row[f"{ds} here"]
            if kind == "SRCNN":
                assert here == "—"
            elif name:
                m = MANIFESTS[name]["metrics"][f"{ds}_x{factor}"]
                assert_cell(here, [m["psnr"], m["ssim"]])
                shown.add((name, ds))
            else:
                b = sr["results"][ds][f"x{factor}"]["bicubic"]
                assert_cell(here, [b["psnr"], b["ssim"]])
            paper = row[f"{ds} paper"]
            if factor == 4:
                assert_cell(paper, list(PAPER_SR[ds][kind]))
            else:
                assert paper == "—"
    measured = {(name, ds) for name, m in MANIFESTS.items() if m["task"] == "superres"
                for ds in datasets if f"{ds}_x{m['factor']}" in m["metrics"]}
    assert measured <= shown, f"measured but not in the README: {sorted(measured - shown)}"


def test_style_table_matches_the_manifests():
    (rows,) = tables(block("style-table"))
    names = []
    for row in rows:
        name = model_name(row["style"])
        names.append(name)
        metrics = MANIFESTS[name]["metrics"]
        v, check = metrics["style_vs_gatys"], metrics["style_check"]
        assert_cell(row["network"], [v["network"][k] for k in ("content", "style", "seconds")])
        gatys = [h for h in row if h.startswith("Gatys ")]
        assert sorted(h.split()[1] for h in gatys) == sorted(v["gatys"])
        network_total = sum(v["network"][k] for k in ("content", "style", "tv"))
        for h in gatys:
            g = v["gatys"][h.split()[1]]
            assert_cell(row[h], [g["content"], g["style"], g["seconds"]])
            below = network_total <= sum(g[k] for k in ("content", "style", "tv"))
            assert row[h].endswith("✓" if below else "✗")
        (ratio,) = [h for h in row if h.startswith("network ÷ Gatys")]
        assert_cell(row[ratio], [check["max_ratio"]])
        assert check["passed"] == (check["max_ratio"] <= 1.0)
        assert row["shipped"] == ("yes" if check["passed"] else "**no**")
    assert names == sorted(n for n, m in MANIFESTS.items() if m["architecture"] == "style")


def test_speed_tables_match_the_json_and_the_manifests():
    speed = json.loads((DOCS / "speed.json").read_text())
    measured, reference = tables(block("speed-table"))
    for row in measured:
        size = numbers(row["image size"])[0]
        r = speed["sizes"][size]
        eager = r["network"]["eager_fp32_s"]
        assert_cell(row["network, eager fp32"], [eager])
        assert_cell(row["network, service path"], [r["network"]["service_s"]])
        for m in MANIFESTS.values():
            cpu = m["metrics"].get("speed_cpu", {})
            if cpu.get("measured_with") == speed["model"]:
                assert cpu["eager_fp32_s"][size] == eager
        iterations = [h.split()[1] for h in row if h.startswith("Gatys ")]
        assert iterations == [str(n) for n in speed["iterations"]]
        for n in iterations:
            t = r["gatys"]["totals"][n]
            assert_cell(row[f"Gatys {n} it."], [t["seconds"]])
            assert ("(est.)" in row[f"Gatys {n} it."]) == (not t["measured"])
        (speedup,) = [h for h in row if h.startswith("speed-up")]
        assert_cell(row[speedup], [r["gatys"]["totals"][n]["seconds"] / eager
                                   for n in iterations])
    # GPU: only the paths the service runs, which the bench records (speed.gpu_reference)
    served = set(speed["gpu"].get("service_paths", []))
    gpu = {(size, path): ms for size, by_path in speed["gpu"]["latency_ms"].items()
           for path, ms in by_path.items() if path in served}
    for row in reference:
        size = numbers(row["image size"])[0]
        cells = list(row.values())
        assert_cell(cells[1] + " " + cells[2], list(PAPER_SPEED[size]))
        assert len(cells) == (4 if served else 3)
        fastest = [ms for (s, _), ms in gpu.items() if s == size]
        if fastest:
            assert_cell(re.sub(r"`[^`]*`", "", cells[3]), [min(fastest)])   # not fp16's 16
        elif served:
            assert cells[3] == "—"


def test_gallery_pictures_exist_and_cover_every_style():
    text = block("gallery")
    sources = re.findall(r'src="([^"]+)"', text)
    assert sources
    missing = [s for s in sources if not (REPO / s).is_file()]
    assert not missing, f"missing gallery pictures: {missing[:5]}"
    styles = {n for n, m in MANIFESTS.items() if m["architecture"] == "style"}
    assert styles <= {model_name(r["style"]) for r in tables(text)[0] if model_name(r["style"])}


@pytest.mark.parametrize("name", ["sr", "style", "speed"])
def test_docs_pages_exist(name: str):
    assert (DOCS / f"{name}.md").is_file() and (DOCS / f"{name}.png").is_file()


BENCH = REPO / "bench" / "results"
SETUP_LABELS = {"measured policy (default)": "measured", "no batching": "no_batching",
                "one forward pass at a time": "one_lane", "fixed batches of up to 8": "fixed"}


def test_bench_block_matches_the_results():
    text = block("bench")
    found = tables(text)
    model = json.loads((BENCH / "model-cpu.json").read_text())
    model_rows = [t for t in found if "network" in t[0]]
    assert len(model_rows) == (1 if model.get("complete") else 0)
    for row in (model_rows[0] if model_rows else []):
        side = int(numbers(row["output size"])[0])
        (s,) = [s for s in model["summary"]
                if s["network"] == model_name(row["network"]) and s["size"] == side]
        assert_cell(row["eager fp32"], [s["baseline_ms"]])
        assert model_name(row["service path"]) == s["service_path"]
        assert_cell(row["service path"], [s["service_ms"]])
        assert_cell(row["speed-up"], [s["service_speedup"]])
        if "service_lanes_speedup" in s:
            assert_cell(row["with lanes"], [s["service_lanes_speedup"], s["service_lanes"]])
        else:
            assert row["with lanes"] == "—"
    services = [json.loads(p.read_text()) for p in
                [BENCH / "service-cpu.json", *sorted(BENCH.glob("service-cuda*.json"))]
                if p.is_file()]
    sweeps = [t for t in found if "setup" in t[0]]
    goals = [t for t in found if "target" in t[0]]
    assert len(sweeps) == len(goals) == len(services)
    for doc, rows, targets in zip(services, sweeps, goals, strict=True):
        one = next(k for k in doc["sweeps"]["measured"]["runs"] if k != "mixed")
        assert f"{one}×{one} images" in text
        for row in rows:
            runs = doc["sweeps"][SETUP_LABELS[row["setup"]]]["runs"][one]
            assert [int(c) for c in row if c != "setup"] == doc["levels"]
            for r in runs:
                assert_cell(row[str(r["concurrency"])], [r["throughput_per_s"]])
        t = doc["targets"]
        assert f"{t['raw_batch1_latency_ms']:.1f} ms at batch 1" in text
        turns = doc["sweeps"]["measured"]["one_client_in_turns"]
        assert f"{turns['http_p50_ms']:.1f} against {turns['raw_batch1_p50_ms']:.1f} ms" in text
        shown = {}
        for row in targets:          # keyed by the number of clients, or "no errors"
            m = re.search(r"at (\d+) clients?", row["target"])
            shown[m.group(1) if m else row["target"]] = row
        assert_cell(shown["8"]["measured"], [t["conc8_throughput_vs_raw_best"]])
        assert_cell(shown["1"]["measured"], [abs(t["conc1_p50_minus_raw_batch1_ms"])])
        assert shown["1"]["measured"].startswith("-") == (t["conc1_p50_minus_raw_batch1_ms"] < 0)
        assert_cell(shown["16"]["measured"], [t["conc16_vs_conc4_throughput"]])
        assert_cell(shown["no errors"]["measured"], [t["errors_total"]])
        for key, met in (("8", "conc8_target_0.85_met"), ("1", "conc1_target_10ms_met"),
                         ("16", "conc16_target_met"), ("no errors", "zero_errors_met")):
            assert (shown[key]["met"] == "yes") == t[met]
    for path in sorted(BENCH.glob("model-cuda*.json")):   # the service's paths only
        gpu = json.loads(path.read_text())
        served = set(gpu.get("service_paths", []))
        style = [r for r in gpu["results"] if r["network"] == "style" and "latency_ms" in r
                 and r["path"] in served]
        if not style:
            assert "no figures of the service's own paths yet" in text
            continue
        best = max(r["images_per_s"] for r in style if r["size"] == 256)
        fastest = min(r["latency_ms"] for r in style if r["size"] == 1024 and r["batch"] == 1)
        assert f"{best:,.0f} images/s" in text and f"{fastest:.2f} ms" in text
    stub = BENCH / "service-stub.json"
    if stub.is_file():
        check_front_end(json.loads(stub.read_text()), found)
    if (BENCH / "cache.json").is_file():
        cache = json.loads((BENCH / "cache.json").read_text())["cache"]
        assert f"p50 {cache['redis']['p50_ms']:.2f} ms from Redis" in text
    if (BENCH / "live.json").is_file():
        live = json.loads((BENCH / "live.json").read_text())
        swap, learn = live["swap"], live["learn"]
        assert (f"{swap['lost']} of {swap['outside']['answers'] + swap['during']['answers']:,} "
                "answers lost") in text
        assert (f"p99 {swap['outside']['p99_ms']:,.0f} ms outside the reloads, "
                f"{swap['during']['p99_ms']:,.0f} ms overlapping one or the 2 s after it "
                f"({swap['p99_ratio']:.2f}×") in text
        assert f"learned in {learn['steps']} steps" in text
        if learn["served_status"] == 200:
            assert f"served {learn['served_after_s'] / 60:.1f} minutes after the upload" in text
        assert (f"{learn['during']['answers']:,} answers meanwhile, {learn['others_failed']} "
                f"failed") in text


def check_front_end(doc: dict, found: list) -> None:
    """The front end's table (`bench service --device stub`) against its JSON."""
    (rows,) = [t for t in found if "body, workers" in t[0]]
    top = max(doc["levels"])
    runs = {(kind, c["workers"]): c["runs"][kind] for c in doc["configs"] for kind in c["runs"]}
    assert len(rows) == len(runs)
    for row in rows:
        label, workers = row["body, workers"].rsplit(", ", 1)
        kind = "photo_jpeg" if label.startswith("photo") else "noise_png"
        by = {r["concurrency"]: r for r in runs[kind, int(workers)]}
        for c in doc["levels"]:
            assert_cell(row[str(c)], [by[c]["throughput_per_s"]])
        assert_cell(row[f"server CPU ms / request at {top}"],
                    [by[top]["server_cpu_ms_per_request"]])
    (goals,) = [t for t in found if "front-end target" in t[0]]
    t = doc["targets"]
    shown = {g["front-end target"]: g for g in goals}
    (ceiling,) = [g for k, g in shown.items() if "codec-only ceiling" in k]
    (ratio,) = [v for k, v in t.items() if k.startswith("noise_png_")
                and k.endswith(f"_at_{top}_vs_codec_ceiling")
                and f"_{max(c['workers'] for c in doc['configs'])}w_" in k]
    assert_cell(ceiling["measured"], [ratio])
    assert (ceiling["met"] == "yes") == t["codec_ceiling_0.9_met"]
    (errors,) = [g for k, g in shown.items() if k == "no errors"]
    assert int(errors["measured"]) == t["errors_total"]


def test_learned_block_matches_the_json():
    text = block("learned")
    doc = json.loads((DOCS / "learned.json").read_text())
    runs = list(doc["paintings"].values())
    minutes = sorted(r["learn"]["seconds"] / 60 for r in runs)
    steps = sorted(r["learn"]["steps"] for r in runs)

    def mean_total(r: dict, method: str) -> float:
        return sum(im[method]["content"] + im[method]["style"] + im[method]["tv"]
                   for im in r["images"].values()) / len(r["images"])

    def shows(pattern: str, *expected: float) -> None:
        m = re.search(pattern, text)
        assert m, f"README's learned block has no {pattern!r}"
        for s, v in zip(m.groups(), expected, strict=True):
            assert_shows(s, v)

    every = len(doc["uncovered"])
    assert (f"all {every} paintings" if len(runs) == every else f"{len(runs)} of the {every}"
            ) in text
    shows(r"in ([\d.]+)-([\d.]+) minutes", minutes[0], minutes[-1])
    shows(r"\(([\d,]+)-([\d,]+) steps", steps[0], steps[-1])
    for method, pattern in (("network", r"total is ([\d.]+)-([\d.]+)x the per-style network's "
                                        r"\(median ([\d.]+)\)"),
                            ("gatys", r"and ([\d.]+)-([\d.]+)x that of Gatys et al\. after "
                                      r"100 iterations \(median ([\d.]+)\)")):
        ratios = sorted(mean_total(r, "learned") / mean_total(r, method) for r in runs)
        half = len(ratios) // 2
        median = ratios[half] if len(ratios) % 2 else (ratios[half - 1] + ratios[half]) / 2
        shows(pattern, ratios[0], ratios[-1], median)
