//! Shared by every integration test in this folder, each of which includes it with
//! `mod support;`: for the end-to-end tests the root check, a guard for the processes a
//! test starts, and a follower for their output lines; for the BPF_PROG_TEST_RUN tests
//! [`bpf`]. Each test uses a subset, hence `dead_code`.
#![allow(dead_code)]

pub mod bpf;
pub mod gateway;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Panics with a message naming what needs root when the test is not run as root.
pub fn require_root(what: &str) {
    if let Err(e) = xtask::setup::require_root(what) {
        panic!("{e}");
    }
}

/// A process killed (SIGKILL) and reaped when the guard goes.
pub struct Process {
    pub name: String,
    pub child: Child,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command) -> Process {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            name: name.to_string(),
            child,
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("sending {signal} to {}: {e}", self.name));
    }

    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "{} did not exit within {within:?}",
                self.name
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of a child's output, forwarded to the test's stderr with a tag. The
/// reader keeps draining after the receiver is gone, so the child never blocks.
pub fn follow(tag: impl Into<String>, output: impl Read + Send + 'static) -> Receiver<String> {
    let tag = tag.into();
    let (lines, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { return };
            eprintln!("[{tag}] {line}");
            let _ = lines.send(line);
        }
    });
    receiver
}

/// Follows a child's output (see [`follow`]) into `log`; the receiver gets one
/// `()` at the first line that contains `ready` (e.g. "gateway running").
pub fn keep_log(
    tag: impl Into<String>,
    output: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
    ready: &'static str,
) -> Receiver<()> {
    let lines = follow(tag, output);
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        for line in lines {
            if line.contains(ready)
                && let Some(ready_tx) = ready_tx.take()
            {
                let _ = ready_tx.send(());
            }
            log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    ready_rx
}

/// The first line that `matches`, waiting at most `within`; panics naming `what`.
pub fn expect_line_within(
    lines: &Receiver<String>,
    what: &str,
    within: Duration,
    matches: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if matches(&line) => return line,
            Ok(_) => {}
            Err(_) => panic!("no {what} within {within:?}"),
        }
    }
}
