import sys

from servelane.cli import main

sys.exit(main())
