import sys

from fnapi.cli import main

sys.exit(main())
