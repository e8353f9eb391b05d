"""``copycatch serve``: serve a model behind a protected prediction API (FastAPI + uvicorn, the ``serve`` extra)."""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import textwrap
from typing import Any

from .. import options

VERB = "serve"
HELP = "serve a model over HTTP with server-side protection, API keys, rate limits, budgets and a query ledger"

EPILOG = textwrap.dedent("""\
    endpoints:
      POST /v1/predict   {"inputs": [N×C×H×W lists in [0, 1]]} or {"images": ["<base64 PNG>", ...]}
                         → {"probabilities": [[...], ...]} (probs, top-k, rounded) or {"labels": [...]} (label)
      GET  /v1/info      input shape, classes, output mode, limits (never a secret)
      GET  /v1/usage     inputs answered for your key, budget left
      GET  /healthz      liveness;  GET /docs: interactive API docs (OpenAPI at /openapi.json)

    examples:
      copycatch serve victim.safetensors --protect victim.cckey --output top-k --top-k 3
      copycatch serve victim.safetensors --protect victim.cckeys          # a key set from `copycatch protect`
      copycatch serve victim.safetensors --new-key alice --api-keys keys.txt     # prints alice's secret once
      copycatch serve victim.safetensors --api-keys keys.txt --rate 100/s --budget 20000/day --host 0.0.0.0
      copycatch serve victim.safetensors --api-keys keys.txt --budget 20000 --state redis://127.0.0.1:6379/0
      copycatch steal --oracle http://127.0.0.1:8000 --arch mlp -o surrogate.safetensors
      copycatch ledger copycatch-ledger.jsonl                                   # who asked what

    Rates and budgets count inputs (a batch of 32 costs 32). A budget without a period (20000) is for the
    server's life and carries over restarts through the ledger; with one (20000/day) it renews each window.
    --state redis://... keeps rates and budgets in Redis, shared by every replica given the same URL (each keeps its
    own ledger; `copycatch ledger A B` merges them); while Redis is unreachable queries are refused with 503.
    API key file: one 'KEY_ID sha256:<hex of SHA-256(secret)>' per line; secrets are never stored or logged.""")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        epilog=EPILOG,
        description="Serve MODEL over HTTP. --protect applies the API-time protection of a key or key set "
        "(e.g. DynaMarks) on the server, so the secret never leaves it; every "
        "request is validated, authenticated, rate-limited and recorded.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="model file (.safetensors), .onnx file or module:function")
    _answers_options(p)
    _access_options(p)
    _ledger_options(p)
    _limits_and_batching_options(p)
    _server_options(p)
    _metadata_options(p)
    return p


def _answers_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("answers")
    g.add_argument(
        "--protect",
        metavar="KEY",
        default=None,
        help="key file or key set (.cckeys) whose API-time schemes protect the answers (scheme.protect; "
        "training-time parts leave them as they are)",
    )
    g.add_argument(
        "--output",
        choices=["probs", "top-k", "label", "rounded"],
        default="probs",
        help="what clients get: all probabilities, the top k, the label only, or rounded probabilities",
    )
    g.add_argument("--top-k", type=int, default=3, help="k for --output top-k")
    g.add_argument("--decimals", type=int, default=2, help="decimals for --output rounded")


def _access_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("access")
    g.add_argument("--api-keys", metavar="FILE", default=None, help="require X-API-Key; FILE maps key ids to hashes")
    g.add_argument(
        "--new-key",
        metavar="ID",
        default=None,
        help="add a fresh key ID to --api-keys FILE, print its secret once, and exit",
    )
    g.add_argument("--rate", default=None, metavar="N/PERIOD", help="inputs per key per period, e.g. 100/s or 6000/min")
    g.add_argument("--burst", type=int, default=None, help="token bucket size in inputs (default: the rate's N)")
    g.add_argument(
        "--budget",
        default=None,
        metavar="N[/PERIOD]",
        help="inputs per key: 20000 (server lifetime) or 20000/day (renews)",
    )
    g.add_argument(
        "--state",
        default=None,
        metavar="URL",
        help="keep rate and budget counts in Redis (redis://HOST:PORT/DB), shared by every replica given the same "
        "URL, instead of in this process (the default); needs the redis extra",
    )


def _ledger_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ledger")
    lg = g.add_mutually_exclusive_group()
    lg.add_argument(
        "--ledger",
        default="copycatch-ledger.jsonl",
        metavar="FILE",
        help="append-only query ledger (JSON lines, rotated by size)",
    )
    lg.add_argument("--no-ledger", action="store_true", help="keep no ledger (budgets then reset on restart)")
    g.add_argument("--ledger-max-mb", type=float, default=64.0, help="rotate the ledger at this size")
    g.add_argument("--ledger-keep", type=int, default=None, help="rotated ledger files to keep (default: all)")
    g.add_argument(
        "--fsync",
        choices=["always", "interval", "never"],
        default="interval",
        help="when ledger lines are forced to disk (interval: every second)",
    )


def _limits_and_batching_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("limits and batching")
    g.add_argument("--max-batch", type=int, default=256, help="inputs per request")
    g.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body")
    g.add_argument(
        "--max-image-pixels",
        type=int,
        default=2**24,
        help="largest image a request may hold, in pixels, checked on its header before decoding (413)",
    )
    g.add_argument("--max-clip-seconds", type=float, default=10.0, help="longest audio clip a request may hold (413)")
    g.add_argument("--max-text-chars", type=int, default=100_000, help="longest text a request may hold (413)")
    g.add_argument(
        "--batch-wait-ms",
        type=float,
        default=2.0,
        help="how long a lone request waits for others to share its forward pass (0: never)",
    )
    g.add_argument("--forward-batch", type=int, default=512, help="inputs per forward pass across requests")


