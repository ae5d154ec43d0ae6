"""testbed: a hardware-in-the-loop controller for community peer-to-peer energy trading."""

__version__ = "0.1.0"
