"""Training a purifier: a config (`config`), (natural, cloaked) pairs from identity folders (`data`),
amplified inputs (`amplify`), the image + feature loss (`losses`), and the seeded, resumable DDP loop
with validation (`train`). The network it trains is `puface.purifier`.

    from puface.training import load_config, train
    train(load_config("default", data_root="faces/"), "runs/mine")
"""

from .config import PurifierTrainConfig, load_config
from .train import train

__all__ = ["PurifierTrainConfig", "load_config", "train"]
