import os
import sys

# The benchmark modules import their shared helpers (peers.py) by name.
sys.path.insert(0, os.path.dirname(__file__))
