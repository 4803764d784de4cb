import sys

from aligner_train.cli import main

sys.exit(main())
