"""The bottom layer: what every other part stands on.

Settings (the one settings object), errors, the DynamoDB codec and item
sizes, AWS clients (endpoint conventions, retries, the capacity hook),
capacity accounting and prices, tracing, and the migration contract
(`definition`: what a migration is, and how a plug-in is loaded). Imports
nothing of dynashift's above it.
"""
