"""Extra CLI verbs, one module each (``serve``, ``remove``, ``calibrate``, ``bench`` …).

A module here defines ``VERB`` (its name), ``HELP`` (one line), ``add_parser(subparsers) -> parser`` and
``run(args) -> int``; :mod:`copycatch.cli.main` discovers it. Imports of heavy or optional packages belong
inside ``run`` (or ``add_parser``, which runs only for the verb on the command line) so ``copycatch --help`` and
``copycatch --version`` stay fast (no torch) and work without the extras.
"""
