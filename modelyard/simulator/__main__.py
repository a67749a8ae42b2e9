from __future__ import annotations

from modelyard.simulator.cli import simulate

if __name__ == "__main__":
    simulate(prog_name="python -m modelyard.simulator")
