"""Start APSS: read config.toml (+ APSS_* overrides), apply migrations, serve."""

import sys

from apss.cli import main

if __name__ == "__main__":
    main(["serve", *sys.argv[1:]] if not sys.argv[1:] or sys.argv[1].startswith("-") else sys.argv[1:])
