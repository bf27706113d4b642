"""Layer 6, inference, as only the live cluster shows it (read through the ``kubeconfig`` output):
every model scales to zero, images are pinned EU digests, model pods are not BestEffort and ran
inside the residency policy, and K3s's Traefik runs with the edge timeouts the plan set."""

import pytest

from components.config.models import StackConfig
from components.verification.layers import CLUSTER
from components.verification.runner import Verification
from tests.verify.conftest import assert_layer

pytestmark = pytest.mark.verify


def test_cluster(verification: Verification, stack: StackConfig) -> None:
    if not stack.inference.models:
        pytest.skip("the stack serves no models: no inference objects to judge")
    assert_layer(verification, "inference", CLUSTER)
