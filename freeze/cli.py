"""``graphserve freeze``: freeze a checkpoint, SavedModel, Keras file or graph into a verified model.

Writes ``graphs/<name>/<version>/`` (model.pb, model.json, labels.txt) after checking the
frozen graph against its source; ``--inspect`` lists the graph's inputs and outputs first.
A thin layer over the ``freeze`` library: errors are one line on stderr and exit status 2.
``scripts/freeze.py`` is a wrapper around ``main`` for checkouts.

Examples (tiny.keras: the five lines of Keras in docs/freeze.md, "Freeze your own model")::

    graphserve freeze tiny.keras --inspect
    graphserve freeze tiny.keras --name tiny --labels cat,dog,bird --sample docs/samples/cat.jpg
    graphserve freeze tiny.keras --output-pb /tmp/tiny.pb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._serving import manifest as manifest_lib
from .console import import_tensorflow_quietly, setup_logging

KINDS = ("auto", "image", "tensors")  # freeze.tensors.KINDS, without importing TensorFlow for --help

EXIT_USER_ERROR = 2
_CHECKOUT = Path(__file__).resolve().parents[1]
# In a checkout the default is the checkout's graphs/ (as scripts/freeze.py always did);
# installed from a wheel there is no such folder, so ./graphs, like ``graphserve serve``.
DEFAULT_GRAPHS_DIR = _CHECKOUT / "graphs" if (_CHECKOUT / "scripts" / "freeze.py").is_file() else Path("graphs")
# Flags that become ImageOptions fields when given (left out, the library's defaults apply).
IMAGE_OPTIONS = (
    "height",
    "width",
    "channels",
    "flatten",
    "scale",
    "mean",
    "std",
    "resize",
    "antialias",
    "align_corners",
    "half_pixel_centers",
    "scaled_decode",
    "exif_orientation",
    "central_crop",
    "output_kind",
)


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _shape(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 1,224,224,3, got '{text}'"
        ) from None


def _assignment(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{text}'")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return name, lowered == "true"
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"value of {name} must be a number, true or false; got '{value}'")


EPILOG = """\
Without --name or --output-pb nothing is written: the model is frozen and
verified only.

