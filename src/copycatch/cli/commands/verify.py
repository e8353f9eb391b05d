"""``copycatch verify``: test a suspect against one or more keys — exact p-value, verdict, evidence record."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import traceback
from typing import Any

from ...core.errors import CopycatchError
from .. import options

VERB = "verify"
HELP = "test a suspect against one or more keys: exact p-value, verdict, evidence record"

DESCRIPTION = (
    "Query the suspect with the keys' inputs only and test each scheme's null hypothesis (the suspect is "
    "independent of the key). By default the key is asked a batch at a time and verification stops as soon as "
    "the decision is reached (a sequential test valid at any stopping time); --fixed asks the whole key. Every "
    "answer goes into a hash-chained transcript; --report DIR keeps it with evidence.json and report.html. "
    "A key set (.cckeys, from `copycatch protect`) verifies each of its parts; several keys are combined: "
    "Fisher's method when they are the parts of one key set that declares them independent, Holm's adjustment "
    "otherwise (--combine chooses), and the evidence says which applies and why. The exit status is the verdict "
    "(see below), so a script can branch on it."
)


def exit_codes() -> str:
    """The exit-status table of ``copycatch verify --help``."""
    lines = [f"  {code}  {text}" for code, text in sorted(options.VERIFY_EXIT_CODES)]
    wrapped = [textwrap.fill(line, 116, subsequent_indent=" " * 5) for line in lines]
    return "exit status:\n" + "\n".join(wrapped) + "\nin a script:\n" + textwrap.indent(SCRIPT_EXAMPLE, "  ")


SCRIPT_EXAMPLE = """\
copycatch verify --key victim.cckey --suspect suspect.onnx --report case/ -q
case $? in
  0) echo "stolen: evidence in case/" ;;
  1) echo "not stolen" ;;
  4) echo "inconclusive: a larger key or budget is needed" ;;
  *) echo "verification failed" >&2; exit 2 ;;
