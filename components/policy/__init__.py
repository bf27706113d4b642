"""Residency rules at preview time (pulumi-policy). ``python -m components.policy`` runs the pack."""
