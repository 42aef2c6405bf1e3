"""``python -m humo``: the same command table as the ``humo`` console script."""

from humo.cli import app

if __name__ == "__main__":
    app()
