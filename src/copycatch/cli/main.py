"""The ``copycatch`` command line: one module per verb in :mod:`copycatch.cli.commands`.

Each verb parses its options, makes one call to :mod:`copycatch.api` and prints the result. User mistakes (bad
names, missing files, corrupt keys, exhausted budgets) and failures to read or write files are printed as one line
``copycatch: error: …`` with exit status 2, never a traceback. ``copycatch verify`` exits with its verdict (see
:data:`~copycatch.cli.options.EXIT_STOLEN` and the codes beside it).

Start-up stays fast: ``copycatch --version`` and ``copycatch --help`` import no verb's machinery (no torch); only the
verb on the command line gets its full parser (whose choices and epilog may come from the registries).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence

from .._version import __version__
from ..core.errors import CopycatchError
from .options import EXIT_ERROR, Formatter

EXIT_USAGE = EXIT_ERROR  # the old name; every error, a usage error or not, exits with this status

# The verbs in the order `copycatch --help` lists them; a verb is its module in cli/commands plus one name here.
VERBS = (
    "data", "models", "train", "embed", "protect", "steal", "verify", "evidence", "key", "demo",
    "remove", "serve", "export", "ledger", "calibrate", "bench", "report", "analyze",
)  # fmt: skip


def build_parser(verb: str | None = None, *, lazy: bool = False) -> argparse.ArgumentParser:
    """The ``copycatch`` parser with every verb's full parser; with ``lazy``, only ``verb``'s is full and the others
    are stubs that carry just their one-line help (enough for ``copycatch --help`` and for choosing a verb)."""
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
    for name in VERBS:
        module = importlib.import_module(f"{__package__}.commands.{name}")
        if lazy and name != verb:
            sub.add_parser(name, help=module.HELP)
            continue
        verb_parser = module.add_parser(sub)
        if verb_parser.get_default("func") is None:
            verb_parser.set_defaults(func=module.run)
    return parser


def _verb_in(argv: Sequence[str]) -> str | None:
    """The verb the command line names: its first word that is not an option (the top level takes no values)."""
    first = next((word for word in argv if not word.startswith("-")), None)
    return first if first in VERBS else None


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler, ``timeout``) raised like Ctrl-C, so that the code that cleans up after an
    interrupt runs too: a bench run saves its finished cells and stops its worker processes, files are closed."""


@contextlib.contextmanager
def _sigterm_as_interrupt(received: list[int]) -> Iterator[None]:
    """While the verb runs, SIGTERM raises :class:`Terminated` (appended to ``received``) instead of ending the
    process at once, which left a bench run's spawned workers running on. Only the main thread can own a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        received.append(signum)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_verb_in(argv), lazy=True)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from ..core.runtime import default_threads, return_freed_memory

    default_threads()
    return_freed_memory()
    terminated: list[int] = []
    try:
        with _sigterm_as_interrupt(terminated):
            code = int(args.func(args) or 0)
        # a verb that caught the interrupt and stopped cleanly (bench) still reports SIGTERM as the shell would
        return 128 + signal.SIGTERM if terminated else code
    except CopycatchError as exc:
        print(f"copycatch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        stopped = isinstance(exc, Terminated)
        print(f"copycatch: {'terminated' if stopped else 'interrupted'}", file=sys.stderr)
        return 128 + signal.SIGTERM if stopped else 130
    except BrokenPipeError:  # the reader stopped early (`| head`): like any Unix filter, stop without a word
        _discard_stdout()
        return 128 + 13  # killed by SIGPIPE, as the shell reports it
    except OSError as exc:  # e.g. disk full or permission denied while writing an output
        print(f"copycatch: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail on the closed pipe again."""
    import contextlib
    import os

    # without a real file descriptor (stdout replaced in-process) there is nothing to flush
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
