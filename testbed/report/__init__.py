"""A run's figures and their presentations: terminal tables, JSON, the HTML report and its plots."""
