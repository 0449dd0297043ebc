import sys

from rnnsweep.report.build import main

sys.exit(main())
