"""The ``copycatch`` command line. Every verb mirrors a function of :mod:`copycatch.api`.

User mistakes (bad names, missing files, corrupt keys, exhausted budgets) are
printed as one line ``copycatch: error: …`` with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..core.errors import CopycatchError, InvalidArgument

EXIT_USAGE = 2


# ---------------------------------------------------------------------------------------------------------------------
# shared options
# ---------------------------------------------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _registry_table(rows: Sequence[tuple[str, str]], title: str) -> str:
    width = max((len(n) for n, _ in rows), default=0)
    lines = [f"{title}:"] + [f"  {name:<{width}}  {summary}" for name, summary in rows]
    return "\n".join(lines)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="fashion-mnist", help="data set name (see `copycatch data list`) or a .npz file")
    g.add_argument("--data-dir", default=None, help="folder holding the Fashion-MNIST IDX files "
                   "(else $COPYCATCH_DATA_DIR, else /usr/share/datasets/fashion-mnist)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the owner/thief split")
    g.add_argument("--split", default=None, metavar="K=V,...",
                   help="split fractions, e.g. owner_train=0.5,owner_holdout=0.05,attacker_pool=0.45")
    g.add_argument("--max-train", type=int, default=None, help="use at most this many training examples (quick runs)")


def _add_train_options(p: argparse.ArgumentParser, *, epochs: int = 10) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--schedule", choices=["constant", "cosine", "step"], default="constant")
    g.add_argument("--patience", type=int, default=0,
                   help="early stopping on owner_holdout accuracy (never the test split) after this many flat epochs "
                        "(0: off)")
    g.add_argument("--seed", type=int, default=0, help="training seed")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _train_config(args: argparse.Namespace):
    from ..models.train import TrainConfig

    return TrainConfig.from_dict(dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                                      weight_decay=args.weight_decay, schedule=args.schedule, patience=args.patience,
                                      seed=args.seed, device=args.device))


def _splits(args: argparse.Namespace):
    from ..data.base import SplitFractions, load_splits
    from ..core.params import parse_assignments

    fractions = SplitFractions.from_dict(parse_assignments([args.split])) if args.split else None
    return load_splits(args.data, seed=args.split_seed, data_dir=args.data_dir, fractions=fractions,
                       max_train=args.max_train)


def _progress(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "quiet", False) else None


def _writable(path: str | None, what: str) -> Path | None:
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


def _params(items: Sequence[str] | None) -> dict[str, str]:
    from ..core.params import parse_assignments

    return parse_assignments(items)


def _print(*args: Any) -> None:
    print(*args, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# verbs
# ---------------------------------------------------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> int:
    from ..data.base import DATASETS

    if args.action == "list":
        _print(_registry_table(DATASETS.describe(), "data sets"))
        return 0
    splits = _splits(args)
    info = {"dataset": splits.dataset, "input_shape": list(splits.input_shape), "num_classes": splits.num_classes,
            "class_names": list(splits.class_names), "split_seed": splits.seed, "fractions": splits.fractions.to_dict(),
            "sizes": splits.summary(), "fingerprint": splits.fingerprint}
    _print(json.dumps(info, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .. import api
    from ..models.base import save_model
    from ..models.train import accuracy

    out = _writable(args.output, "model file")
    splits = _splits(args)
    model = api.train(args.arch, splits, on=args.on, config=_train_config(args), progress=_progress(args))
    acc = accuracy(model, splits.test)
    model.provenance["test_accuracy"] = acc
    save_model(model, out)
    _print(f"trained {args.arch} on {args.on} ({len(getattr(splits, args.on))} examples): test accuracy {acc:.4f}")
    _print(f"model written to {out}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .. import api
    from ..models.base import save_model
    from ..models.train import accuracy

    out = _writable(args.output, "model file")
    key_path = _writable(args.key, "key file")
    splits = _splits(args)
    result = api.embed(args.scheme, splits, arch=args.arch, model=args.model, params=_params(args.param),
                       config=_train_config(args), progress=_progress(args))
    acc = accuracy(result.victim, splits.test) if len(splits.test) else float("nan")
    result.victim.provenance["test_accuracy"] = acc
    save_model(result.victim, out)
    result.key.save(key_path)
    _print(f"embedded {args.scheme} into {result.victim.arch}: test accuracy {acc:.4f}")
    _print(f"victim written to {out}")
    _print(f"key written to {key_path} (digest {result.key.digest[:16]}…); keep it secret")
    return 0


def cmd_steal(args: argparse.Namespace) -> int:
    import torch

    from .. import api
    from ..data.base import TensorData, load_dataset
    from ..models.base import save_model
    from ..models.train import accuracy, agreement

    out = _writable(args.output, "surrogate file")
    splits = _splits(args)
    if args.queries == "attacker_pool":
        pool = splits.attacker_pool
    else:  # an out-of-distribution query set: another data set's images, used whole
        other = load_dataset(args.queries, data_dir=args.data_dir)
        # its labels name another task's classes, so they are withheld (-1) from attacks that use true labels
        pool = TensorData(other.x, torch.full((len(other.x),), -1, dtype=torch.long))
    result = api.steal(args.victim, pool, attack=args.attack, arch=args.arch, params=_params(args.param),
                       budget=args.budget, config=_train_config(args), key=args.protect, postprocess=args.post or (),
                       progress=_progress(args))
    acc = accuracy(result.surrogate, splits.test)
    result.surrogate.provenance["test_accuracy"] = acc
    line = f"stole a {args.arch} surrogate with {args.attack}: {result.queries} queries, test accuracy {acc:.4f}"
    if args.victim.endswith(".safetensors"):
        from ..models.base import load_model

        line += f", agreement with victim {agreement(result.surrogate, load_model(args.victim), splits.test.x):.4f}"
    if args.then:  # removal attacks on the surrogate before it is written (see `copycatch remove`)
        from .commands.remove import launder

        _print(line)
        result.surrogate = launder(result.surrogate, args.then, splits, _train_config(args), out,
                                   progress=_progress(args))
        line = f"laundered the surrogate with {len(args.then)} removal attack(s)"
    save_model(result.surrogate, out)
    _print(line)
    _print(f"surrogate written to {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..verification.report import evidence_document, write_report
    from ..verification.sequential import SequentialPlan
    from ..oracles.suspects import suspect_options
    from ..verification.session import verify_suspect

    report = Path(args.report) if args.report else None
    if report is not None and report.exists() and not report.is_dir():
        raise InvalidArgument(f"--report {report} is a file; give a folder")
    if args.offline and report is not None and (report / "evidence.json").exists():
        raise InvalidArgument(f"--offline would overwrite the evidence in {report}; check it with --transcript "
                              f"{report / 'transcript.jsonl'} (and --json, or --report another folder)")
    transcript = args.transcript or (report / "transcript.jsonl" if report is not None else None)
    plan = SequentialPlan.from_dict({"batch_size": args.batch, "early_share": args.early_share})
    command = _verify_command(args)
    run = verify_suspect(args.suspect, args.key, alpha=args.alpha, sequential=not args.fixed, plan=plan,
                         combine=args.combine, transcript=transcript, resume=args.resume, offline=args.offline,
                         budget=args.budget, postprocess=args.post or (), suspect_options=suspect_options(args),
                         num_classes=args.num_classes, chunk=args.request_batch,
                         calibrations=not args.no_calibration, progress=_progress(args),
                         session={"command": command})
    if args.json:
        _print(json.dumps(evidence_document(run, command=command), indent=2, sort_keys=True))
    else:
        _print(run.summary())
    if report is not None:
        paths = write_report(report, run, command=command)
        if not args.json:
            _print(f"evidence written to {paths['json']} and {paths['html']}; transcript {run.transcript.path}")
    return 0


def _verify_command(args: argparse.Namespace) -> list[str]:
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
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value)]
    return out


def cmd_key(args: argparse.Namespace) -> int:
    from ..core.key import Key

    key = Key.load(args.file)
    summary = key.summary(secrets=args.secrets)
    if args.json:
        _print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    _print(f"key file:  {args.file}")
    _print(f"scheme:    {summary['scheme']}")
    _print(f"digest:    {summary['digest']}")
    for k in ("created", "package_version", "dataset", "arch", "num_classes", "victim_sha256"):
        if k in summary["meta"]:
            _print(f"{k + ':':<11}{summary['meta'][k]}")
    _print("params:    " + ", ".join(f"{k}={v}" for k, v in summary["params"].items()))
    _print("secrets:   " + ("(shown below)" if args.secrets else "(hidden; --secrets to print them)"))
    for name, t in summary["tensors"].items():
        _print(f"  {name}: {t['dtype']} {'×'.join(map(str, t['shape'])) or 'scalar'}")
        if args.secrets:
            _print(textwrap.indent(textwrap.fill(json.dumps(t["values"]), 110), "    "))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..bench.demo import DemoConfig, run_demo

    cfg = DemoConfig.from_dict({k: v for k, v in dict(
        data=args.data, data_dir=args.data_dir, out=args.out, seed=args.seed, device=args.device, epochs=args.epochs,
        surrogate_arch=args.surrogate_arch, max_train=args.max_train,
        scheme_params=_params(args.param) or None).items() if v is not None})
    run_demo(cfg, progress=_progress(args))
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from ..attacks.extraction import EXTRACTION_ATTACKS
    from ..models.base import MODELS
    from ..oracles.postprocess import POSTPROCESSORS
    from ..schemes import SCHEMES

    parser = argparse.ArgumentParser(
        prog="copycatch",
        formatter_class=_Formatter,
        description="Watermark a classifier so the mark survives model extraction, steal it the way a thief would, "
                    "and prove theft with an exact p-value.",
        epilog=textwrap.dedent("""\
            typical flow:
              copycatch embed --scheme margin -o victim.safetensors --key victim.cckey
              copycatch steal --victim victim.safetensors --arch mlp -o surrogate.safetensors
              copycatch verify --key victim.cckey --suspect surrogate.safetensors
            or run the whole story: copycatch demo"""),
    )
    parser.add_argument("--version", action="version", version=f"copycatch {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    p = sub.add_parser("data", help="list data sets or show a data set's standard split", formatter_class=_Formatter,
                       description="List the built-in data sets, or load one and show its owner/thief split.")
    p.add_argument("action", choices=["list", "show"])
    _add_data_options(p)
    p.set_defaults(func=cmd_data)

    arch_help = _registry_table(MODELS.describe(), "architectures")
    p = sub.add_parser("train", help="train a clean model (owner's, or an innocent one on the thief's data)",
                       formatter_class=_Formatter, epilog=arch_help,
                       description="Train an architecture with true labels. --on attacker_pool trains an innocent "
                                   "model on the thief's data, the control every verification should clear.")
    p.add_argument("--arch", default="cnn-small", help="architecture (listed below)")
    p.add_argument("--on", default="owner_train", choices=["owner_train", "attacker_pool", "owner_holdout"])
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    _add_data_options(p)
    _add_train_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_train)

    scheme_help = _registry_table(SCHEMES.describe(), "schemes") + "\n\n" + arch_help
    p = sub.add_parser("embed", help="watermark a model and write the victim and its secret key",
                       formatter_class=_Formatter, epilog=scheme_help,
                       description="Embed a watermark with a scheme (listed below). Scheme parameters go in -p NAME=VALUE; "
                                   "each scheme's docstring lists them with defaults.")
    p.add_argument("--scheme", default="margin", help="watermarking scheme (listed below)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--arch", default=None, help="train a fresh model of this architecture (default: the scheme's)")
    src.add_argument("--model", default=None, help="start from this trained model file")
    p.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help="scheme parameter (repeatable)")
    p.add_argument("-o", "--output", required=True, help="victim model file to write")
    p.add_argument("--key", required=True, help="key file to write (keep it secret)")
    _add_data_options(p)
    _add_train_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("steal", help="extract a surrogate from a victim through its prediction API",
                       formatter_class=_Formatter,
                       epilog=_registry_table(EXTRACTION_ATTACKS.describe(), "extraction attacks") + "\n\n"
                       + _registry_table(POSTPROCESSORS.describe(), "output post-processors (--post)") + "\n\n" + arch_help,
                       description="Play the thief: query the victim (only through its outputs) and train a surrogate.")
    p.add_argument("--victim", "--oracle", dest="victim", required=True,
                   help="the victim the thief queries: model file, http(s):// prediction API, .onnx file or module:function")
    p.add_argument("--attack", default="soft-label", help="extraction attack (listed below)")
    p.add_argument("--arch", default="mlp", help="surrogate architecture: the thief's free choice")
    p.add_argument("--budget", type=int, default=None, help="queries the thief may spend (default: one per pool input)")
    p.add_argument("--queries", default="attacker_pool",
                   help="what the thief queries: attacker_pool, or another data set name for out-of-distribution queries")
    p.add_argument("--protect", default=None, metavar="KEY", help="apply this key's API-time protection to the victim")
    p.add_argument("--post", action="append", metavar="SPEC", help="output post-processor, e.g. top-k:k=3 (repeatable)")
    p.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help="attack parameter (repeatable)")
    p.add_argument("-o", "--output", required=True, help="surrogate model file to write")
    from .commands.remove import removal_spec

    p.add_argument("--then", action="append", metavar="SPEC", type=removal_spec,
                   help="then apply this removal attack to the surrogate, on the attacker pool (repeatable, in order; "
                        "see `copycatch remove --help`)")
    _add_data_options(p)
    _add_train_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_steal)

    from ..oracles.suspects import add_suspect_arguments

    p = sub.add_parser("verify", help="test a suspect against one or more keys: exact p-value, verdict, evidence record",
                       formatter_class=_Formatter, epilog=_verify_epilog(SCHEMES),
                       description="Query the suspect with the keys' inputs only and test each scheme's null hypothesis "
                                   "(the suspect is independent of the key). By default the key is asked a batch at a "
                                   "time and verification stops as soon as the decision is reached (a sequential test "
                                   "valid at any stopping time); --fixed asks the whole key. Every answer goes into a "
                                   "hash-chained transcript; --report DIR keeps it with evidence.json and report.html. "
                                   "Several --key are combined (Holm, or Fisher).")
    p.add_argument("--key", required=True, action="append",
                   help="key file written by `copycatch embed` (repeat to combine several keys)")
    p.add_argument("--suspect", required=True,
                   help="suspect: model file, http(s):// prediction API, .onnx file, module:function or file.py:function")
    p.add_argument("--alpha", type=float, default=1e-3, help="significance level of the decision")
    p.add_argument("--post", action="append", metavar="SPEC", help="post-processor on the suspect's answers (repeatable)")
    p.add_argument("--json", action="store_true", help="print the evidence record as JSON")
    g = p.add_argument_group("queries")
    g.add_argument("--fixed", action="store_true",
                   help="ask the whole key (the fixed test) instead of stopping as soon as the decision is reached")
    g.add_argument("--batch", type=int, default=10, help="inputs asked per round of sequential verification")
    g.add_argument("--early-share", type=float, default=0.2,
                   help="share of alpha the sequential test spends on its always-valid early stop")
    g.add_argument("--budget", type=int, default=None,
                   help="most answers to use in total, over all sessions of this transcript (replayed ones count)")
    g = p.add_argument_group("evidence record")
    g.add_argument("--report", metavar="DIR", default=None,
                   help="write DIR/evidence.json and DIR/report.html, and keep the transcript in DIR/transcript.jsonl")
    g.add_argument("--transcript", metavar="FILE", default=None,
                   help="query transcript (JSON lines, hash-chained); default DIR/transcript.jsonl with --report")
    g.add_argument("--resume", action="store_true",
                   help="continue from the transcript: recorded answers are replayed, only the rest is asked")
    g.add_argument("--offline", action="store_true",
                   help="recompute the evidence from the transcript alone, asking the suspect nothing")
    g.add_argument("--combine", choices=["holm", "fisher"], default="holm",
                   help="how several keys' p-values decide: Holm (any dependence) or Fisher (independent keys)")
    g.add_argument("--no-calibration", action="store_true",
                   help="ignore <key>.calibration.json files written by `copycatch calibrate`")
    add_suspect_arguments(p)
    _add_common(p)
    p.set_defaults(func=cmd_verify, verify_parser=p)  # the parser lets the evidence record the command line

    p = sub.add_parser("key", help="inspect a key file", formatter_class=_Formatter,
                       description="Summarise a key (scheme, digest, parameters, provenance) without its secrets.")
    ksub = p.add_subparsers(dest="key_action", metavar="ACTION", required=True)
    ks = ksub.add_parser("show", help="summarise a key", formatter_class=_Formatter)
    ks.add_argument("file")
    ks.add_argument("--secrets", action="store_true", help="also print the secret tensors")
    ks.add_argument("--json", action="store_true")
    ks.set_defaults(func=cmd_key)

    p = sub.add_parser("demo", help="the whole story on Fashion-MNIST: protect, steal, verify, print the verdicts",
                       formatter_class=_Formatter,
                       description="Train a clean and a margin-watermarked victim, steal the victim by soft-label "
                                   "extraction, train an innocent model on the thief's data, verify all of them.")
    p.add_argument("--data", default=None, help="data set (default fashion-mnist)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="folder for the models, key and evidence (default demo-out)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--surrogate-arch", default=None)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help="margin scheme parameter (repeatable)")
    _add_common(p)
    p.set_defaults(func=cmd_demo)

    for module in _command_modules():
        extra = module.add_parser(sub)
        if extra.get_default("func") is None:
            extra.set_defaults(func=module.run)
    return parser


def _verify_epilog(schemes: Any) -> str:
    from ..schemes.base import Scheme

    names = schemes.list()
    probs_only = [n for n in names if not schemes.get(n).factory.label_only]
    fixed_only = [n for n in names if schemes.get(n).factory.bernoulli_outcomes is Scheme.bernoulli_outcomes]
    return textwrap.dedent(f"""\
        label-only suspects (answers are labels, not probabilities) work with every scheme except: {', '.join(probs_only) or '(none)'}
        sequential stopping is available for every scheme except (these use the fixed test): {', '.join(fixed_only) or '(none)'}

        examples:
          copycatch verify --key victim.cckey --suspect surrogate.safetensors --report evidence/
          copycatch verify --key victim.cckey --suspect model.onnx
          copycatch verify --key victim.cckey --suspect mymodule:clf.predict_proba
          copycatch verify --key victim.cckey --suspect https://api.example.com --report evidence/ --resume
          copycatch verify --key margin.cckey --key dynamarks.cckey --suspect http://localhost:8000 --combine fisher""")


def _command_modules() -> list[Any]:
    """The verbs in :mod:`copycatch.cli.commands`, one module each (see its docstring)."""
    import importlib
    import pkgutil

    from . import commands

    modules = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            modules.append(importlib.import_module(f"{commands.__name__}.{info.name}"))
    return modules


def main(argv: Sequence[str] | None = None) -> int:
    from ..core.runtime import default_threads

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    default_threads()
    try:
        return int(args.func(args) or 0)
    except CopycatchError as exc:
        print(f"copycatch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("copycatch: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # e.g. disk full or permission denied while writing an output
        print(f"copycatch: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


def run(fn: Callable[[], int]) -> None:  # pragma: no cover - console entry helper
    sys.exit(fn())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
