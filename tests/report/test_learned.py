"""The learned-styles report's choices and table, on hand-made inputs: no network trains."""

from __future__ import annotations

import json

from report import learned
from tests.helpers.models import make_multistyle_store


def test_the_paintings_no_shipped_model_covers(tmp_path):
    store = make_multistyle_store(tmp_path / "store", ("candy", "udnie"), singles=("wave",))
    styles = tmp_path / "styles"
    styles.mkdir()
    for stem in ("candy", "udnie", "wave", "scream", "muse"):
        (styles / f"{stem}.jpg").write_bytes(b"")
    assert [p.stem for p in learned.uncovered(styles, store)] == ["muse", "scream"]


def doc() -> dict:
    terms = {"learned": {"content": 30000.0, "style": 20000.0, "tv": 0.0},
             "network": {"content": 20000.0, "style": 20000.0, "tv": 0.0},
             "gatys": {"content": 50000.0, "style": 50000.0, "tv": 0.0}}
    other = {k: {t: 2 * v for t, v in d.items()} for k, d in terms.items()}
    machine = {"cpu": "a CPU", "cores": 2, "torch": "2.14", "threads": 2}
    settings = {"content": ["a", "b"], "size": 256, "gatys_iterations": 100,
                "network_iterations": 2000, "crop_size": 128, "learn_time_limit_s": 480.0}
    return {"uncovered": ["muse", "scream"], "settings": settings,
            "paintings": {"scream": {"machine": machine, "learn": {"seconds": 474.0, "steps": 812},
                                     "images": {"a": terms, "b": other}}}}


def test_the_table_compares_totals_averaged_over_the_images():
    lines = learned.table(doc()).splitlines()
    assert lines[0].startswith("| painting | learned: minutes (steps) | learned: content / style "
                               "| network (2000 steps): content / style | Gatys 100 it.")
    # means over a and b: learned 45,000 / 30,000 (75,000), network 30,000 / 30,000 (60,000),
    # Gatys 75,000 / 75,000 (150,000)
    assert lines[2] == ("| `scream` | 7.9 (812) | 45,000 / 30,000 | 30,000 / 30,000 | "
                        "75,000 / 75,000 | 1.25 | 0.50 |")


def test_the_page_shows_every_picture(tmp_path):
    learned.write_page(doc(), tmp_path)
    page = (tmp_path / "learned.md").read_text()
    assert "totals are compared. 1 of the 2 paintings are scored so far." in page
    assert ("Over the 1 paintings, the learned style's total is 1.25-1.25x the per-style "
            "network's (median 1.25) and 0.50-0.50x that of Gatys et al. after 100 iterations "
            "(median 0.50).") in page
    for kind in ("painting", "learned", "network", "gatys"):
        assert f'src="learned/scream_{kind}.jpg"' in page
    complete = doc()
    complete["paintings"]["muse"] = complete["paintings"]["scream"]
    learned.write_page(complete, tmp_path)
    assert ("totals are compared. All 2 paintings are scored."
            in (tmp_path / "learned.md").read_text())


def test_the_page_names_the_machine_of_each_painting(tmp_path):
    page = doc()
    scream = page["paintings"]["scream"]
    scream["machine"]["load_average"] = 2.2
    page["paintings"]["muse"] = {**scream,
                                 "machine": {"cpu": "another CPU", "cores": 16, "torch": "2.11",
                                             "threads": 16}}
    page["paintings"]["wave"] = {**scream, "machine": {**scream["machine"], "load_average": 1.9}}
    # the same CPU name without bf16 units trains in fp32, at half the steps: listed apart
    page["paintings"]["nude"] = {**scream, "machine": {**scream["machine"], "native_bf16": False}}
    learned.write_page(page, tmp_path)
    text = (tmp_path / "learned.md").read_text()
    assert ("- a CPU, 2 cores, torch 2.14, 2 threads (1-min load average 1.9-2.2 at the end of "
            "each painting): `scream`, `wave`\n") in text
    assert "- another CPU, 16 cores, torch 2.11, 16 threads: `muse`\n" in text
    assert ("- a CPU, 2 cores, torch 2.14, 2 threads, no native bf16, so fp32 "
            "(1-min load average 2.2 at the end of each painting): `nude`\n") in text


def test_scores_go_on_from_the_committed_page_and_the_work_folder(tmp_path):
    docs, work = tmp_path / "docs", tmp_path / "work"
    docs.mkdir()
    work.mkdir()
    committed = doc()
    (docs / "learned.json").write_text(json.dumps(committed))
    assert learned.kept_scores(work, docs) == {
        "scream": {"settings": committed["settings"], **committed["paintings"]["scream"]}}
    # a painting scored again in the work folder replaces the committed one
    (work / "scores.json").write_text(json.dumps({"scream": {"settings": {}, "learn": {}}}))
    assert learned.kept_scores(work, docs)["scream"] == {"settings": {}, "learn": {}}


def test_the_summary_gives_the_range_and_median_of_the_ratios():
    page = doc()
    scream = page["paintings"]["scream"]
    # muse: every learned term doubled, so 2.50x the network and 1.00x Gatys
    page["paintings"]["muse"] = {**scream, "images": {
        im: {**terms, "learned": {t: 2 * v for t, v in terms["learned"].items()}}
        for im, terms in scream["images"].items()}}
    assert learned.summary(page) == (
        "Over the 2 paintings, the learned style's total is 1.25-2.50x the per-style network's "
        "(median 1.88) and 0.50-1.00x that of Gatys et al. after 100 iterations (median 0.75).")


def test_the_readme_block_counts_what_was_learned_where():
    text = learned.readme_block(doc())
    assert ("1 of the 2 paintings of the shared data's styles that no shipped model covers, "
            "each learned into `multistyle` in 7.9-7.9 minutes on 2-core CPUs (812-812 steps "
            "of 128-px crops), scored on a, b at 256 px") in text
    assert text.endswith("Over the 1 paintings, the learned style's total is 1.25-1.25x the "
                         "per-style network's (median 1.25) and 0.50-0.50x that of Gatys et al. "
                         "after 100 iterations (median 0.50).")
