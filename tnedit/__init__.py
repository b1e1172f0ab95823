"""tnedit: find, edit and ship multilingual transfer neurons as ordinary Hugging Face checkpoints."""

__version__ = "0.1.0"
