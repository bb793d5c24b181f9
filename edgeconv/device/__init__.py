"""Files that travel in bundles and run on devices (Python 3.6+, numpy and the runtime only)."""
