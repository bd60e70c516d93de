"""Where work units run: this process or a local pool (local.py), or a Ray cluster (ray.py)."""