esac"""


def epilog() -> str:
    from ...schemes import SCHEMES

    classes = [SCHEMES.get(n).factory for n in SCHEMES.list()]
    probs_only = [c.name for c in classes if c.needs == "probs"]
    fixed_only = [c.name for c in classes if not c.sequential]
    text = textwrap.dedent(f"""\
        label-only suspects (answers are labels, not probabilities) work with every scheme except:
          {", ".join(probs_only) or "(none)"}
        sequential stopping is available for every scheme except (these use the fixed test):
          {", ".join(fixed_only) or "(none)"}

        examples:
          copycatch verify --key victim.cckey --suspect surrogate.safetensors --report evidence/
          copycatch verify --key victim.cckey --suspect model.onnx
          copycatch verify --key victim.cckey --suspect mymodule:clf.predict_proba
          copycatch verify --key victim.cckey --suspect https://api.example.com --report evidence/ --resume
          copycatch verify --key victim.cckey --suspect http://host:8501 --protocol tfserving --model-name clf
          copycatch verify --key victim.cckeys --suspect surrogate.safetensors --json   # every part, Fisher-combined
          copycatch verify --key margin.cckey --key dynamarks.cckey --suspect http://localhost:8000 --combine fisher

        """)
    return text + exit_codes()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB, help=HELP, formatter_class=options.Formatter, epilog=epilog(), description=DESCRIPTION
    )
    p.add_argument(
        "--key",
        required=True,
        action="append",
        help="key file written by `copycatch embed`, or key set written by `copycatch protect` (repeat to "
        "combine several)",
    )
    p.add_argument(
        "--suspect",
        required=True,
        help="suspect: model file, http(s):// prediction API, .onnx file, module:function or file.py:function",
    )
    p.add_argument("--alpha", type=float, default=1e-3, help="significance level of the decision")
    p.add_argument(
        "--post", action="append", metavar="SPEC", help="post-processor on the suspect's answers (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print the evidence record as JSON")
    _queries_options(p)
    _evidence_record_options(p)
    _commitment_options(p)
    options.add_suspect_arguments(p)
    options.add_common(p)
    p.set_defaults(verify_parser=p)  # the parser lets the evidence record the command line
    return p


def _queries_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("queries")
    g.add_argument(
        "--fixed",
        action="store_true",
        help="ask the whole key (the fixed test) instead of stopping as soon as the decision is reached",
    )
    g.add_argument("--batch", type=int, default=10, help="inputs asked per round of sequential verification")
    g.add_argument(
        "--early-share",
        type=float,
        default=0.2,
        help="share of alpha the sequential test spends on its always-valid early stop",
    )
    g.add_argument(
        "--budget",
        type=int,
        default=None,
        help="most answers to use in total, over all sessions of this transcript (replayed ones count)",
    )
    g.add_argument(
        "--deadline",
        type=deadline,
        default=DEFAULT_DEADLINE,
        metavar="SECONDS",
        help="stop when an HTTP suspect has kept us waiting this long without an answer, over every attempt, retry "
        "wait and endpoint (its answering time between requests does not count): the answers so far stay in the "
        f"transcript, the message names the URL, the attempts and how to resume, exit status {options.EXIT_ERROR}; "
        "0: no deadline (--timeout and --retries alone bound each request). Each retry is printed with its reason",
    )


def _evidence_record_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evidence record")
    g.add_argument(
        "--report",
        metavar="DIR",
        default=None,
        help="write DIR/evidence.json and DIR/report.html, and keep the transcript in DIR/transcript.jsonl",
    )
    g.add_argument(
        "--transcript",
        metavar="FILE",
        default=None,
        help="query transcript (JSON lines, hash-chained); default DIR/transcript.jsonl with --report",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from the transcript: recorded answers are replayed, only the rest is asked",
    )
    g.add_argument(
        "--offline",
        action="store_true",
        help="recompute the evidence from the transcript alone, asking the suspect nothing",
    )
    g.add_argument(
        "--combine",
        choices=["holm", "fisher"],
        default=None,
        help="how several keys' p-values decide: Holm (any dependence) or Fisher (independent keys); default "
        "Fisher for one key set declaring its parts independent, else Holm",
    )
    g.add_argument(
        "--no-calibration",
        action="store_true",
        help="ignore <key>.calibration.json files written by `copycatch calibrate`",
    )
    g.add_argument(
        "--sign-with",
        metavar="OWNER.key",
        default=None,
        help="sign evidence.json and the transcript with the owner's private key (`copycatch key keygen`): "
        "FILE.sig beside each, checked with `copycatch evidence check FILE --public-key OWNER.pub`",
    )


def _commitment_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "key commitments",
        "Before any query each key is checked against its commitment (`copycatch key commit`); a key that does\n"
        "not match it is refused (exit status 2). The evidence states when the key was committed.",
    )
    g.add_argument(
        "--commitment",
        action="append",
        metavar="FILE",
        help="commitment record of the key (repeat once per --key, in order); default: <key>.commit.json beside it",
    )
    g.add_argument(
        "--suspect-since",
        metavar="TIME",
        default=None,
        help="when the suspect was first seen (ISO 8601, UTC unless a zone is given): a key committed later, or "
        "without a commitment, is refused",
    )
    g.add_argument("--require-commitment", action="store_true", help="refuse keys that have no commitment")


def run(args: argparse.Namespace) -> int:
    try:
        return _verify(args)
    except (CopycatchError, OSError):  # main prints these as one line, with exit status EXIT_ERROR
        raise
    except Exception:  # a bug: never Python's status 1 of an uncaught exception, which would read "not stolen"
        traceback.print_exc()
        print("copycatch: error: internal error (the traceback above); no verdict", file=sys.stderr)
        return options.EXIT_ERROR


def _verify(args: argparse.Namespace) -> int:
    from ... import api
    from ...verification.report import evidence_document
    from ...verification.session import VerificationInterrupted

    command = command_line(args)
    try:
        run = api.verify(
            args.suspect,
            args.key,
            alpha=args.alpha,
            sequential=not args.fixed,
            batch=args.batch,
            early_share=args.early_share,
            combine=args.combine,
            transcript=args.transcript,
            resume=args.resume,
            offline=args.offline,
            budget=args.budget,
            postprocess=args.post or (),
            num_classes=args.num_classes,
            calibrations=not args.no_calibration,
            commitments=args.commitment,
            suspect_since=args.suspect_since,
            require_commitment=args.require_commitment,
            report=args.report,
            command=command,
            sign_with=args.sign_with,
            progress=options.progress(args),
            deadline=args.deadline or None,
            on_retry=_say_retry,
            **options.suspect_options(args),
        )
    except VerificationInterrupted as exc:
        if not (exc.budget_ran_out and args.budget is not None):
            raise
        message = f"no decision within --budget {args.budget} (raise it to continue): {exc}"
        print(f"copycatch: inconclusive: {message}", file=sys.stderr, flush=True)
        return options.EXIT_INCONCLUSIVE
    _warn_unreachable(run)
    if args.json:
        options.say(json.dumps(evidence_document(run, command=command), indent=2, sort_keys=True))
    else:
        options.say(run.summary())
        if run.report_paths:
            paths = run.report_paths
            options.say(f"evidence written to {paths['json']} and {paths['html']}; transcript {run.transcript.path}")
        if run.signatures:
            options.say(f"signed: {', '.join(str(p) for p in run.signatures.values())}")
    return exit_status(run)


DEFAULT_DEADLINE = 180.0


def deadline(text: str) -> float:
    """argparse ``type=`` of ``--deadline``: seconds >= 0 (0: none)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (e.g. 180), or 0 for no deadline; got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"the deadline must be >= 0 seconds (0: none), got {text}")
    return value


