"""Run layer: the shard stage, Ray actors, dispatch, the runner, progress, the run lock and verify."""
