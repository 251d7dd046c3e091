"""One training loop for every objective: `train(load_config("recipe.yaml", ["key=value"]))`."""

from alignkit.train.config import ConfigError, TrainConfig, load_config
from alignkit.train.loop import TrainingRun, TrainResult, start_run, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "TrainingRun", "load_config", "start_run", "train"]
