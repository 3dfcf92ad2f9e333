"""`python -m report learned`: the paintings no shipped model covers, each learned as the service
learns a new style, against a network trained for that painting alone and against Gatys et al.

For each painting of DATA/styles whose name no shipped model carries (11 of them):
1. learned: `python -m train multistyle --add-style` into a copy of the shipped multi-style
   network, with the service's defaults (service/settings.py `learn_*`: 128-px crops, at most
   4,000 steps or `--learn-time-limit-s`, 7.5 minutes; here on every core, where a server gives
   its trainer one and serves on the others); the styles accumulate in one network, as on a
   server;
2. network: `python -m train style` on the painting alone, with the shipped networks' layers
   (`--network-iterations` steps at `--crop-size`; checkpointed, so an interrupted run goes on
   where it stopped);
3. scored with the per-style network's objective (its λ_s from `--style-weight auto`, the same
   rule the learned style used) on `--content`: the learned style, the network, and Gatys et
   al. after `--gatys-iterations` iterations.

Writes docs/learned.{json,md} and docs/learned/*.jpg after each painting. Each stage's result
is kept in `--work` (default runs/learned, outside git), and each painting's scores in
docs/learned.json, so the command can be stopped and run again, here or on another machine, to
go on; `--paintings` can do a few at a time. The page shows every painting scored so far.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from model_store import ModelStore
from nets.device import resolve_device
from report.common import fmt_loss, machine, machine_line, markdown_table, write_json, write_text
from report.style import save_jpeg, total

if TYPE_CHECKING:
    from train.vgg import LossNetwork

log = logging.getLogger(__name__)

# What the service learns with (service/settings.py `learn_*`; report does not import service)
LEARN_ARGS = ["--crop-size", "128", "--iterations", "4000"]


def uncovered(styles_dir: Path, shipped: ModelStore) -> list[Path]:
    """The paintings whose name is no shipped model's, nor a style of one."""
    names = set()
    for name in shipped.names():
        manifest = shipped.manifest(name)
        if manifest.task == "style":
            names.update(manifest.options.get("styles", [name]))
    return sorted(p for p in styles_dir.glob("*.jpg") if p.stem not in names)


def train(argv: list[str]) -> float:
    """Run `python -m train ARGV` (its progress bar on the terminal); its wall seconds."""
    started = time.monotonic()
    log.info("python -m train %s", " ".join(argv))
    subprocess.run([sys.executable, "-m", "train", *argv], check=True)
    return time.monotonic() - started


