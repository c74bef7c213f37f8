"""What the tests share: tiny inputs, launchers, fake Hubs and seeded weights, one module each; the repository's
root and the fixtures folder."""

from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
