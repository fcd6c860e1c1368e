"""Lambda entry points (thin: parse the event, call shared/, return)."""
