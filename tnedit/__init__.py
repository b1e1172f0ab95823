"""tnedit: find, edit and ship multilingual transfer neurons as ordinary Hugging Face checkpoints."""

__version__ = "0.2.0"

_RECORDED_PACKAGES = ("torch", "transformers", "safetensors", "huggingface-hub", "numpy")


def package_versions() -> dict[str, str | None]:
    """Versions recorded in provenance and reports, read from package metadata so nothing heavy is imported."""
    import platform
    from importlib import metadata

    out: dict[str, str | None] = {"tnedit": __version__}
    for pkg in _RECORDED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    return out
