"""The SSH executor and the meaning of step results."""
