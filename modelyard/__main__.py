from __future__ import annotations

from modelyard.cli import main

main()
