"""Post-deploy verification: facts gathered from hosts, checks evaluated layer by layer, evidence.

Collection (one SSH connection and one script per host) is separate from evaluation (pure
functions over the collected data), so recorded readings can be re-evaluated and unit-tested.
"""
