"""What operators see: events, logs, metrics, plots and the Flower app."""
