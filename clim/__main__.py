import sys

from clim.cli import main

sys.exit(main())
