"""Shared machinery every method uses: device, model manager, sampling loop, guidance, metrics, results."""
