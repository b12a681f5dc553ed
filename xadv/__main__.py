"""``python -m xadv`` runs the ``xadv`` command."""
from .cli import main

raise SystemExit(main())
