"""``python -m asuka``: the command line (see :mod:`asuka.cli`)."""

from asuka.cli import main


raise SystemExit(main())
