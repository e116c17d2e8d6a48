"""edgeci-p2p: peer-to-peer CNN inference on edge clusters."""

__version__ = "0.1.0"
