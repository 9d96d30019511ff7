"""``python -m controller.cli``: the ``breakwater`` command."""

from __future__ import annotations

import sys

from .main import main

sys.exit(main())
