"""Import every module of a package so its registrations run.

Schemes, attacks and CLI commands each live in their own file; dropping a file in
the package is enough to register it (no shared list to edit, no merge conflicts).
"""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package_name: str, package_path: list[str], *, skip: tuple[str, ...] = ("base",)) -> list[str]:
    names = []
    for info in sorted(pkgutil.iter_modules(package_path), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in skip:
            continue
        importlib.import_module(f"{package_name}.{info.name}")
        names.append(info.name)
    return names
