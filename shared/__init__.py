"""dynashift library: models, transform, DynamoDB access, config."""
