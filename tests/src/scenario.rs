//! (scenario: to be written.)
