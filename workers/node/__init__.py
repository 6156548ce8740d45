"""The node: what it has (cores, GPUs, cgroups, disk) and what it reports."""
