"""group-events worker: Qlik Cloud group events in, normalized membership-change records out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("group-events-worker")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
