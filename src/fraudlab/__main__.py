"""``python -m fraudlab VERB``: the same as the ``fraudlab`` console script."""

from fraudlab.cli import main

main()
