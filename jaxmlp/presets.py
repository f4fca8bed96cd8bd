"""Named training recipes for ``jaxmlp train --preset NAME``.

Each preset is a set of TrainConfig overrides; explicit flags override the preset. The accuracies and
times in the README were measured with ``jaxmlp train --preset NAME`` on the machine named there.
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    "notebook": {
        "description": "the notebook's best experiment, 784-128-64-10, SGD lr 0.1, batch 32, 10 epochs",
        "config": {},
    },
}


def preset_config(name: str) -> dict:
    """The TrainConfig overrides of preset ``name``; ValueError naming the choices otherwise."""
    if name not in PRESETS:
        raise ValueError(f"--preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name]["config"])
