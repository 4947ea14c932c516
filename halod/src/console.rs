//! Writing to stderr and stdout without ever panicking.
//!
//! `eprintln!` and `println!` panic when the stream is closed (EPIPE: run
//! as `halod run 2>&1 | head -5`, or under a supervisor whose log reader
//! died), and so does tracing-subscriber's own report of a failed write. A
//! panic in the task that waits for signals left the daemon deaf to SIGTERM.
//! Everything halod prints goes through here instead: a line that cannot be
//! written is dropped, the process goes on.
//!
//! The node agent and the daemon both use [`stderr_line!`](crate::stderr_line)
//! for their own lines and [`Stderr`] as the tracing writer.

use std::io::{self, Write};

/// stderr for tracing-subscriber (`with_writer(|| Stderr)`): a failed write
/// counts as done, so the subscriber never reports (and panics on) it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().lock().flush();
        Ok(())
    }
}

/// Writes `line` and a newline to stderr; a closed stderr is ignored.
pub fn stderr_line(line: std::fmt::Arguments<'_>) {
    let mut stderr = io::stderr().lock();
    let _ = stderr.write_fmt(line);
    let _ = stderr.write_all(b"\n");
}

/// Writes `text` to stdout as it is. An error (EPIPE when the reader went
/// away, as with `| head -1`) is returned for the caller to stop printing.
pub fn stdout(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// `eprintln!` that never panics: `halod::stderr_line!("halod: {err:#}")`.
#[macro_export]
macro_rules! stderr_line {
    ($($argument:tt)*) => {
        $crate::console::stderr_line(::std::format_args!($($argument)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points this process's fd 2 (or 1) at a pipe whose reader is closed
    /// while `body` runs, then puts the old one back.
    fn with_closed(fd: i32, body: impl FnOnce()) {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let saved = unsafe { libc::dup(fd) };
        assert!(saved >= 0);
        assert!(unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&writer), fd) } >= 0);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        unsafe {
            libc::dup2(saved, fd);
            libc::close(saved);
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn a_closed_stderr_does_not_panic() {
        with_closed(2, || {
            // What `eprintln!` would have panicked on.
            assert!(io::stderr().write_all(b"x\n").is_err());
            stderr_line(format_args!("halod: this line goes nowhere"));
            crate::stderr_line!("halod: nor {}", "this one");
            assert_eq!(Stderr.write(b"a tracing line\n").unwrap(), 15);
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| Stderr)
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::warn!("logged into a closed pipe");
            });
        });
    }

    #[test]
    fn a_closed_stdout_is_an_error_not_a_panic() {
        with_closed(1, || {
            let error = stdout("routes\n").unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
        });
    }
}
