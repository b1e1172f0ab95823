"""tnedit: find, edit and ship multilingual transfer neurons as ordinary Hugging Face checkpoints."""

from tnedit.versions import __version__, package_versions

__all__ = ["__version__", "package_versions"]
