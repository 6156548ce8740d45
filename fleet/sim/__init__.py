"""The placement simulator: replays a trace through the same policies offline."""
