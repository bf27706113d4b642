"""Pulumi dynamic providers. Module paths here are part of stack state: keep them stable."""