examples (tiny.keras: the five lines of Keras in docs/freeze.md, "Freeze your own model"):
  %(prog)s tiny.keras --inspect
  %(prog)s tiny.keras --name tiny --labels cat,dog,bird
  %(prog)s tiny.keras --output-pb /tmp/tiny.pb"""


def build_parser(prog: str = "graphserve freeze") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Freeze a model into graphs/<name>/<version>/ for the service,\nverified against its source.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the examples' lines
    )
    parser.add_argument(
        "source", help="checkpoint (.meta, prefix or directory), SavedModel directory, .keras/.h5 file, or frozen .pb"
    )
    parser.add_argument("--inspect", action="store_true", help="list placeholders and candidate outputs, then stop")
    where = parser.add_argument_group("where to write")
    where.add_argument(
        "--name", help="model name: writes GRAPHS_DIR/NAME/VERSION/ with model.pb, model.json, labels.txt"
    )
    where.add_argument("--version", type=int, help="version number (default: the next free one)")
    where.add_argument("--graphs-dir", type=Path, default=DEFAULT_GRAPHS_DIR, help="default: %(default)s")
    where.add_argument("--overwrite", action="store_true", help="replace an existing version or --output-pb file")
    where.add_argument("--output-pb", type=Path, help="write only the frozen GraphDef here (any model, no manifest)")
    graph = parser.add_argument_group("what to freeze")
    graph.add_argument(
        "--input", action="append", help="input tensor or signature key (default: picked if unambiguous)"
    )
    graph.add_argument(
        "--output", action="append", help="output tensor or signature key (default: picked if unambiguous)"
    )
    graph.add_argument(
        "--kind",
        choices=KINDS,
        default="auto",
        help="serve it as an image classifier or by its own tensors (default: auto, image when image flags "
        "are given or the graph takes one [N,H,W,C] image batch and gives [N,classes])",
    )
    graph.add_argument(
        "--signature",
        action="append",
        help="SavedModel signature (repeatable; default: serving_default for an image model, all for a tensor model)",
    )
    graph.add_argument("--tags", help="SavedModel MetaGraph tags, comma-separated (default: serve)")
    graph.add_argument("--graph-fn", help="module:function or file.py:function that rebuilds a checkpoint's graph")
    graph.add_argument(
        "--set",
        action="append",
        type=_assignment,
        default=[],
        metavar="NAME=VALUE",
        help="fix a placeholder to a constant, e.g. keep_prob=1.0 or is_training=false",
    )
    image = parser.add_argument_group("image model (model.json)")
    image.add_argument("--height", type=int, help="input height (default: read from the input shape)")
    image.add_argument("--width", type=int, help="input width (default: read from the input shape)")
    image.add_argument("--channels", type=int, choices=(1, 3), help="1 gray, 3 RGB (default: from the input shape)")
    image.add_argument(
        "--flatten",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the model takes flat [N, H*W*C] vectors (default: read from the input shape)",
    )
    image.add_argument("--scale", choices=manifest_lib.SCALE_PRESETS, help="pixel scaling (default: [0,1])")
    image.add_argument("--mean", type=_numbers, help="per-channel mean in 0..255 units (with --scale mean_std)")
    image.add_argument("--std", type=_numbers, help="per-channel std in 0..255 units (with --scale mean_std)")
    image.add_argument(
        "--resize",
        choices=manifest_lib.RESIZE_METHODS,
        metavar="METHOD",
        help="the resize the model was trained with (default: bilinear): TF2's "
        + ", ".join(m for m in manifest_lib.RESIZE_METHODS if "_" not in m)
        + "; TF1's "
        + ", ".join(m for m in manifest_lib.RESIZE_METHODS if m.startswith("tf1_"))
        + "; Pillow's "
        + ", ".join(m for m in manifest_lib.RESIZE_METHODS if m.startswith("pillow_")),
    )
    image.add_argument(
        "--align-corners", action="store_true", default=None, help="tf1_* resizes: TF1's align_corners=True"
    )
    image.add_argument(
        "--half-pixel-centers", action="store_true", default=None, help="tf1_* resizes: TF1's half_pixel_centers=True"
    )
    image.add_argument(
        "--scaled-decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode JPEGs at 1/2, 1/4 or 1/8 scale when that still covers the input size "
        "(default: on for TF2's antialiased resizes, off otherwise)",
    )
    image.add_argument(
        "--no-exif-orientation",
        dest="exif_orientation",
        action="store_false",
        default=None,
        help="do not turn JPEGs upright by their EXIF Orientation tag (default: turn them)",
    )
    image.add_argument(
        "--no-antialias",
        dest="antialias",
        action="store_false",
        default=None,
        help="downscale without tf.image.resize's antialias filter, as cv2.resize and TF1 did "
        "(TF2 resizes only; default: antialiased)",
    )
    image.add_argument(
        "--central-crop", type=float, metavar="FRACTION", help="keep the central FRACTION (0..1] before resizing"
    )
    image.add_argument(
        "--output-kind",
        choices=manifest_lib.OUTPUT_KINDS,
        help="default: probabilities after a softmax, scores after a ReLU, else logits",
    )
    image.add_argument("--labels", help="labels file (one per line) or a comma-separated list")
    check = parser.add_argument_group("verification")
    check.add_argument(
        "--sample", action="append", default=[], metavar="IMAGE", help="verify on this real image (repeatable)"
    )
    check.add_argument(
        "--tolerance",
        type=float,
        help="max allowed |source - frozen| (and |reference - ours|), relative above 1 (default: 1e-4)",
    )
    check.add_argument(
        "--reference-preprocess",
        metavar="MODULE:FUNCTION",
        help="your own preprocessing (module:function or file.py:function, image path -> model input array): "
        "each --sample is compared input to input and output to output with ours; fails above --tolerance",
    )
    check.add_argument(
        "--input-shape", type=_shape, help="shape for random inputs when the graph's is not fixed, e.g. 1,224,224,3"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step, and TensorFlow's own messages")
    return parser


def _labels(value: str | None) -> list[str] | None:
    from . import ExportError, read_labels

    if value is None:
        return None
    if Path(value).is_file():
        return read_labels(value)
    if "," in value:
        return [v.strip() for v in value.split(",")]
    raise ExportError(f"labels file {value} not found (give a file, or a comma-separated list)")


def run(args: argparse.Namespace) -> int:
    from . import CheckOptions, ImageOptions, LoadOptions, Selection, WriteOptions, freeze_model, inspect_model

    load = LoadOptions(
        graph_fn=args.graph_fn, signature=args.signature, tags=args.tags.split(",") if args.tags else None
    )
    if args.inspect:
        print(inspect_model(args.source, load=load).format())
        return 0
    given = {k: getattr(args, k) for k in IMAGE_OPTIONS if getattr(args, k) is not None}
    image = ImageOptions(**given) if given else None  # None: the kind is the graph's (or --kind's)
    tolerance = {"tolerance": args.tolerance} if args.tolerance is not None else {}  # else the library's default
    result = freeze_model(
        args.source,
        load=load,
        select=Selection(inputs=args.input, outputs=args.output, constants=dict(args.set)),
        kind=args.kind,
        image=image,
        labels=_labels(args.labels),
        check=CheckOptions(
            samples=args.sample,
            input_shape=args.input_shape,
            reference_preprocess=args.reference_preprocess,
            **tolerance,
        ),
        write=WriteOptions(
            graphs_dir=args.graphs_dir if args.name else None,
            name=args.name,
            version=args.version,
            overwrite=args.overwrite,
            output_pb=args.output_pb,
        ),
    )
    print(result.summary())
    if result.path is None:
        print("  nothing written: give --name NAME (servable model) or --output-pb FILE")
    return 0


def main(argv: list[str] | None = None, prog: str = "graphserve freeze") -> int:
    args = build_parser(prog).parse_args(argv)
    setup_logging(verbose=args.verbose, prog="freeze")
    import_tensorflow_quietly(verbose=args.verbose)
    from . import FreezeError

    try:
        return run(args)
    except FreezeError as exc:
        print(f"freeze: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
