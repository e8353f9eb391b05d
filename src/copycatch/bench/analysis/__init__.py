"""The seed papers' analysis studies, one module per study (``copycatch analyze STUDY``).

A study is a function registered with :func:`register_study` that takes a :class:`StudyConfig` (plus its own
keyword options) and an output folder, and writes ``<study>.csv`` (every number the figure shows) and
``<study>.png`` (matplotlib, the ``report`` extra); it returns a :class:`StudyResult`. Trained models come from
:func:`~copycatch.bench.analysis.common.study_models`, cached by configuration like the bench's, so a second run of
any study on the same configuration trains nothing. Adding a study is its module plus one name in ``_STUDIES``.
"""

from __future__ import annotations

import importlib

from ...core.registry import Registry
from .common import StudyConfig, StudyResult, study_models

STUDIES: Registry = Registry("study")
register_study = STUDIES.register

# The study modules, registered on import; a new study adds its module name here.
_STUDIES: tuple[str, ...] = ("margin_radius", "location", "features", "prms")

for _module in _STUDIES:
    importlib.import_module(f"{__name__}.{_module}")


def list_studies(pattern: str = "*") -> list[str]:
    return STUDIES.list(pattern)


def run_study(name: str, config: StudyConfig, output: str, **options) -> StudyResult:
    """Run study ``name`` on ``config``'s models, writing its CSV and PNG into ``output``."""
    return STUDIES.create(name, config=config, output=output, **options)


__all__ = ["STUDIES", "StudyConfig", "StudyResult", "list_studies", "register_study", "run_study", "study_models"]
