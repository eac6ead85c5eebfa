import sys

from ptplus_tune.cli import main

sys.exit(main())
