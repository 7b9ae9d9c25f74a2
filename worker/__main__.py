import signal
import sys

# Until the worker installs its own handlers, a stop request ends the process cleanly: nothing is in flight.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

from worker.cli import main  # noqa: E402

raise SystemExit(main())
