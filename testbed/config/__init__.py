"""What an operator writes: rig and scenario files (strict TOML), and the day they imply."""
