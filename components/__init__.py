"""sovereign-inference: Pulumi components for EU bare-metal GPU inference.

The package is layered so each seam is visible in its module names:

* ``components.config``  - typed stack config (pure)
* ``components.plan``    - host-setup scripts, Kubernetes objects, checks (pure)
* ``components.gpu_host`` and the other component modules - Pulumi wiring, no I/O of their own
* ``components.providers`` - the dynamic provider that calls the executor
* ``components.execution`` - the SSH executor (the only code that imports paramiko)
* ``components.lab``     - local QEMU lab hosts for tests and trials

Components are imported from their modules (``from components.gpu_host import GpuHost``) so that
importing the pure layers never pulls in the Pulumi SDK.
"""

__version__ = "0.1.0"
