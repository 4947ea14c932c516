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
    write_out(io::stdout().lock(), text)
}

fn write_out(mut out: impl Write, text: &str) -> io::Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// An error and its causes on one line, `outer: inner: innermost`, like
/// anyhow's `{:#}`, but a cause whose text is already in the line is left
/// out: many errors name their source in their own message too, which
/// printed `No such file or directory (os error 2): No such file or
/// directory (os error 2)`.
pub fn error_chain<'a>(
    causes: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut line = String::new();
    for cause in causes {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// [`error_chain`] of `error` and its `source()`s.
pub fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    error_chain(std::iter::successors(Some(error), |error| error.source()))
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

    /// Points this process's fd 2 at a pipe whose reader is closed
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

    #[derive(Debug, thiserror::Error)]
    enum Failure {
        #[error("reading /etc/halod/x.yaml: {0}")]
        Read(#[source] io::Error),
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let read = Failure::Read(io::Error::from_raw_os_error(libc::ENOENT));
        let error = anyhow::Error::new(read).context("loading the config");
        assert_eq!(
            format!("{error:#}"),
            "loading the config: reading /etc/halod/x.yaml: No such file or directory (os error 2): \
             No such file or directory (os error 2)",
            "what anyhow alone prints"
        );
        assert_eq!(
            error_chain(error.chain()),
            "loading the config: reading /etc/halod/x.yaml: No such file or directory (os error 2)"
        );
        // A source that adds something is kept.
        let syscall = io::Error::other(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: io::Error::from_raw_os_error(libc::EBUSY),
        });
        assert_eq!(
            causes(&syscall),
            "`bpf_link_create` failed: Device or resource busy (os error 16)"
        );
    }

    #[test]
    fn a_closed_stdout_is_an_error_not_a_panic() {
        // Not this process's fd 1: the test harness prints its results there.
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let error = write_out(std::fs::File::from(writer), "routes\n").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }
}
