import sys

from rnnsweep.report.cli import main

sys.exit(main())
