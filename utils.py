"""Small shared helpers: logging, meters, checkpoint I/O, process/thread setup."""
