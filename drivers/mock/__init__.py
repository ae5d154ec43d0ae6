"""The mock bench: one physics model of the plant, served in-process or behind emulators."""
