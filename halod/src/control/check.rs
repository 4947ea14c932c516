//! `halod run --check`: every check a start makes, against the config and
//! this host, reported one line each, with nothing attached, bound for
//! longer than the check, or written. For a config change before a restart,
//! or a new host before the first start.

use std::os::unix::fs::FileTypeExt;
use std::process::ExitCode;

use super::policy::NodePolicy;
use super::state::SavedState;
use super::{lock, privileges};
use crate::config::Config;
use crate::dataplane;

/// What one check found.
enum Finding {
    Fine(String),
    /// The start would go ahead, but probably not as meant.
    Warning(String),
    /// The start would fail.
    Problem(String),
}

use Finding::{Fine, Problem, Warning};

/// Runs the checks and prints them; exit status 1 when a start would fail.
pub fn run(config: &Config, reset: bool) -> ExitCode {
    let findings = check(config, reset);
    let mut problems = 0;
    let mut warnings = 0;
    let mut text = String::new();
    for finding in &findings {
        let (tag, line) = match finding {
            Fine(line) => ("ok", line),
            Warning(line) => {
                warnings += 1;
                ("warning", line)
            }
            Problem(line) => {
                problems += 1;
                ("problem", line)
            }
        };
        text.push_str(&format!("{tag}: {line}\n"));
    }
    text.push_str(&format!(
        "halod run --check: {problems} problem(s), {warnings} warning(s); nothing was changed\n"
    ));
    let _ = crate::console::stdout(&text);
    if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check(config: &Config, reset: bool) -> Vec<Finding> {
    let mut findings = vec![Fine(format!(
        "config: instance {:?}, vip {}, {} routes, listeners at {:?}, nodes.listen {}",
        config.instance,
        config.vip,
        config.routes,
        config.base_ports(),
        config.nodes.listen
    ))];
    findings.push(match privileges::missing("halod run") {
        Ok(()) => Fine("privileges: enough to load and attach XDP programs".into()),
        Err(message) => Problem(message),
    });
    findings.push(match config.check_system() {
        Ok(_) => Fine(format!(
            "interfaces {} and {} exist{}",
            config.interfaces.external,
            config.interfaces.internal,
            if config.nodes.token_file.is_some() {
                "; the token file reads"
            } else {
                ""
            }
        )),
        Err(error) => Problem(error.to_string()),
    });
    if let Some(warning) = config.vip_warning() {
        findings.push(Warning(warning));
    }
    if let Err(error) = config.control_group() {
        findings.push(Problem(error.to_string()));
    }
    findings.push(match dataplane::bpffs_problem() {
        None => Fine("bpffs is mounted on /sys/fs/bpf".into()),
        Some(problem) => Problem(problem),
    });

    let holder = format!("halod run --check (pid {})", std::process::id());
    let running = match lock::InstanceLock::acquire(&config.instance, &holder) {
        Ok(_released_at_once) => {
            findings.push(Fine(format!(
                "instance {:?}: no daemon of it runs",
                config.instance
            )));
            false
        }
        Err(lock::LockError::Held { holder, .. }) => {
            findings.push(Warning(format!(
                "instance {:?} is in use by {holder}: a start now is refused; stop that daemon first \
                 (the checks below that it affects say so)",
                config.instance
            )));
            true
        }
        Err(error) => {
            findings.push(Problem(error.to_string()));
            false
        }
    };

    let pins = std::path::Path::new(dataplane::PIN_ROOT).join(&config.instance);
    let pinned = pins.exists();
    let policy = NodePolicy::of(config);
    let state_path = config.state_file();
    let saved = if reset {
        findings.push(Fine(format!(
            "state_file {}: ignored (--reset); the table starts empty",
            state_path.display()
        )));
        None
    } else {
        match SavedState::load(&state_path) {
            Ok(None) => {
                findings.push(Fine(format!(
                    "state_file {}: none; the table starts empty",
                    state_path.display()
                )));
                None
            }
            Ok(Some(saved)) => {
                let checked = saved
                    .check_addresses(&policy, &state_path)
                    .and_then(|()| saved.cluster(config, &state_path).map(drop));
                findings.push(match checked {
                    Ok(()) => Fine(format!(
                        "state_file {}: its table is taken over ({} nodes)",
                        state_path.display(),
                        saved.nodes().count()
                    )),
                    Err(error) => Problem(crate::console::error_chain(error.chain())),
                });
                Some(saved)
            }
            Err(error) => {
                findings.push(Problem(crate::console::error_chain(error.chain())));
                None
            }
        }
    };
    if pinned {
        findings.push(Fine(format!(
            "{} holds a data plane pinned by an earlier daemon: {}",
            pins.display(),
            if running {
                "the running daemon's"
            } else if saved.is_some() {
                "it is adopted (forwarding goes on)"
            } else {
                "without a saved table it is removed and attached anew"
            }
        )));
    }

    let mut interfaces = vec![config.interfaces.external.clone()];
    if config.interfaces.internal != config.interfaces.external {
        interfaces.push(config.interfaces.internal.clone());
    }
    for interface in interfaces {
        let Ok(index) = nix::net::if_::if_nametoindex(interface.as_str()) else {
            continue;
        };
        match dataplane::attached::attached_program(index) {
            Ok(None) => findings.push(Fine(format!("{interface} runs no XDP program yet"))),
            Ok(Some(program)) if pinned && program.name.as_deref() == Some("halod") => {
                findings.push(Fine(format!(
                    "{interface} runs this instance's XDP program (id {})",
                    program.id
                )));
            }
            Ok(Some(program)) => findings.push(Problem(
                dataplane::DataplaneError::Occupied { interface, program }.to_string(),
            )),
            Err(error) => findings.push(Warning(format!(
                "{interface}: cannot ask which XDP program it runs: {error}"
            ))),
        }
    }

    let socket = &config.control.socket;
    findings.push(match std::fs::symlink_metadata(socket) {
        Err(_) => Fine(format!("control.socket {}: free", socket.display())),
        Ok(metadata) if !metadata.file_type().is_socket() => Problem(format!(
            "control.socket {}: something that is not a socket is at this path; move it away \
             or set control.socket to another path",
            socket.display()
        )),
        Ok(_) if std::os::unix::net::UnixStream::connect(socket).is_ok() => Warning(format!(
            "control.socket {}: a daemon answers on it{}",
            socket.display(),
            if running {
                ""
            } else {
                " (of another instance: give this one its own control.socket)"
            }
        )),
        Ok(_) => Fine(format!(
            "control.socket {}: a stale socket, replaced at start",
            socket.display()
        )),
    });

    let mut listens = vec![("nodes.listen", config.nodes.listen)];
    if let Some(listen) = config.metrics.listen {
        listens.push(("metrics.listen", listen));
    }
    for (key, listen) in listens {
        findings.push(match std::net::TcpListener::bind(listen) {
            Ok(_closed_at_once) => Fine(format!("{key} {listen}: can be bound")),
            Err(error) if running && error.kind() == std::io::ErrorKind::AddrInUse => Warning(
                format!("{key} {listen}: in use (by the running daemon, presumably)"),
            ),
            Err(error) => Problem(format!(
                "{key}: cannot listen on {listen}: {error} (is the address on this host, the port free?)"
            )),
        });
    }
    findings
}
