import sys

from loadtest.soak.cli import main

sys.exit(main())
