import sys

from modelshard.cli import main

sys.exit(main())