def learn(painting: Path, work: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The painting learned into the work store's multi-style network, once per work folder:
    learned again (--replace) when a stopped run left the style in the store but no record."""
    store = ModelStore(work / "store")
    record = work / "learned.json"
    learned = json.loads(record.read_text()) if record.is_file() else {}
    if painting.stem not in learned:
        before = store.manifest("multistyle").iterations
        seconds = train(["multistyle", "--add-style", str(painting), "--name", painting.stem,
                         "--replace", "--init-from", "multistyle", "--store", str(store.root),
                         "--data", str(data / "photos"), "--save-dtype", "float32",
                         "--checkpoint-dir", str(work / "runs"), "--checkpoint-every", "40000",
                         "--device", args.device, *LEARN_ARGS,
                         "--time-limit-s", str(args.learn_time_limit_s)])
        learned[painting.stem] = {"seconds": round(seconds, 1),
                                  "steps": store.manifest("multistyle").iterations - before}
        record.write_text(json.dumps(learned, indent=1))
    return learned[painting.stem]


def network(painting: Path, work: Path, data: Path, args: argparse.Namespace) -> None:
    """A style network for the painting alone, trained (or resumed) to its iterations."""
    store = ModelStore(work / "store")
    if (painting.stem in store.names()
            and store.manifest(painting.stem).iterations >= args.network_iterations):
        return
    train(["style", "--style-image", str(painting), "--name", painting.stem,
           "--store", str(store.root), "--data", str(data / "photos"), "--device", args.device,
           "--norm", "instance", "--padding", "reflect", "--upsample", "resize_conv",  # as shipped
           "--crop-size", str(args.crop_size), "--iterations", str(args.network_iterations),
           "--checkpoint-dir", str(work / "runs"), "--checkpoint-every", "100",
           *(["--resume"] if (work / "runs" / painting.stem).is_dir() else [])])


@functools.cache
def loss_network(device: torch.device) -> LossNetwork:
    """VGG, loaded once for every painting a run scores."""
    from train.vgg import LossNetwork
    from train.vgg_weights import resolve
    return LossNetwork(*resolve()).to(device)


def score(painting: Path, work: Path, data: Path, args: argparse.Namespace, docs: Path
          ) -> dict[str, Any]:
    """The three methods' objective terms on each content image (pictures of the first)."""
    from train.gatys import load_image, style_targets, stylize_by_optimisation
    from train.losses import feature_loss, style_loss, tv_loss
    from train.style_training import load_style_image

    device = resolve_device(args.device)
    store = ModelStore(work / "store")
    net, manifest = store.load(painting.stem)
    multi, multi_manifest = store.load("multistyle")
    net, multi = net.to(device).eval(), multi.to(device).eval()
    styles = multi_manifest.options["styles"]
    cfg = manifest.training["config"]
    layers, at = cfg["style_layers"].split(","), cfg["content_layer"]
    vgg = loss_network(device)
    targets = style_targets(vgg, load_style_image(str(painting), cfg["style_size"]
                                                  or cfg["image_size"]).to(device), layers)
    mix = torch.zeros(1, len(styles), device=device)
    mix[0, styles.index(painting.stem)] = 1

    def losses(x: torch.Tensor, photo: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            fx, fp = vgg(x), vgg(photo, upto=at)
            return {"content": cfg["content_weight"] * float(feature_loss(getattr(fx, at),
                                                                          getattr(fp, at))),
                    "style": cfg["style_weight"] * float(style_loss(
                        [getattr(fx, n) for n in layers], targets)),
                    "tv": cfg["tv_weight"] * float(tv_loss(x))}

    out: dict[str, Any] = {"style_weight": cfg["style_weight"],
                           "network_iterations": manifest.iterations, "images": {}}
    for i, stem in enumerate(args.content.split(",")):
        photo = load_image(data / "content-images" / f"{stem}.jpg", args.size).to(device)
        with torch.no_grad():
            results = {"learned": multi(photo, mix), "network": net(photo)}
        results["gatys"], _ = stylize_by_optimisation(
            photo, targets, vgg, args.gatys_iterations, content_layer=at, style_layers=layers,
            content_weight=cfg["content_weight"], style_weight=cfg["style_weight"],
            tv_weight=cfg["tv_weight"])
        out["images"][stem] = {k: losses(x, photo) for k, x in results.items()}
        if i == 0:
            for k, x in results.items():
                save_jpeg(x.cpu(), docs / "learned" / f"{painting.stem}_{k}.jpg")
            save_jpeg(load_image(painting, args.size), docs / "learned" /
                      f"{painting.stem}_painting.jpg")
    return out


def mean_terms(r: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each method's objective terms for one painting, averaged over the content images."""
    return {k: {t: sum(im[k][t] for im in r["images"].values()) / len(r["images"])
                for t in ("content", "style", "tv")} for k in ("learned", "network", "gatys")}


def ratios(r: dict[str, Any]) -> tuple[float, float]:
    """The learned style's total over the per-style network's, and over Gatys et al.'s."""
    terms = mean_terms(r)
    return (total(terms["learned"]) / total(terms["network"]),
            total(terms["learned"]) / total(terms["gatys"]))


def table(doc: dict[str, Any]) -> str:
    gatys = doc["settings"]["gatys_iterations"]
    rows = []
    for name, r in doc["paintings"].items():
        terms = mean_terms(r)
        rows.append([f"`{name}`", f"{r['learn']['seconds'] / 60:.1f} ({r['learn']['steps']})",
                     *(f"{fmt_loss(terms[k]['content'])} / {fmt_loss(terms[k]['style'])}"
                       for k in ("learned", "network", "gatys")),
                     *(f"{x:.2f}" for x in ratios(r))])
    return markdown_table(
        ["painting", "learned: minutes (steps)", "learned: content / style",
         f"network ({doc['settings']['network_iterations']} steps): content / style",
         f"Gatys {gatys} it.: content / style", "learned ÷ network", f"learned ÷ Gatys {gatys}"],
        rows, "l" + "r" * 6)


def summary(doc: dict[str, Any]) -> str:
    """The ratios' range and median over the paintings scored."""
    columns = list(zip(*(ratios(r) for r in doc["paintings"].values()), strict=True))
    if not columns:
        return "No painting is scored yet."
    network, gatys = (sorted(c) for c in columns)
    return (f"Over the {len(network)} paintings, the learned style's total is "
            f"{network[0]:.2f}-{network[-1]:.2f}x the per-style network's (median "
            f"{statistics.median(network):.2f}) and {gatys[0]:.2f}-{gatys[-1]:.2f}x that of "
            f"Gatys et al. after {doc['settings']['gatys_iterations']} iterations (median "
            f"{statistics.median(gatys):.2f}).")


def scored(doc: dict[str, Any]) -> str:
    """How many of the uncovered paintings the document scores: "all 11" or "10 of the 11"."""
    done, every = len(doc["paintings"]), len(doc["uncovered"])
    return f"all {every}" if done == every else f"{done} of the {every}"


def readme_block(doc: dict[str, Any]) -> str:
    """The README's account of the page: what was learned, how long, how it scores."""
    runs = [r["learn"] for r in doc["paintings"].values()]
    minutes = sorted(r["seconds"] / 60 for r in runs)
    steps = sorted(r["steps"] for r in runs)
    s = doc["settings"]
    where = " and ".join(sorted({r["machine"].get("gpu") or f"{r['machine']['cores']}-core CPUs"
                                 for r in doc["paintings"].values()}))
    return (f"New styles learned as `POST /v1/styles` learns them ([docs/learned.md]"
            f"(docs/learned.md), `python -m report learned`): {scored(doc)} paintings of the "
            f"shared data's styles that no shipped model covers, each learned into "
            f"`multistyle` in {minutes[0]:.1f}-{minutes[-1]:.1f} minutes on {where} "
            f"({steps[0]:,}-{steps[-1]:,} steps of {s['crop_size']}-px crops), scored on "
            f"{', '.join(s['content'])} at {s['size']} px with the objective of a network "
            f"trained on the painting alone ({s['network_iterations']:,} steps). "
            + summary(doc))


def write_page(doc: dict[str, Any], docs: Path) -> None:
    pictures = "\n".join(
        f"| `{n}` | " + " | ".join(f'<img src="learned/{n}_{k}.jpg" width="180">'
                                   for k in ("painting", "learned", "network", "gatys")) + " |"
        for n in doc["paintings"])
    s = doc["settings"]
    # Painting runs add up across sessions and machines: each machine once, with its paintings
    machines: dict[str, tuple[list[str], list[float]]] = {}
    for name, r in doc["paintings"].items():
        m = dict(r["machine"])
        load = m.pop("load_average", None)
        names, loads = machines.setdefault(machine_line(m), ([], []))
        names.append(f"`{name}`")
        loads.extend([] if load is None else [load])

    def load_range(loads: list[float]) -> str:
        low, high = f"{min(loads):g}", f"{max(loads):g}"
        shown = low if low == high else f"{low}-{high}"
        return f" (1-min load average {shown} at the end of each painting)"

    where = "\n".join(f"- {line}{load_range(loads) if loads else ''}: {', '.join(names)}"
                      for line, (names, loads) in machines.items())
    so_far = "" if len(doc["paintings"]) == len(doc["uncovered"]) else " so far"
    write_text(docs / "learned.md", f"""# New styles learned as the service learns them

Generated by `python -m report learned`; do not edit by hand. Run on

{where}

Each painting that no shipped model covers, learned into the shipped multi-style network as
`POST /v1/styles` learns it (`python -m train multistyle --add-style`, {' '.join(LEARN_ARGS)}
--time-limit-s {s['learn_time_limit_s']:g}: only its own scale and shift train), beside a
network trained on that painting alone ({s['network_iterations']} steps, {s['crop_size']}-px
crops) and Gatys et al. after {s['gatys_iterations']} L-BFGS iterations. All are scored with
the per-style network's objective (the same λ_s rule) on {', '.join(s['content'])} at
{s['size']} px; totals are compared. {scored(doc).capitalize()} paintings are scored{so_far}.

{table(doc)}

{summary(doc)}

| painting | the painting | learned | network | Gatys {s['gatys_iterations']} it. |
| :--- | :---: | :---: | :---: | :---: |
{pictures}
""")


def kept_scores(work: Path, docs: Path) -> dict[str, Any]:
    """Each painting's scores with the settings they were made with: those on the committed page
    (made on earlier machines), overridden by this work folder's."""
    scores: dict[str, Any] = {}
    page = docs / "learned.json"
    if page.is_file():
        doc = json.loads(page.read_text())
        scores = {stem: {"settings": doc["settings"], **r} for stem, r in doc["paintings"].items()}
    kept = work / "scores.json"
    if kept.is_file():
        scores.update(json.loads(kept.read_text()))
    return scores


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    data, work, docs = Path(args.data), Path(args.work), Path(args.docs)
    shipped = ModelStore(args.store)
    paintings = uncovered(data / "styles", shipped)
    covered = [p.stem for p in paintings]
    if args.paintings:
        paintings = [p for p in paintings if p.stem in args.paintings.split(",")]
    store = ModelStore(work / "store")
    if "multistyle" not in store.names():
        shutil.copytree(shipped.root / "multistyle", store.root / "multistyle")
    settings = {"content": args.content.split(","), "size": args.size,
                "gatys_iterations": args.gatys_iterations,
                "network_iterations": args.network_iterations, "crop_size": args.crop_size,
                "learn_time_limit_s": args.learn_time_limit_s}
    scores = kept_scores(work, docs)
    # One painting at a time, the page rewritten after each: an interrupted run keeps every
    # painting it finished, and the next run (here or on another machine) goes on from there.
    for painting in paintings:
        if scores.get(painting.stem, {}).get("settings") == settings:
            continue
        learned = learn(painting, work, data, args)
        network(painting, work, data, args)
        scores[painting.stem] = {"settings": settings, "machine": machine(), "learn": learned,
                                 **score(painting, work, data, args, docs)}
        (work / "scores.json").write_text(json.dumps(scores, indent=1))
        write_doc(scores, settings, covered, docs)
    write_doc(scores, settings, covered, docs)
    return 0


def write_doc(scores: dict[str, Any], settings: dict[str, Any], covered: list[str], docs: Path
              ) -> None:
    doc = {"settings": settings, "uncovered": covered,
           "paintings": {stem: {k: v for k, v in scores[stem].items() if k != "settings"}
                         for stem in covered if scores.get(stem, {}).get("settings") == settings}}
    write_json(docs / "learned.json", doc)
    write_page(doc, docs)
    print(f"wrote {docs / 'learned.md'}: {len(doc['paintings'])} paintings")
