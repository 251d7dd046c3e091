"""alignkit: align language models with what people want."""

__version__ = "0.1.0"
