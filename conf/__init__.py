"""The Hydra config files (installed as embwalk.conf): one YAML file per job, one folder per config group."""
