import sys

from loadtest.reliability.cli import main

sys.exit(main())
