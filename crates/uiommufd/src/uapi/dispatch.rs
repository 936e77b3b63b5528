//! ioctl dispatch.
