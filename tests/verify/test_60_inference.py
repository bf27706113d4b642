"""Layer 6, inference: the OpenAI-compatible endpoint and its pods."""

import pytest

from components.verification.runner import Verification
from tests.verify.conftest import assert_layer

pytestmark = pytest.mark.verify


def test_inference(verification: Verification, host_name: str) -> None:
    assert_layer(verification, "inference", host_name)
