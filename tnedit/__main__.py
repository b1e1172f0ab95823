"""``python -m tnedit``: the same command as ``tnedit``."""

from tnedit.cli import main

main()
