"""Named training recipes for ``jaxmlp train --preset NAME``.

Each preset is a set of TrainConfig overrides; flags given explicitly override the preset, and the
full resulting config (with ``preset``) lands in ``--metrics-out``. The accuracies and times in the
README were measured with ``jaxmlp train --preset NAME`` on the machine named there.
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    "notebook": {
        "description": "the notebook's best experiment: 784-128-64-10, SGD lr 0.1, batch 32, 10 epochs",
        "config": {},
    },
    "seed-arch-best": {
        "description": "the notebook's 784-128-64-10 network trained well: He init, Adam with a cosine "
                       "schedule, random 2-pixel shifts, 30 epochs",
        "config": {"hidden": (128, 64), "init": "he", "optimizer": "adam", "lr": 2e-3, "batch_size": 128,
                   "schedule": "cosine", "epochs": 30, "augment": "shift"},
    },
    "best-mlp": {
        "description": "a wide MLP (784-1024-1024-10): Adam, cosine schedule, dropout 0.1, random shifts, 30 epochs",
        "config": {"hidden": (1024, 1024), "init": "he", "optimizer": "adam", "lr": 1e-3, "batch_size": 128,
                   "schedule": "cosine", "epochs": 30, "augment": "shift", "dropout": 0.1},
    },
    "fast-97": {
        "description": "97% quickly: 784-128-64-10, Adam lr 5e-3 with a cosine schedule, batch 100, 2 epochs "
                       "(100 divides 60000: no short last batch, so a smaller program to compile)",
        "config": {"hidden": (128, 64), "init": "he", "optimizer": "adam", "lr": 5e-3, "batch_size": 100,
                   "schedule": "cosine", "epochs": 2},
    },
    "cnn": {
        "description": "the small CNN (conv32-conv64-dense128): Adam, warmup-cosine, dropout 0.25, random shifts",
        "config": {"arch": "cnn", "optimizer": "adam", "lr": 2e-3, "batch_size": 128, "schedule": "warmup-cosine",
                   "warmup_epochs": 1, "epochs": 8, "augment": "shift", "dropout": 0.25},
    },
}


def preset_config(name: str) -> dict:
    """The TrainConfig overrides of preset ``name``; ValueError naming the choices otherwise."""
    if name not in PRESETS:
        raise ValueError(f"preset_config: name: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name]["config"])
