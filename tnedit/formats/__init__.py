"""Every ``tnedit.*/1`` file, typed and torch-free, plus digests and atomic writes: the bottom layer."""
