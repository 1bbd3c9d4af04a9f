import sys

from embdistill.cli import main

sys.exit(main())
