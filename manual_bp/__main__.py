"""``python -m manual_bp``: the same as the ``manual-bp`` command."""

import sys

from manual_bp.cli import main

if __name__ == "__main__":
    sys.exit(main())
