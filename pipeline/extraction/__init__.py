"""The extraction stage: its config, the job (prepare), the driver and the shard runner."""
