"""The ScaledObject trigger metadata the scaler reads: one home for its keys.

The plan writes a ScaledObject's ``external-push`` trigger with these keys; KEDA sends them back
to the scaler with every call (``scaler.py``). Only the standard library is imported here.
"""

from __future__ import annotations

from typing import Final

METADATA_MODEL_KEY: Final = "model"
"""The trigger metadata key that holds the model's name (the route's ``name``)."""
