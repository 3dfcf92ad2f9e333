"""Small hand-made report documents (docs/*.json in miniature) for the table builders' tests."""

from __future__ import annotations

from report.speed import PAPER_SPEED


def sr_doc() -> dict:
    def r(p: float, s: float, sharp: float = 0.5) -> dict:
        return {"psnr": p, "ssim": s, "sharpness": sharp, "images": {}}

    return {
        "models": {"feat4": {"factor": 4, "loss": "feat", "degradation": "paper"},
                   "pix4": {"factor": 4, "loss": "pixel", "degradation": "bicubic"},
                   "feat8": {"factor": 8, "loss": "feat", "degradation": "paper"}},
        "results": {"Set5": {"x4": {"bicubic": r(28.0, 0.8, 0.61), "pix4": r(28.5, 0.82, 0.7),
                                    "feat4": r(27.0, 0.75, 0.934)},
                             "x8": {"bicubic": r(24.0, 0.65), "feat8": r(23.456, 0.61234)}}},
        "results_paper": {"Set5": {"x4": {"bicubic": r(27.0, 0.7), "pix4": r(27.5, 0.72),
                                          "feat4": r(28.0, 0.8)}}},
        "paper_x4": {"Set5": {"bicubic": [28.43, 0.8114], "pixel": [28.40, 0.8153],
                              "SRCNN": [30.48, 0.8628], "feat": [27.09, 0.7680]}},
    }


def style_doc(passed: bool = True) -> dict:
    def terms(c: float, s: float, t: float) -> dict:
        return {"content": c, "style": s, "tv": 1.0, "seconds": t}

    summary = {"network": terms(40000, 30000, 0.25),
               "gatys": {"50": terms(150000, 900000, 60), "300": terms(60000, 20000, 360.4)},
               "unstyled": {"content": 0.0, "style": 280000.0, "tv": 1.0}}
    return {"machine": {"cpu": "CPU", "cores": 2, "torch": "2", "threads": 2, "gpu": None},
            "settings": {"content": ["chicago"], "size": 256, "iterations": [50, 300],
                         "init": "noise", "gate_iterations": 100,
                         "check_images": ["a", "b", "c"], "loss_network": "vgg19"},
            "styles": {"udnie": {"summary": summary,
                                 "check": {"max_ratio": 0.9071 if passed else 1.35,
                                           "passed": passed}}}}


def speed_doc() -> dict:
    gatys = {"measured_iterations": 100, "first_iteration_s": 2.0, "per_iteration_s": 1.0,
             "totals": {"100": {"seconds": 101.0, "measured": True},
                        "300": {"seconds": 301.0, "measured": False}}}
    return {"machine": {"cpu": "CPU", "cores": 2, "torch": "2", "threads": 2, "gpu": None},
            "model": "udnie", "runs": 5, "iterations": [100, 300],
            "sizes": {"256": {"gatys": gatys, "network": {"eager_fp32_s": 0.2,
                                                           "service_s": 0.1}}},
            "gpu": {"source": "bench.json", "machine": {"gpu": "GPU", "torch": "2"},
                    "latency_ms": {"256": {"eager_fp32": 2.5012, "fp16_cuda_graph": 0.94,
                                           "fp16": 2.51, "fp16_graphs": 1.02}},
                    "service_paths": ["fp16", "fp16_graphs"]},
            "paper": PAPER_SPEED}


def gallery_index() -> dict:
    return {"size": 320, "crop": 96, "zoom": 2, "bytes": 2**20,
            "contents": [{"name": "chicago", "path": "gallery/content/chicago.jpg"}],
            "styles": [{"name": "udnie", "painting": "gallery/styles/udnie.jpg",
                        "outputs": [{"content": "chicago", "path": "gallery/udnie/chicago.jpg"}]}],
            "sr": [{"image": "Set5/bird", "factor": 4,
                    "tiles": [{"label": "bicubic", "path": "gallery/sr/b.jpg",
                               "sharpness": 0.5412},
                              {"label": "ground truth", "path": "gallery/sr/hr.jpg"}]}]}
