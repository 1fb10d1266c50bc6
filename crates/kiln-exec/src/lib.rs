//! The one place where kiln runs external programs, and the RAII guards that
//! undo its side effects.
//!
//! Every external command goes through [`Cmd`]: it records the tool in the
//! registry that `kiln doctor` prints, runs the child with a null stdin in its
//! own process group tied to kiln's life, forwards an interruption (Ctrl-C,
//! SIGTERM) to the whole group, and on failure returns an error that quotes the
//! full command line and the tail of its stderr. Side effects that must not
//! outlive a build (work trees, partial outputs, loop devices) are owned by
//! guards from [`guard`]. Non-goals: shell parsing, privilege handling.

pub mod cmd;
pub mod guard;
pub mod interrupt;
pub mod testing;
pub mod tools;

pub use cmd::{locate, Cmd, ExecError, Output, Running};
pub use guard::{mounts_under, LoopDevice, PartialFile, WorkDir};
pub use interrupt::{check_interrupted, fault_point, install_signal_handlers, interrupted, InteractiveWindow};
pub use tools::{find_tool, which, Tool, TOOLS};
