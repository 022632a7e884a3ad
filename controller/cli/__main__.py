import sys

from raynas.controller.cli import main

sys.exit(main())
