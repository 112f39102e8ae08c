"""From a spec to finished runs: spec expansion, jobs, executors, tracking and provenance."""
