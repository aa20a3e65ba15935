"""`python -m quantsearch` entry point."""

from quantsearch.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
