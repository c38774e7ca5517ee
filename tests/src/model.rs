//! (model: to be written.)
