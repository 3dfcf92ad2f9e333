"""python -m model_store {list,validate,export-onnx,painting}: inspect, check and convert stored
models, and keep a style's painting with it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_store.errors import StoreError
from model_store.store import PAINTING, SHIPPED_ROOT, WEIGHTS, ModelStore


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"


def cmd_list(store: ModelStore, args: argparse.Namespace) -> int:
    names = store.names()
    if not names:
        print(f"no models in {store.root}")
        return 0
    print(f"{'name':<28}{'task':<10}{'factor':>7}{'iterations':>12}  {'sha256':<14}{'size':>10}")
    for name in names:
        try:
            m = store.manifest(name)
        except StoreError as e:  # list what can be listed; `validate` explains the rest
            print(f"{name:<28}INVALID: {e}")
            continue
        weights = store.root / name / WEIGHTS
        size = human_size(weights.stat().st_size) if weights.is_file() else "missing"
        factor = f"x{m.factor}" if m.factor else "-"
        print(f"{name:<28}{m.task:<10}{factor:>7}{m.iterations:>12,}  {m.sha256[:12]:<14}"
              f"{size:>10}")
    return 0


def cmd_validate(store: ModelStore, args: argparse.Namespace) -> int:
    names = args.names or store.names()
    failed = 0
    for name in names:
        try:
            store.validate(name)
        except StoreError as e:
            print(f"FAILED {name}: {e}", file=sys.stderr)
            failed += 1
        else:
            print(f"ok     {name}")
    if failed:
        print(f"{failed} of {len(names)} model(s) in {store.root} failed validation",
              file=sys.stderr)
        return 1
    print(f"{len(names)} model(s) in {store.root} valid")
    return 0


def cmd_export_onnx(store: ModelStore, args: argparse.Namespace) -> int:
    from model_store.onnx_export import export_onnx, verify  # imports torch.onnx: slow

    try:
        net, _ = store.load(args.name)
    except StoreError as e:
        print(f"cannot export {args.name}: {e}", file=sys.stderr)
        return 1
    out = export_onnx(net, args.out or f"{args.name}.onnx", opset=args.opset)
    if args.no_verify:
        print(f"wrote {out}")
        return 0
    try:
        diff = verify(net, out)
    except ValueError as e:
        print(f"wrote {out}, but it does not match torch: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}; onnxruntime matches torch within {diff:.2g} (0-255 scale)")
    return 0


def cmd_painting(store: ModelStore, args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    try:
        manifest = store.manifest(args.name)
        if manifest.task != "style":
            print(f"{args.name} is not a style model", file=sys.stderr)
            return 1
        styles = manifest.options.get("styles")
        if bool(styles) != bool(args.style) or (styles and args.style not in styles):
            print(f"--style names one of a multi-style network's styles ({styles}), and only "
                  "then", file=sys.stderr)
            return 1
        with Image.open(args.image) as im:
            size = store.save_painting(args.name, im, args.style or None)
    except (StoreError, OSError, UnidentifiedImageError) as e:
        print(f"cannot keep the painting of {args.name}: {e}", file=sys.stderr)
        return 1
    where = f"paintings/{args.style}.jpg" if args.style else PAINTING
    print(f"wrote {store.root / args.name / where} ({human_size(size)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from model_store.onnx_export import DEFAULT_OPSET

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=str(SHIPPED_ROOT), help="model store folder")
    parser = argparse.ArgumentParser(prog="python -m model_store", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("list", parents=[common], formatter_class=fmt,
                       help="table of the stored models")
    p.set_defaults(run=cmd_list)
    p = sub.add_parser("validate", parents=[common], formatter_class=fmt,
                       help="check manifests, weight digests and shapes (exit 1 on failure)")
    p.add_argument("names", nargs="*", help="models to validate (default: all)")
    p.set_defaults(run=cmd_validate)
    p = sub.add_parser("export-onnx", parents=[common], formatter_class=fmt,
                       help="write an ONNX file with dynamic batch, height and width")
    p.add_argument("name", help="model to export")
    p.add_argument("--out", default="", help="ONNX file (default: NAME.onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the onnxruntime-vs-torch check on several sizes")
    p.set_defaults(run=cmd_export_onnx)
    p = sub.add_parser("painting", parents=[common], formatter_class=fmt,
                       help="keep a style's painting with it (a small JPEG, for the web page "
                            "and the service's reload gate)")
    p.add_argument("name", help="the style model")
    p.add_argument("image", help="the painting's image file")
    p.add_argument("--style", default="", help="a multi-style network's style it is the "
                                               "painting of")
    p.set_defaults(run=cmd_painting)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(ModelStore(Path(args.store)), args)


if __name__ == "__main__":
    sys.exit(main())
