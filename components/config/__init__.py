"""Stack configuration: typed models, the loader that builds them, and the errors it reports."""

from components.config.errors import Problem, StackConfigError
from components.config.loader import load_pulumi_config, load_stack_file
from components.config.models import (
    CacheSpec,
    GpuSpec,
    HostSpec,
    InferenceSpec,
    K3sSpec,
    ModelSpec,
    NvidiaSpec,
    ResidencyPolicy,
    SshDefaults,
    StackConfig,
)

__all__ = [
    "CacheSpec",
    "GpuSpec",
    "HostSpec",
    "InferenceSpec",
    "K3sSpec",
    "ModelSpec",
    "NvidiaSpec",
    "Problem",
    "ResidencyPolicy",
    "SshDefaults",
    "StackConfig",
    "StackConfigError",
    "load_pulumi_config",
    "load_stack_file",
]