def _say_retry(line: str) -> None:
    """A suspect's failed attempt and the wait before the next, on stderr (even with -q: it explains a silence)."""
    print(f"copycatch: {line}", file=sys.stderr, flush=True)


def exit_status(run: Any) -> int:
    """The verdict as an exit status: stolen, not stolen, or inconclusive when "stolen" was out of reach."""
    if run.decision:
        return options.EXIT_STOLEN
    return options.EXIT_NOT_STOLEN if run.conclusive else options.EXIT_INCONCLUSIVE


def _warn_unreachable(run: Any) -> None:
    """One line on stderr per key whose smallest attainable p-value is above α (it could never have rejected), and
    one for several keys whose combination could never have rejected."""
    for e in run.evidences:
        smallest = e.metrics.get("smallest_attainable_p")
        if smallest is not None and smallest > e.alpha:
            print(
                f"copycatch: warning: key {e.key_digest[:12]}… ({e.scheme}) can never reach alpha={e.alpha:g}: its "
                f"smallest attainable p-value is {smallest:.3g}, so 'not stolen' holds by construction",
                file=sys.stderr,
                flush=True,
            )
    if run.combined is not None and not run.conclusive:
        print(
            f"copycatch: warning: the {run.combined.method} combination of the {len(run.evidences)} keys can never "
            f"reach alpha={run.alpha:g}: its smallest attainable p-value is {run.smallest_attainable_p:.3g}, so "
            f"'not stolen' holds by construction (exit status {options.EXIT_INCONCLUSIVE}: inconclusive)",
            file=sys.stderr,
            flush=True,
        )


def command_line(args: argparse.Namespace) -> list[str]:
    """The verify command line as given, with secrets (API key, header values) masked for the record."""
    out = ["copycatch", "verify"]
    for action in args.verify_parser._actions:
        if not action.option_strings or action.dest in {"help"}:
            continue
        value = getattr(args, action.dest, None)
        if value is None or value is False or value == action.default:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if action.dest == "api_key":
            value = "***"
        elif action.dest == "header":
            value = [f"{v.partition(':')[0]}:***" for v in value]
        if value is True:
            out.append(flag)
        elif isinstance(value, list):
            out += [part for v in value for part in (flag, str(v))]
        else:
            out += [flag, str(value)]
    return out
