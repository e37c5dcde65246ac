import sys

from channels.simulator import main

sys.exit(main())
