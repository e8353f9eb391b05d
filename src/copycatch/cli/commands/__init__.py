"""Extra CLI verbs, one module each (``serve``, ``remove``, ``calibrate``, ``bench`` …).

A module here defines ``VERB`` (its name), ``HELP`` (one line), ``add_parser(subparsers) -> parser`` and
``run(args) -> int``; :mod:`copycatch.cli.main` discovers it. Imports of heavy or optional packages belong
inside ``run`` so ``copycatch --help`` stays fast and works without the extras.
"""
