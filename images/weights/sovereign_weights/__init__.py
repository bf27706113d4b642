"""Model weights: publish to an EU object store, warm the node's NVMe cache, verified and resumable."""
