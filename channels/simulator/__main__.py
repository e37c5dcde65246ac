"""``python -m channels.simulator --config FILE --port N``."""

import sys

from channels.simulator import main

sys.exit(main())
