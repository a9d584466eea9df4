"""Foundation: config loading, seeding, files and experiment tracking. Imports nothing from
the other layers of ``src``."""
