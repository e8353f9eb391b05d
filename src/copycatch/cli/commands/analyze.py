"""``copycatch analyze STUDY -o DIR``: one seed paper's analysis figure (CSV + PNG) from cached study models."""

from __future__ import annotations

import argparse
import inspect
import math

from .. import options

VERB = "analyze"
HELP = "the seed papers' analysis figures (CSV + PNG): feature maps, MEA-Defender's PRMS spectrum, …"

DESCRIPTION = """\
Run one analysis study (listed below) and write DIR/STUDY.csv, every number its figure shows, and DIR/STUDY.png
(matplotlib, the `report` extra; without it the CSV alone). A study trains what it looks at, a clean model, a
victim watermarked with --scheme and a surrogate stolen from the victim's API with --thief-queries queries, once:
the models are cached under --cache-dir by their configuration, so a second study on the same configuration
trains nothing. Each study's page (copycatch analyze STUDY --help) says what it computes and how to read it."""

EPILOG = """\
examples:
  copycatch analyze features -o analysis-out
  copycatch analyze prms --max-train 6000 --epochs 5 -o analysis-out"""


def _defaults() -> dict:
    from ...bench.analysis import StudyConfig

    return StudyConfig().to_dict()


def add_parser(subparsers) -> argparse.ArgumentParser:
    # the studies come from their registry, which imports torch: only `copycatch analyze …` gets here
    from ...bench.analysis import STUDIES

    p = subparsers.add_parser(
        VERB,
        help=HELP,
        description=DESCRIPTION + "\n\n" + options.registry_table(STUDIES.describe(), "studies"),
        epilog=EPILOG,
        formatter_class=options.Formatter,
    )
    studies = p.add_subparsers(dest="study", metavar="STUDY", required=True)
    defaults = _defaults()
    for name, summary in STUDIES.describe():
        factory = STUDIES.get(name).factory
        s = studies.add_parser(
            name,
            help=summary,
            description=inspect.getdoc(inspect.getmodule(factory)) or summary,
            formatter_class=options.Formatter,
        )
        _add_config_options(s, defaults, getattr(factory, "default_scheme", "margin"))
        names = _add_study_options(s, factory)
        s.set_defaults(func=run, study_options=names)
    p.set_defaults(func=run)
    return p


def _add_config_options(p: argparse.ArgumentParser, defaults: dict, scheme: str) -> None:
    p.add_argument("-o", "--output", default="analysis-out", metavar="DIR", help="folder of STUDY.csv and STUDY.png")
    g = p.add_argument_group("models (StudyConfig)")
    g.add_argument("--data", default=defaults["dataset"], help="data set name (see `copycatch data list`)")
    g.add_argument("--data-dir", default=None, help="folder of the data set's files (else its usual place)")
    g.add_argument("--max-train", type=int, default=defaults["max_train"], help="training examples used at most")
    g.add_argument(
        "--epochs", type=int, default=defaults["epochs"], help="training epochs of the owner's models and the thief's"
    )
    g.add_argument("--scheme", default=scheme, help="the victim's watermark scheme")
    options.add_params_option(g, "scheme")
    g.add_argument("--thief-queries", type=int, default=defaults["thief_queries"], help="the thief's query budget")
    g.add_argument("--seeds", default=",".join(map(str, defaults["seeds"])), help="seeds, comma-separated")
    g.add_argument("--cache-dir", default=defaults["cache_dir"], help="where trained models are cached")
    g.add_argument("--device", default=defaults["device"], help="cpu, cuda, cuda:N, mps or auto")


def _add_study_options(p: argparse.ArgumentParser, factory) -> tuple[str, ...]:
    """The study's own options: the keyword parameters of its function beyond ``config`` and ``output``, defaults
    from the signature; types and help from its ``options`` attribute (name, type, help) where it declares them,
    else the default's type (a string for anything else, which the study parses)."""
    declared = {name: (kind, text) for name, kind, text in getattr(factory, "options", ())}
    names = []
    g = p.add_argument_group("study options")  # left out of --help when the study has none
    for name, parameter in inspect.signature(factory).parameters.items():
        if name in ("config", "output") or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = None if parameter.default is parameter.empty else parameter.default
        inferred = type(default) if isinstance(default, (int, float, str)) and not isinstance(default, bool) else str
        kind, text = declared.get(name, (inferred, "study option (see the description above)"))
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=default, help=text)
        names.append(name)
    return tuple(names)


def _show(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def run(args: argparse.Namespace) -> int:
    from ... import api

    config = {
        "dataset": args.data,
        "data_dir": args.data_dir,
        "max_train": args.max_train,
        "epochs": args.epochs,
        "thief_epochs": args.epochs,
        "scheme": args.scheme,
        "scheme_params": options.params(args.param),
        "thief_queries": args.thief_queries,
        "seeds": args.seeds,
        "cache_dir": args.cache_dir,
        "device": args.device,
    }
    study_options = {name: getattr(args, name) for name in args.study_options}
    result = api.analyze(args.study, args.output, options=study_options, **config)
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.csv} ({result.rows} rows)")
    print(f"wrote {result.png}" if result.png is not None else "no figure (see the note above)")
    for name, value in result.summary.items():
        print(f"  {name}: {_show(value)}")
    return 0
