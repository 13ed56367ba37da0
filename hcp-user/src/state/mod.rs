//! What hcp keeps on disk: session records under `/run/hcp/`, the lock that
//! serialises the commands that change them, and the rules every root-only
//! file hcp reads or writes must pass.

pub mod counters;
pub mod dirs;
pub mod history;
pub mod lock;
pub mod private;
pub mod record;
