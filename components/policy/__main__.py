"""Entry point of the policy pack: building a PolicyPack starts its server, so only here."""

from pulumi_policy import PolicyPack

from components.policy.residency import residency_policies

PolicyPack(name="sovereign-residency", policies=list(residency_policies()))