def _server_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    g.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port, printed at start)")
    g.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish after Ctrl-C/SIGTERM",
    )
    g.add_argument(
        "--limit-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="answer 503 to connections beyond N open ones (bounds memory under a flood)",
    )
    g.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info")
    g.add_argument("--no-access-log", action="store_true", help="no per-request access log lines")
    g.add_argument("--device", default="cpu", help="device of the model")


def _metadata_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models without metadata (.onnx, module:function)")
    g.add_argument("--num-classes", type=int, default=None)
    g.add_argument("--input-shape", default=None, metavar="C,H,W")
    g.add_argument("--class-names", default=None, metavar="A,B,...")


def _shape(text: str | None) -> tuple[int, ...] | None:
    from ...core.errors import InvalidArgument

    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.replace("×", ",").replace("x", ",").split(","))
    except ValueError:
        raise InvalidArgument(f"--input-shape {text!r} must be C,H,W (e.g. 1,28,28)") from None
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidArgument(f"--input-shape {text!r} must be three positive numbers C,H,W")
    return shape


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from ... import api
    from ...core.errors import InvalidArgument
    from ...serve.config import ServeConfig

    if args.new_key is not None:
        if not args.api_keys:
            raise InvalidArgument("--new-key needs --api-keys FILE to add the key to")
        secret = api.new_api_key(args.api_keys, args.new_key)
        print(f"added API key {args.new_key!r} to {args.api_keys}; its secret (shown only now):", file=sys.stderr)
        print(secret, flush=True)
        return 0
    if not args.model:
        raise InvalidArgument("give the MODEL to serve (a .safetensors file, .onnx file or module:function)")
    if args.limit_concurrency is not None and args.limit_concurrency < 1:
        raise InvalidArgument(f"--limit-concurrency must be >= 1, got {args.limit_concurrency}")
    config = ServeConfig.from_dict(
        {
            "output": args.output,
            "top_k": args.top_k,
            "decimals": args.decimals,
            "max_batch": args.max_batch,
            "max_body_bytes": int(args.max_body_mb * 2**20),
            "max_image_pixels": args.max_image_pixels,
            "max_clip_seconds": args.max_clip_seconds,
            "max_text_chars": args.max_text_chars,
            "batch_wait_ms": args.batch_wait_ms,
            "forward_batch": args.forward_batch,
            "rate": args.rate,
            "burst": args.burst,
            "budget": args.budget,
            "state": args.state,
            "ledger": None if args.no_ledger else args.ledger,
            "ledger_max_bytes": int(args.ledger_max_mb * 2**20),
            "ledger_keep": args.ledger_keep,
            "fsync": args.fsync,
        }
    )
    server = api.open_server(
        args.model,
        config,
        protect=args.protect,
        api_keys=args.api_keys,
        class_names=args.class_names.split(",") if args.class_names else None,
        host=args.host,
        port=args.port,
        num_classes=args.num_classes,
        input_shape=_shape(args.input_shape),
        device=args.device,
    )
    _announce(args, server, config)
    signum = server.run(
        log_level=args.log_level,
        access_log=not args.no_access_log,
        shutdown_timeout=args.shutdown_timeout,
        limit_concurrency=args.limit_concurrency,
    )
    why = f" on {signal.Signals(signum).name}" if signum else ""
    print(f"copycatch serve: stopped{why} after answering the requests in flight", flush=True)
    return 0


def _announce(args: argparse.Namespace, server: Any, config: Any) -> None:
    service, keyring = server.service, server.service.keyring
    say = options.say
    say(
        f"copycatch serve: {args.model}: inputs {'×'.join(map(str, service.input_shape))}, "
        f"{service.num_classes} classes, output {config.output}"
    )
    for line in _protection(service.keys):
        say(f"  protection: {line}")
    access = f"{len(keyring)} API keys from {args.api_keys}" if keyring else "open (no API keys)"
    budget = config.parsed_budget().describe() if config.budget else "none"
    say(f"  access: {access}; rate {config.rate or 'unlimited'}; budget {budget}")
    if config.state:
        from ...serve.redis_state import redacted

        say(f"  limits shared through {redacted(config.state)}")
    say(f"  ledger: {config.ledger or 'none'}")
    if keyring is None and not _is_loopback(args.host):
        print(
            f"copycatch serve: warning: listening on {args.host} without --api-keys: anyone who reaches the port "
            "can query the model",
            file=sys.stderr,
            flush=True,
        )
    say(f"serving on {server.url} (docs {server.url}/docs); Ctrl-C stops after in-flight requests finish")


def _protection(keys: list[Any]) -> list[str]:
    """One line per key: what it does to the answers."""
    if not keys:
        return ["none"]
    from ...schemes import scheme_for_key

    lines = []
    for key in keys:
        scheme = scheme_for_key(key)
        if scheme.acts_at == "api":
            lines.append(f"{key.scheme} applied to every answer on the server (key {key.digest[:12]}…)")
        elif scheme.kind == "fingerprint":
            lines.append(f"{key.scheme} is a fingerprint: answers are the model's own (nothing was changed)")
        else:
            lines.append(
                f"{key.scheme} acts at training time: answers are the model's own (the mark is in the weights)"
            )
    return lines
