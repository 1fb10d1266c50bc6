//! Results on stdout. `println!` panics when stdout is closed (`kiln plan
//! SPEC | head -1`); commands print through [`outln!`] instead, which turns
//! a closed stdout into [`StdoutClosed`], an error `main` ends on quietly.

use std::fmt;
use std::io::{self, Write};

use crate::exit::StdoutClosed;

/// Writes to stdout; a reader that went away is [`StdoutClosed`].
pub(crate) fn write_stdout(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    write_to(&mut io::stdout().lock(), args)
}

/// Writes bytes (a generated script, a manual page) to stdout.
pub(crate) fn write_stdout_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    closed_is_its_own_error(io::stdout().lock().write_all(bytes))
}

fn write_to(out: &mut impl Write, args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    closed_is_its_own_error(out.write_fmt(args))
}

fn closed_is_its_own_error(written: io::Result<()>) -> anyhow::Result<()> {
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        r => Ok(r?),
    }
}

/// `println!` for results: returns `anyhow::Result<()>` for `?`.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for results.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};

#[cfg(test)]
mod tests {
    use super::*;

    struct Gone;

    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_stdout_is_its_own_error() {
        let e = write_to(&mut Gone, format_args!("x")).unwrap_err();
        assert!(e.downcast_ref::<StdoutClosed>().is_some(), "{e:?}");
        let mut buf = Vec::new();
        write_to(&mut buf, format_args!("{}-{}", 1, 2)).unwrap();
        assert_eq!(buf, b"1-2");
    }
}
