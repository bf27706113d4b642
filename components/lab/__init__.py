"""Local lab: QEMU guests that stand in for bare-metal GPU servers in tests and trials."""
