import sys

from costspan.cli import main

sys.exit(main())
