import sys
from pathlib import Path

# tests/harness.py and friends are imported as plain modules by the suites.
sys.path.insert(0, str(Path(__file__).parent))
