"""Models: loading, frozen references, log-prob computation."""

from alignkit.models.loading import (DEFAULT_MODEL, Loaded, ModelLoadError, default_device, load, resolve,
                                     save_model_atomically)

__all__ = ["DEFAULT_MODEL", "Loaded", "ModelLoadError", "default_device", "load", "resolve", "save_model_atomically"]
