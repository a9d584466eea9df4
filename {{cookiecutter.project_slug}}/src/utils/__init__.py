"""Config loading, seeding and experiment tracking."""
