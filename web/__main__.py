import sys

from web import main

sys.exit(main())
