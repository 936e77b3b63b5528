//! IOAS ioctl handlers.
