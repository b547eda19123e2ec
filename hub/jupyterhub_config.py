"""JupyterHub configuration of the course hub (`make hub`; docs/hub.md).

Everything is read from the hub that `python -m coursegrader.hub start` set up, whose state folder the
COURSEGRADER_HUB variable names; coursegrader.hub.configure says what each setting does.
"""

import os

from coursegrader.hub import STATE_VARIABLE, configure

c = get_config()  # noqa: F821  (JupyterHub provides get_config when it executes this file)
configure(c, os.environ[STATE_VARIABLE])
