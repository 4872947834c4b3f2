"""A broken env module: importing it ends the process (never import it in the test process)."""

import os

os._exit(5)
