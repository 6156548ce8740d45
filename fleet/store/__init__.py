"""The job and node records in Redis: keys, the Lua steps and the Python around them."""
