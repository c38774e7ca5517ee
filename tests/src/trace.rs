//! (trace: to be written.)
