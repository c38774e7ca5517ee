//! (explore: to be written.)
