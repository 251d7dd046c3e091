"""One training loop for every objective: `train(load_config("recipe.yaml", ["key=value"]))`."""

from alignkit.train.config import ConfigError, TrainConfig, load_config
from alignkit.train.loop import Trainer, TrainResult, train
from alignkit.train.sources import DataSource, FixedDataset

__all__ = ["ConfigError", "DataSource", "FixedDataset", "TrainConfig", "TrainResult", "Trainer", "load_config",
           "train"]
