"""Identity folders, seeded splits and the embedded default data."""
