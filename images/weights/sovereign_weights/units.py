"""Binary byte units: the one definition of a MiB and a GiB for the toolkit and its images.

Weights, caches and memory are sized in these units on both sides of the image boundary: the
warmer here, and the plan (``components``), which imports them from this module because a runtime
package may import nothing of the toolkit's. Only the standard library is imported here.
"""

from __future__ import annotations

from typing import Final

MIB: Final = 1024**2
GIB: Final = 1024**3
