"""``copycatch export``: write a model file as ONNX (the ``onnx`` extra) and check the file answers like the model."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from .. import options

VERB = "export"
HELP = "export a model file to ONNX and check that onnxruntime answers like PyTorch"

# what the file answers, as the command line says it -> the word of oracles.onnx.export_onnx
OUTPUTS = {"probabilities": "probs", "logits": "logits"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        description="Export MODEL (a copycatch .safetensors model file) to ONNX, with its input shape, classes and "
        "weights' digest in the file's metadata. The file is then run by onnxruntime on a few seeded random inputs "
        "of the model's shape and compared with PyTorch: the export fails (exit status 2, the file kept for "
        "inspection) if they differ by more than --atol.",
        epilog=textwrap.dedent("""\
            examples:
              copycatch export victim.safetensors --out victim.onnx
              copycatch export victim.safetensors --out victim.onnx --output logits --static-batch --opset 13
              copycatch export victim.safetensors --out victim.onnx --input-name pixels --json
              copycatch serve victim.onnx                        # serve the ONNX file
              copycatch verify --key victim.cckey --suspect victim.onnx"""),
    )
    p.add_argument("model", metavar="MODEL", help="copycatch model file (.safetensors)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="ONNX file to write")
    p.add_argument(
        "--output",
        choices=list(OUTPUTS),
        default="probabilities",
        help="what the graph answers: softmax probabilities, or the logits before it",
    )
    p.add_argument("--input-name", default="input", help="name of the graph's input")
    p.add_argument(
        "--output-name", default=None, help="name of the graph's output (None: probabilities or logits, as --output)"
    )
    p.add_argument(
        "--static-batch",
        action="store_true",
        help="a fixed batch of one input instead of a dynamic batch dimension (for runtimes that need static shapes)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version, 9 to 20")
    p.add_argument(
        "--atol",
        type=float,
        default=1e-5,
        help="largest absolute difference between onnxruntime's and PyTorch's answers the check accepts",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from ...models.io import load_model
    from ...oracles.onnx import EXPORT_OUTPUTS, ExportMismatch, check_onnx_export, export_onnx
    from ...oracles.suspects import file_sha256

    out = options.writable(args.out, "ONNX file")
    model = load_model(args.model)
    output = OUTPUTS[args.output]
    path = export_onnx(
        model,
        out,  # type: ignore[arg-type]
        opset=args.opset,
        output=output,
        input_name=args.input_name,
        output_name=args.output_name,
        dynamic_batch=not args.static_batch,
    )
    record: dict[str, Any] = {
        "model": args.model,
        "onnx": str(path),
        "sha256": file_sha256(path),
        "arch": model.arch,
        "num_classes": model.num_classes,
        "input_shape": list(model.input_shape),
        "opset": args.opset,
        "output": args.output,
        "input_name": args.input_name,
        "output_name": args.output_name or EXPORT_OUTPUTS[output],
        "dynamic_batch": not args.static_batch,
    }
    try:
        record["check"] = check_onnx_export(model, path, atol=args.atol)
    except ExportMismatch as exc:
        if args.json:
            options.say(json.dumps({**record, "check": exc.result, "ok": False}, indent=2, sort_keys=True))
        raise
    if args.json:
        options.say(json.dumps({**record, "ok": True}, indent=2, sort_keys=True))
        return 0
    batch = "dynamic batch" if record["dynamic_batch"] else "static batch of 1"
    options.say(
        f"exported {model.arch} ({model.num_classes} classes, inputs {'×'.join(map(str, model.input_shape))}) to "
        f"{path}: opset {args.opset}, input {args.input_name!r} ({batch}), output {record['output_name']!r} "
        f"({args.output})"
    )
    check = record["check"]
    options.say(
        f"round trip: onnxruntime matches PyTorch on {check['inputs']} random inputs, max |difference| "
        f"{check['max_abs_diff']:.3g} <= {args.atol:g}"
    )
    return 0
