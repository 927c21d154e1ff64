"""Machinery around the math: atomic file writes, streaming sample files, the BLAS thread policy, progress
lines and point-cloud figures."""
