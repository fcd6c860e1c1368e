"""The async backfill worker."""
