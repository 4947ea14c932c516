//! Running external programs (ip, ethtool, cargo, apt-get) so that every failure names the
//! exact command line and shows what the program said.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// The command line as a user would type it, for error messages and "run by hand" hints.
pub fn describe(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` to completion with its output captured; fails unless it exits with status 0.
/// Returns standard output.
pub fn run(cmd: &mut Command) -> Result<String> {
    let output = output(cmd)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd` with output captured and returns it whatever the exit status, failing only when
/// the program cannot be started.
pub fn output_any_status(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", describe(cmd)))
}

/// Like [`run`], but returns the whole [`Output`].
pub fn output(cmd: &mut Command) -> Result<Output> {
    let output = output_any_status(cmd)?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            output.status,
            tail(&output, 20)
        );
    }
    Ok(output)
}

/// Runs `cmd` with the terminal as its standard output and error; fails unless it exits 0.
pub fn run_visible(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// The last `lines` lines of what a program wrote to standard error, or to standard output when
/// it wrote nothing to standard error.
pub fn tail(output: &Output, lines: usize) -> String {
    let text = if output.stderr.iter().all(u8::is_ascii_whitespace) {
        String::from_utf8_lossy(&output.stdout)
    } else {
        String::from_utf8_lossy(&output.stderr)
    };
    let all: Vec<&str> = text.trim_end().lines().collect();
    let start = all.len().saturating_sub(lines);
    let shown = all[start..].join("\n");
    if shown.is_empty() {
        "no output".to_string()
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_only_what_a_shell_would_split() {
        let mut cmd = Command::new("ip");
        cmd.args([
            "-n",
            "hd-gateway",
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            "ext0",
        ]);
        assert_eq!(
            describe(&cmd),
            "ip -n hd-gateway addr add 198.18.0.1/24 dev ext0"
        );
        let mut cmd = Command::new("socat");
        cmd.arg("EXEC:echo node1")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22");
        assert_eq!(
            describe(&cmd),
            "LLVM_PREFIX=/usr/lib/llvm-22 socat 'EXEC:echo node1'"
        );
    }

    #[test]
    fn run_reports_the_command_and_its_error_output() {
        let err = run(Command::new("sh").args(["-c", "echo broken >&2; exit 3"])).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("`sh -c 'echo broken >&2; exit 3'` failed"),
            "{text}"
        );
        assert!(text.contains("broken"), "{text}");
    }

    #[test]
    fn run_returns_standard_output() {
        let out = run(Command::new("sh").args(["-c", "echo hello"])).unwrap();
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn a_missing_program_is_named() {
        let err = run(&mut Command::new("no-such-program-hd")).unwrap_err();
        assert!(format!("{err:#}").contains("could not start `no-such-program-hd`"));
    }
}
