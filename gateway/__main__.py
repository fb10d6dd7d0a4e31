"""``python -m gateway`` runs the ``mqttsn-gateway`` command."""

import sys

from gateway.cli import main

sys.exit(main())
