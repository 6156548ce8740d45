"""The data plane: node agent, load probes, job supervisor and runners, inside a worker."""
