"""``python -m facekd``: the same CLI as the ``facekd`` console script."""

from facekd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
