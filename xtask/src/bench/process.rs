//! Processes the benchmarks start inside the test bed (halod, agents, haproxy, iperf3):
//! their standard error is read line by line so a benchmark can wait for a message, and
//! they are stopped when dropped (SIGTERM, then SIGKILL).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::command::describe;

pub struct Process {
    child: Child,
    name: String,
    lines: Receiver<String>,
    /// Everything read so far, for error messages.
    seen: Vec<String>,
}

impl Process {
    /// Starts `cmd` with standard error (and output, when `stdout` is false) captured.
    pub fn start(name: &str, cmd: &mut Command) -> Result<Process> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", describe(cmd)))?;
        let (tx, lines) = mpsc::channel();
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Process {
            child,
            name: name.to_string(),
            lines,
            seen: Vec::new(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until a line containing `text` appears; fails after `timeout` or when the
    /// process exits first, showing what it said.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line.clone());
                    if found {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} did not say {text:?} within {timeout:?}; it said:\n{}",
                    self.name,
                    self.tail()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} exited ({status:?}) before saying {text:?}; it said:\n{}",
                        self.name,
                        self.tail()
                    )
                }
            }
        }
    }

    /// Lines read since the last call (without waiting).
    pub fn drain(&mut self) -> Vec<String> {
        let new: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(new.iter().cloned());
        new
    }

    fn tail(&self) -> String {
        let start = self.seen.len().saturating_sub(15);
        self.seen[start..].join("\n")
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid()), signal)
            .with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL (also what dropping the guard does).
    fn stop_now(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGCONT);
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop_now();
    }
}
