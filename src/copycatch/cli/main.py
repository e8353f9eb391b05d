"""The ``copycatch`` command line: one module per verb in :mod:`copycatch.cli.commands`.

Each verb parses its options, makes one call to :mod:`copycatch.api` and prints the result. User mistakes (bad
names, missing files, corrupt keys, exhausted budgets) are printed as one line ``copycatch: error: …`` with exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from collections.abc import Sequence

from .._version import __version__
from ..core.errors import CopycatchError
from .options import Formatter

EXIT_USAGE = 2

# The verbs in the order `copycatch --help` lists them; a verb is its module in cli/commands plus one name here.
VERBS = (
    "data", "train", "embed", "protect", "steal", "verify", "key", "demo",
    "remove", "serve", "ledger", "calibrate", "bench", "report",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="copycatch",
        formatter_class=Formatter,
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
    for verb in VERBS:
        module = importlib.import_module(f"{__package__}.commands.{verb}")
        verb_parser = module.add_parser(sub)
        if verb_parser.get_default("func") is None:
            verb_parser.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..core.runtime import default_threads, return_freed_memory

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    default_threads()
    return_freed_memory()
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
