"""A job's packages on a node: one virtualenv per set of requirements, built once, cached.

`policy` names an env and chooses what to evict (pure), `build` makes one (venv, then pip from
the node's configured index), `cache` keeps them (locks, the ready marker, LRU eviction).
"""
