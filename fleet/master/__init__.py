"""The master: one elected process that applies intake, places pending jobs, repairs."""
