"""Executors run a prepared job's shards: locally, or on Ray. Steps know nothing of them."""
