"""What the verbs share: option groups, turning parsed options into API arguments, and safe output paths."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import InvalidArgument
from ..core.params import parse_assignments

API_KEY_ENV = "COPYCATCH_API_KEY"
# data.base.MODALITIES, repeated here so that `--help` imports no torch (tests/test_data_text.py checks they match)
MODALITIES = ("image", "text", "audio")


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def say(*args: Any) -> None:
    print(*args, flush=True)


def registry_table(rows: Sequence[tuple[str, str]], title: str) -> str:
    width = max((len(n) for n, _ in rows), default=0)
    lines = [f"{title}:"] + [f"  {name:<{width}}  {summary}" for name, summary in rows]
    return "\n".join(lines)


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default="fashion-mnist",
        help="data set name (see `copycatch data list`) or a file: .npz arrays, a .csv of text,label or of "
        "path,label (images), a .jsonl of texts",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        help="folder where a named data set's files are found (Fashion-MNIST's IDX files, an image folder, a "
        "corpus; else $COPYCATCH_DATA_DIR, else the data set's usual place, e.g. /usr/share/datasets/fashion-mnist)",
    )
    g.add_argument("--split-seed", type=int, default=0, help="seed of the owner/thief split")
    g.add_argument(
        "--split",
        default=None,
        metavar="K=V,...",
        help="split fractions, e.g. owner_train=0.5,owner_holdout=0.05,attacker_pool=0.45",
    )
    g.add_argument("--max-train", type=int, default=None, help="use at most this many training examples (quick runs)")


def add_train_options(p: argparse.ArgumentParser, *, epochs: int = 10) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--schedule", choices=["constant", "cosine", "step"], default="constant")
    g.add_argument(
        "--patience",
        type=int,
        default=0,
        help="early stopping on owner_holdout accuracy (never the test split) after this many flat epochs (0: off)",
    )
    g.add_argument("--seed", type=int, default=0, help="training seed")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_resume_option(p: argparse.ArgumentParser, note: str) -> None:
    """``--resume``: continue from the checkpoint an interrupted run left beside its output (core.checkpoint)."""
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from the checkpoint OUTPUT.ckpt it left (saved after every epoch, removed "
        f"on success), with the same arguments, to the same result. {note}",
    )


def say_resumed(info: dict[str, Any]) -> None:
    """After a resumed run: what its checkpoint spared."""
    resumed = info.get("resumed")
    if resumed:
        say(
            f"resumed from {resumed['checkpoint']}: {resumed['epochs_restored']} epoch(s) restored, "
            f"{resumed['answers_replayed']} answer(s) replayed instead of bought"
        )


def add_params_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help=f"{what} parameter (repeatable)")


def train_config(args: argparse.Namespace) -> Any:
    from ..models.train import TrainConfig

    names = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "patience", "seed", "device")
    return TrainConfig.from_dict({name: getattr(args, name) for name in names})


def splits(args: argparse.Namespace) -> Any:
    from ..data.base import SplitFractions, load_splits

    fractions = SplitFractions.from_dict(parse_assignments([args.split])) if args.split else None
    return load_splits(
        args.data, seed=args.split_seed, data_dir=args.data_dir, fractions=fractions, max_train=args.max_train
    )


def progress(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "quiet", False) else None


def params(items: Sequence[str] | None) -> dict[str, str]:
    return parse_assignments(items)


def writable(path: str | None, what: str) -> Path | None:
    """Fail before any work if an output cannot be written (never lose a finished training run)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise InvalidArgument(f"{what} {p} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument(f"cannot create the folder for {what} {p}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise InvalidArgument(f"cannot write {what} {p}: folder {parent} is not writable")
    return p


def add_suspect_arguments(parser: argparse.ArgumentParser) -> None:
    """Options describing how to talk to a suspect (HTTP shape, ONNX graph, callable layout)."""
    from ..oracles.protocols import list_protocols  # numpy, no torch: --help stays light

    g = parser.add_argument_group("suspect access (HTTP APIs, ONNX files, Python callables)")
    g.add_argument(
        "--num-classes", type=int, default=None, help="classes the suspect answers, when the key does not say"
    )
    g.add_argument(
        "--input-format",
        choices=["auto", "nchw", "nhwc", "flat"],
        default="auto",
        help="layout of the inputs a callable, ONNX file or HTTP API (--encoding lists) receives; auto: "
        "flat rows for scikit-learn estimators, else N×C×H×W",
    )
    g.add_argument(
        "--api-key",
        default=None,
        help=f"API key for an HTTP suspect (prefer the environment variable {API_KEY_ENV})",
    )
    g.add_argument("--api-key-header", default="X-API-Key", help="header that carries the API key")
    g.add_argument("--header", action="append", metavar="NAME:VALUE", help="extra HTTP header (repeatable)")
    g.add_argument(
        "--protocol",
        choices=list_protocols(),
        default="copycatch",
        help="request and answer format of an HTTP suspect: copycatch's own API (its fields configurable below), or "
        "a serving stack's published one: tfserving (REST predict, NHWC images), kserve-v1, kserve-v2 (Open "
        "Inference Protocol: KServe, Triton, MLServer), torchserve, mlflow (pyfunc /invocations), hf (Hugging Face "
        "image classification); a base URL gets the stack's route, a URL with a path is used as given",
    )
    g.add_argument(
        "--model-name",
        default=None,
        help="the model's name in the stack's route (tfserving, kserve-v1, kserve-v2, torchserve), when the URL is "
        "the server's base URL",
    )
    g.add_argument(
        "--predict-path",
        default=None,
        help="path appended to the URL for predictions (default: /v1/predict under a bare base URL; a URL with a path "
        "is the prediction endpoint itself; '' posts to the URL as given)",
    )
    g.add_argument(
        "--info-path",
        default=None,
        help="self-description endpoint: a path or a full URL (default: /v1/info beside copycatch's own API; '' for "
        "none)",
    )
    g.add_argument(
        "--encoding",
        choices=["lists", "png"],
        default="lists",
        help="send inputs as nested lists of floats, or as base64 PNG images (quantised to 1/255)",
    )
    g.add_argument(
        "--input-field",
        default=None,
        help="request field for the inputs (default: inputs, or images with --encoding png)",
    )
    g.add_argument(
        "--output-field",
        default=None,
        help="response field holding the answers, dotted for nested objects (default: probabilities, else labels)",
    )
    g.add_argument(
        "--output-kind",
        choices=["auto", "probs", "labels", "logits"],
        default="auto",
        help="what the answers are (auto: 2-D probabilities or 1-D labels)",
    )
    g.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each HTTP answer")
    g.add_argument("--retries", type=int, default=5, help="retries after a timeout, connection error, 5xx or 429")
    g.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds (doubles each retry)")
    g.add_argument(
        "--max-retry-after",
        type=float,
        default=300.0,
        help="longest Retry-After (seconds) worth waiting for before giving up",
    )
    g.add_argument("--request-batch", type=int, default=256, help="inputs per HTTP request or ONNX run")


def suspect_options(args: argparse.Namespace) -> dict[str, Any]:
    """``open_suspect`` keyword options from :func:`add_suspect_arguments`' parsed values."""
    headers = {}
    for item in getattr(args, "header", None) or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise InvalidArgument(f"--header needs NAME:VALUE, got {item!r}")
        headers[name.strip()] = value.strip()
    input_format = getattr(args, "input_format", "auto")
    return {
        "api_key": getattr(args, "api_key", None) or os.environ.get(API_KEY_ENV) or None,
        "api_key_header": args.api_key_header,
        "protocol": args.protocol,
        "model_name": args.model_name,
        "headers": headers or None,
        "predict_path": args.predict_path,
        "info_path": args.info_path,
        "encoding": args.encoding,
        "input_layout": None if input_format == "auto" else input_format,
        "input_format": input_format,
        "input_field": args.input_field,
        "output_field": args.output_field,
        "output_kind": args.output_kind,
        "output": args.output_kind,  # the ONNX oracle's name for it
        "timeout": args.timeout,
        "retries": args.retries,
        "backoff": args.backoff,
        "max_retry_after": args.max_retry_after,
        "batch_size": args.request_batch,
    }


def removal_spec(text: str) -> str:
    """argparse ``type=``: check a removal SPEC (name and parameters) before any work starts."""
    from ..attacks.removal.base import resolve_removal
    from ..core.errors import CopycatchError

    try:
        resolve_removal(text)
    except CopycatchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def say_steps(steps: list[dict[str, Any]]) -> None:
    """Print a laundering report's steps: the attack, its summary, test accuracy before and after."""

    def fmt(acc: float | None) -> str:
        return "n/a" if acc is None or acc != acc else f"{acc:.4f}"

    for i, step in enumerate(steps, 1):
        say(f"[{i}/{len(steps)}] {step['spec']}: {step['summary']}")
        before, after = fmt(step["accuracy_before"]), fmt(step["accuracy_after"])
        say(f"      test accuracy {before} -> {after} ({step['seconds']:.1f} s)")
        if "pirate_key" in step:
            say(f"      the thief's own key written to {step['pirate_key']}")


# Exit statuses. Every verb exits 0 on success and EXIT_ERROR on any error; verify exits with its verdict, in the
# spirit of grep and diff (0: the claim holds), so a script can branch on it, and so does evidence check (0: every
# check passed). The values never clash across verbs: 1 is always "the claim does not hold".
EXIT_STOLEN = 0  # verify: the suspect carries the mark (the null hypothesis is rejected at alpha)
EXIT_NOT_STOLEN = 1  # verify: no evidence of theft at alpha, from a test that could have found it
EXIT_ERROR = 2  # every verb: bad arguments, missing or corrupt files, a failing suspect (one line on stderr)
EXIT_COST = 3  # embed (and protect): the watermark costs more accuracy than --max-cost; the files are written
EXIT_INCONCLUSIVE = 4  # verify: no decision possible: alpha out of the key's reach, or the query budget ran out
EXIT_CHECK_FAILED = 1  # evidence check: a check failed (bad signature, broken chain, p-value mismatch), like diff's 1

VERIFY_EXIT_CODES = (
    (EXIT_STOLEN, "stolen: the suspect carries the mark (p-value <= alpha)"),
    (EXIT_NOT_STOLEN, "not stolen: the test could have found the mark at alpha and did not"),
    (
        EXIT_ERROR,
        "error: bad arguments, unreadable key, failing suspect, or a suspect silent past --deadline (one line on "
        "stderr; the answers so far stay in the transcript, and the line says how to resume)",
    ),
    (
        EXIT_INCONCLUSIVE,
        "inconclusive: alpha is out of the key's reach (smallest attainable p-value > alpha, with this key and "
        "--budget), or --budget ran out before a decision (the transcript is kept: --resume with a larger budget)",
    ),
)


KEY_SEED_ENV = "COPYCATCH_KEY_SEED"


def add_key_seed_option(p: argparse.ArgumentParser) -> None:
    """``--key-seed``: the secret the key's random choices come from (:mod:`copycatch.core.commitment`)."""
    p.add_argument(
        "--key-seed",
        default=None,
        metavar="HEX",
        help="secret the key's random choices come from: 32-128 hex digits, kept in the key and digested in its "
        f"commitment; 'random' (the default, or ${KEY_SEED_ENV}) draws 256 bits; 'training' derives them from "
        "--seed, which anyone can repeat",
    )


def key_seed(args: argparse.Namespace) -> str | None:
    """The key seed ``--key-seed`` (or the environment) asks for: a fresh secret, a given one, or None (training)."""
    from ..core.commitment import check_key_seed, new_key_seed

    text = (args.key_seed or os.environ.get(KEY_SEED_ENV) or "random").strip()
    if text == "random":
        return new_key_seed()
    return None if text == "training" else check_key_seed(text)


def say_commitment(key_path: Path) -> None:
    """The line after writing a key: where its commitment is, and its id to publish or timestamp."""
    from ..core.commitment import Commitment, commitment_path

    path = commitment_path(key_path)
    say(f"commitment written to {path} (id {Commitment.load(path).id[:16]}…): publish or timestamp it now")


def add_cost_options(p: argparse.ArgumentParser) -> None:
    """The accuracy-cost guard's options (:mod:`copycatch.schemes.embedding`)."""
    from ..schemes.embedding import DEFAULT_MAX_COST

    g = p.add_argument_group("accuracy cost (measured on the test split against a clean reference model)")
    g.add_argument(
        "--max-cost",
        type=cost_limit,
        default=DEFAULT_MAX_COST,
        metavar="POINTS",
        help="largest cost in points of test accuracy; past it the verb warns, names the scheme's strength "
        f"parameter and exits with status {EXIT_COST} (the files are still written); 'none': no limit",
    )
    g.add_argument("--allow-cost", action="store_true", help="accept a cost past --max-cost (still warned about)")
    g.add_argument(
        "--reference",
        metavar="MODEL",
        default=None,
        help="clean model to measure the cost against (default: one trained, or reused when the scheme trains one "
        "first, with the victim's architecture, recipe and seed on the owner's data)",
    )


def cost_limit(text: str) -> float | None:
    """argparse ``type=`` of ``--max-cost``: points of accuracy >= 0, or ``none``."""
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected points of accuracy (e.g. 1.5) or 'none', got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"the cost limit must be >= 0 points, got {text}")
    return value


def say_cost(record: dict[str, Any] | None, *, allow_cost: bool) -> int:
    """Print the accuracy cost; past the limit, a loud warning on stderr that says which knob to turn. Returns the
    exit status: :data:`EXIT_COST` past the limit unless ``allow_cost``, else 0."""
    import sys

    from ..schemes.embedding import describe_cost, strength_advice

    say(f"accuracy cost: {describe_cost(record)}")
    if not record or not record.get("exceeded"):
        return 0
    code = 0 if allow_cost else EXIT_COST
    lines = [
        f"the watermark costs {record['cost_points']:.2f} points of test accuracy, over --max-cost "
        f"{record['max_cost_points']:g} (reference {record['reference_accuracy']:.4f}, victim "
        f"{record['victim_accuracy']:.4f} on the test split)",
        f"{strength_advice(record, cli=True)}; or accept the cost with --allow-cost",
        "the files were written; accepted with --allow-cost"
        if allow_cost
        else f"the files were written anyway; exit status {code}",
    ]
    for line in lines:
        print(f"copycatch: WARNING: {line}", file=sys.stderr, flush=True)
    return code
