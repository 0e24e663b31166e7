//! Small helpers every stage uses: running external tools, writing outputs atomically,
//! progress reporting and digests.

pub mod atomic;
pub mod command;
pub mod digest;
pub mod interrupt;
pub mod progress;
pub mod sparse;
