"""``python -m gptcourse.serve``: the same as ``gptcourse serve``."""

from . import main

raise SystemExit(main())
