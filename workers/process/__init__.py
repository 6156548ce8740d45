"""The job's own process: the fork server that starts it, the child's main, the pipes."""
