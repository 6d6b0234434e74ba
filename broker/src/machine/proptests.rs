//! Property tests of the machine.
