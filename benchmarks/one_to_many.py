"""One-to-many training benchmark (R1-R4 and the epoch-time curve); same as `inca bench`.

    python benchmarks/one_to_many.py [--train-size 1024]

Writes benchmarks/results/one_to_many.json and epoch_time_vs_adapters.png, prints the table.
"""

import sys

from inca.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
