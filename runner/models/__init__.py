"""Model management: finding, loading and caching checkpoints, LoRAs and devices."""
