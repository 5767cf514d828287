import sys

from seqmatch_engine.interfaces.cli import main

sys.exit(main())
