//! (world: to be written.)
