"""``python -m tnedit.cli``: the same command as ``tnedit``."""

from tnedit.cli import main

main()
