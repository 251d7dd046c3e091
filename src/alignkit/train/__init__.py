"""One training loop for every objective: `train(load_config("recipe.yaml", ["key=value"]))`."""

from alignkit.train.config import ConfigError, TrainConfig, load_config
from alignkit.train.loop import TrainResult, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "load_config", "train"]
