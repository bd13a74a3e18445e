"""``python -m cmedl ...``: the same as the ``cmedl`` command (useful where the script is not on PATH)."""

from cmedl.cli import main

if __name__ == "__main__":
    main()
