"""tnedit's version (the one source: pyproject.toml reads it) and the package versions recorded in outputs."""

from __future__ import annotations

__version__ = "0.2.0"

_RECORDED_PACKAGES = ("torch", "transformers", "safetensors", "huggingface-hub", "numpy")


def package_versions() -> dict[str, str | None]:
    """Versions recorded in provenance and reports, read from package metadata so nothing heavy is imported."""
    import platform
    from importlib import metadata

    out: dict[str, str | None] = {"tnedit": __version__}
    for package in _RECORDED_PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    return out
