"""Write ``manual_bp/train_help.txt``: ``manual-bp train --help`` as shipped with the package.

The first call of ``manual-bp train --help`` on a fresh install prints this file instead of building
the help (which imports Lightning: 3-5 s), if its first line names the installed versions of
lightning, jsonargparse, torch and torchmetrics; later calls read a cache file. Rerun this script
after changing an option of ``manual-bp train`` (``tests/test_cli_check.py`` fails until then):

    python scripts/train_help.py
"""

from __future__ import annotations

import os

os.environ["COLUMNS"] = "100"  # the width the shipped help is wrapped at

from manual_bp import cli  # noqa: E402 (after COLUMNS)


def main() -> None:
    text = cli.shipped_help_header() + cli.render_train_help(["--help"])
    cli.SHIPPED_HELP.write_text(text)
    print(f"wrote {cli.SHIPPED_HELP} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    main()
