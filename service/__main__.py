"""`python -m service ...` entry point."""

from service.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
