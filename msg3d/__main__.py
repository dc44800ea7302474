import sys

from msg3d.cli import main

sys.exit(main())
