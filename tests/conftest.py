import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO / "agent", REPO):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
