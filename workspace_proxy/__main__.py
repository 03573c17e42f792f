"""`python -m workspace_proxy` does what the `workspace-proxy` console script does."""

import sys

from workspace_proxy.cli import main

sys.exit(main())
