"""Where hosts come from: one module per source, each turning a host entry into a connection.

* ``byo``: a server you own or rent, its address and pinned host key in the stack or an inventory.
* ``lab``: a QEMU guest ``sovereign lab up`` started, from the lab's inventory.
* ``scaleway``: a GPU Instance or Elastic Metal server ordered through pulumiverse-scaleway.
* ``ovh``: a Public Cloud GPU instance ordered, or a dedicated server reinstalled or ordered,
  through pulumi-ovh.

``inventory`` is the typed inventory the lab writes and the config loader validates (pure: the
config layer reads it). ``connection`` holds what every source returns; ``ordering`` picks the
source for a host. This package's ``__init__`` imports nothing, so reading the inventory model
loads no Pulumi code.
"""
