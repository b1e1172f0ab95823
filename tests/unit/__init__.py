"""Unit tests, mirroring the package: one module (or one small group of modules) at a time, no whole verb run."""
