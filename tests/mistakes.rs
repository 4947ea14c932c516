//! End to end: an operator's mistakes against `halod run` in the test bed
//! (issue #18): a second daemon of the same instance, a removed control
//! socket, a closed stderr, SIGHUP, a stopped daemon, and `teardown` under a
//! running daemon. None of them may take the gateway down. Needs root.
//!
//! Every test has its own test-bed prefix (`hd-m…-`), data-plane instance,
//! control socket and state file, and kills what it started.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use xtask::testbed::Testbed;

mod support;
use support::Process;
use support::gateway::{Gateway, HALOD, NODES_PORT, config_head};

const ROUTES: u16 = 4;
const BASE: u16 = 8000;
/// Generous: correctness deadlines, never performance checks.
const DEADLINE: Duration = Duration::from_secs(30);

support::gateway::bed!(
    /// The mistakes tests' gateway: 4 routes on one listener group.
    Bed
);

/// A config of instance `instance` whose socket, state file and node port are
/// its own (`name`, `port`), in `dir`.
fn config_text(bed: &Testbed, instance: &str, dir: &Path, name: &str, port: u16) -> String {
    format!(
        "{head}\
         nodes:\n  listen: {gw}:{port}\n  heartbeat_ms: 100\n  dead_after: 3\n  spares: 0\n\
         control: {{socket: {dir}/{name}.sock}}\n\
         state_file: {dir}/{name}.state.json\n",
        head = config_head(bed, instance, ROUTES, &[BASE]),
        gw = bed.gateway_internal_addr(),
        dir = dir.display(),
    )
}

impl Bed {
    /// The test bed and a config; the gateway is not started.
    fn new(prefix: &str, nodes: usize) -> Bed {
        Bed(Gateway::prepare(prefix, nodes, |bed, instance, dir| {
            config_text(bed, instance, dir, "halod", NODES_PORT)
        }))
    }

    fn start(prefix: &str, nodes: usize) -> Bed {
        let mut bed = Bed::new(prefix, nodes);
        bed.run_gateway();
        bed
    }

    /// A config of this bed's instance whose socket, state file and node
    /// port are its own (`name`, `port`).
    fn config_text(&self, name: &str, port: u16) -> String {
        config_text(&self.bed, &self.instance, &self.dir, name, port)
    }

    /// `halod run --config CONFIG` in the gateway's namespace, stderr piped.
    fn gateway_command(&self, config: &Path) -> Command {
        self.command(config)
    }

    /// Starts `halod run` and waits for "gateway running".
    fn run_gateway(&mut self) {
        self.0.run();
    }

    /// Backend plus agent in node `i`, registered.
    fn node(&self, i: usize, name: &str) -> (Process, Process) {
        let backend = self.backend(i, name, (0..ROUTES).map(|route| BASE + route));
        let (agent, _, _) = self.registered_agent(i, name);
        (agent, backend)
    }

    /// Waits until every route answers with node `name`.
    fn wait_served_by(&self, name: &str) {
        let start = Instant::now();
        loop {
            let answers: Vec<Option<String>> = (0..ROUTES)
                .map(|route| {
                    self.bed
                        .answering_node(BASE + route, Duration::from_millis(500))
                })
                .collect();
            if answers.iter().all(|a| a.as_deref() == Some(name)) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "routes answer {answers:?}, expected {name} everywhere"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn gateway_pid(&self) -> u32 {
        self.gateway.as_ref().unwrap().child.id()
    }
}

/// Waits for `child` to exit; kills it and panics after `within`.
fn wait_exit(child: &mut Child, what: &str, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {within:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn read_all(stderr: Option<ChildStderr>) -> String {
    let mut text = String::new();
    if let Some(stderr) = stderr {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}

/// Item 1: a second `halod run` of the same instance, with its own socket,
/// node port and state file, is refused before it touches the pins; the
/// first daemon's routes keep answering.
#[test]
fn a_second_daemon_of_the_same_instance_is_refused() {
    let bed = Bed::start("hd-m1-", 1);
    let _n1 = bed.node(1, "n1");
    bed.wait_served_by("n1");

    let second = bed.dir.join("second.yaml");
    std::fs::write(&second, bed.config_text("second", NODES_PORT + 1)).unwrap();
    let mut command = bed.gateway_command(&second);
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take();
    let status = wait_exit(&mut child, "the second daemon", DEADLINE);
    let said = read_all(stderr);
    assert_eq!(status.code(), Some(1), "{said}");
    let expected = format!(
        "instance \"{}\" is in use by halod pid {}, control socket {}",
        bed.instance,
        bed.gateway_pid(),
        bed.socket().display()
    );
    assert!(said.contains(&expected), "{said}");
    assert!(said.contains("one daemon per instance"), "{said}");
    assert!(!said.contains("removed the XDP program"), "{said}");
    assert!(
        !bed.dir.join("second.sock").exists(),
        "the refused daemon bound nothing"
    );
    bed.wait_served_by("n1");
    assert_eq!(bed.json("nodes")["nodes"].as_array().unwrap().len(), 1);

    // The lock file removed by hand (a clean-up of /run): the daemon takes a
    // new one, and a second daemon is still refused.
    let lock_file = Path::new("/run/halod").join(format!("{}.lock", bed.instance));
    std::fs::remove_file(&lock_file).unwrap();
    bed.wait_logged(
        "the instance lock file was removed while the daemon ran; made and took it again",
    );
    assert!(lock_file.exists());
    let mut child = bed.gateway_command(&second).spawn().unwrap();
    let stderr = child.stderr.take();
    let status = wait_exit(&mut child, "the second daemon", DEADLINE);
    let said = read_all(stderr);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains(&expected), "{said}");

    // Item 12: a burst of bad node connections is logged at most 20 times
    // per 10 s (every one is refused and counted).
    let target = std::net::SocketAddr::from((bed.bed.gateway_internal_addr(), NODES_PORT));
    let refused = xtask::testbed::run_in_netns(&bed.bed.node_ns(1), move || {
        (0..40)
            .filter(|_| {
                use std::io::{Read, Write};
                let mut stream =
                    std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
                stream.write_all(b"not a hello\n").unwrap();
                let mut reply = String::new();
                let _ = stream.read_to_string(&mut reply);
                reply.contains(r#""code":"bad_request""#)
            })
            .count()
    })
    .unwrap();
    assert_eq!(refused, 40);
    thread::sleep(Duration::from_millis(300));
    let logged = bed
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("hello refused"))
        .count();
    assert!(
        (1..=20).contains(&logged),
        "{logged} refusals logged for 40 refused connections"
    );
}

/// Items 2 and 4: the control socket removed under a running daemon comes
/// back; meanwhile `teardown` refuses, naming the daemon (it used to
/// believe the daemon was gone and detach its program). A regular file at
/// the socket's path is refused and kept.
#[test]
fn teardown_refuses_while_the_daemon_runs_even_without_its_socket() {
    let mut bed = Bed::start("hd-m2-", 1);
    let _n1 = bed.node(1, "n1");
    bed.wait_served_by("n1");

    std::fs::remove_file(bed.socket()).unwrap();
    let teardown = Command::new(HALOD)
        .args(["teardown", "--config"])
        .arg(&bed.config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&teardown.stderr).to_string();
    assert_eq!(teardown.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "a daemon is running for instance \"{}\": halod pid {}",
            bed.instance,
            bed.gateway_pid()
        )) && said.contains("; stop it first (systemctl stop halod)"),
        "{said}"
    );
    assert!(teardown.stdout.is_empty(), "nothing was detached");
    bed.wait_served_by("n1");

    // The daemon makes its socket again.
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(bed.socket()).is_err() {
        assert!(start.elapsed() < DEADLINE, "the socket did not come back");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(bed.json("status")["counts"]["nodes"], 1);
    bed.wait_logged("the control socket was removed while the daemon ran; made it again");

    // Stopped, the daemon removes its socket; a regular file put there is
    // then refused by the next start, and survives.
    let mut gateway = bed.gateway.take().unwrap();
    gateway.signal(Signal::SIGTERM);
    assert!(gateway.wait(DEADLINE).success());
    assert!(!bed.socket().exists());
    std::fs::write(bed.socket(), "operator's notes\n").unwrap();
    let mut child = bed.gateway_command(&bed.config).spawn().unwrap();
    let stderr = child.stderr.take();
    let status = wait_exit(&mut child, "the gateway", DEADLINE);
    let said = read_all(stderr);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("a regular file is at this path, not a socket"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(bed.socket()).unwrap(),
        "operator's notes\n"
    );
    std::fs::remove_file(bed.socket()).unwrap();
}

/// Item 3: a gateway whose stderr reader went away (`2>&1 | head -5`) goes
/// on logging into the void, and still stops on SIGTERM, cleanly. So does
/// an operator command whose stdout is closed.
#[test]
fn a_closed_stderr_neither_panics_nor_stops_sigterm() {
    let mut bed = Bed::new("hd-m3-", 1);
    let mut gateway = Process::spawn("gateway", bed.gateway_command(&bed.config));
    let mut stderr = BufReader::new(gateway.child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("gateway running") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the gateway exited"
        );
        eprint!("[hd-m3-gateway] {line}");
    }
    drop(stderr);
    // Log lines now meet a closed pipe: a node joins, a SIGHUP is logged.
    let _n1 = bed.node(1, "n1");
    gateway.signal(Signal::SIGHUP);
    bed.wait_served_by("n1");
    let socket = bed.socket();
    assert!(bed.json("status")["counts"]["nodes"] == 1);

    // `halod routes | head -0`: stdout closed before it writes.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let routes = Command::new(HALOD)
        .args(["routes", "--socket"])
        .arg(&socket)
        .stdout(Stdio::from(writer))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&routes.stderr);
    assert_ne!(routes.status.code(), Some(101), "{said}");
    assert!(!said.contains("panicked"), "{said}");

    gateway.signal(Signal::SIGTERM);
    let status = gateway.wait(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket was removed on the way out");
    bed.gateway = None;
}

/// Items 5 and 6: SIGHUP is logged and ignored; a stopped (SIGSTOP) daemon
/// makes operator commands time out with a message, not hang; a drain sent
/// then is carried out when the daemon resumes, as the message warns.
#[test]
fn sighup_is_ignored_and_a_stopped_daemon_times_out() {
    let bed = Bed::start("hd-m5-", 2);
    let _n1 = bed.node(1, "n1");
    let _n2 = bed.node(2, "n2");

    let gateway = bed.gateway.as_ref().unwrap();
    gateway.signal(Signal::SIGHUP);
    bed.wait_logged("SIGHUP ignored: halod does not reload its config");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(bed.json("status")["counts"]["nodes"], 2);

    gateway.signal(Signal::SIGSTOP);
    let started = Instant::now();
    let status = bed.halod(&["status", "--timeout", "1"]);
    let said = String::from_utf8_lossy(&status.stderr).to_string();
    assert_eq!(status.status.code(), Some(1), "{said}");
    assert!(started.elapsed() < Duration::from_secs(10), "{said}");
    assert!(
        said.starts_with("halod: no reply from the daemon at")
            && said.contains("within 1s (--timeout)")
            && said.contains("the request changes nothing"),
        "{said}"
    );
    let drain = bed.halod(&["drain", "n2", "--timeout", "0.5"]);
    let said = String::from_utf8_lossy(&drain.stderr).to_string();
    assert_eq!(drain.status.code(), Some(1), "{said}");
    assert!(
        said.contains(
            "the drain of n2 was sent and may still be carried out when the daemon resumes"
        ),
        "{said}"
    );
    gateway.signal(Signal::SIGCONT);
    // As the message warned: the daemon reads the drain when it resumes.
    let start = Instant::now();
    loop {
        let nodes = bed.json("nodes");
        let names: Vec<&str> = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        if names == ["n1"] {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "n2 was not drained: {nodes}");
        thread::sleep(Duration::from_millis(100));
    }
    bed.wait_served_by("n1");
    let pid = nix::unistd::Pid::from_raw(bed.gateway_pid() as i32);
    assert!(
        nix::sys::signal::kill(pid, None).is_ok(),
        "the gateway still runs"
    );
}

/// Items 7 and 8: a `hello` with the internal subnet's broadcast address or
/// the gateway's own node address is refused with `bad_request`; a state
/// file edited to hold an address a `hello` would be refused for (here the
/// VIP) stops the next start with a message, instead of routing to it.
#[test]
fn node_addresses_are_checked_in_hello_and_in_the_state_file() {
    let mut bed = Bed::start("hd-m7-", 1);
    let gateway_addr = bed.bed.gateway_internal_addr();
    for (addr, says) in [
        (
            "198.19.0.255".to_string(),
            "198.19.0.255 cannot be a node address: it is the broadcast address of 198.19.0.0/24",
        ),
        (
            gateway_addr.to_string(),
            "cannot be a node address: it is the gateway's own address",
        ),
    ] {
        let mut command = bed.bed.command(&bed.bed.node_ns(1), HALOD);
        command
            .args(["node", "--gateway"])
            .arg(format!("{gateway_addr}:{NODES_PORT}"))
            .args(["--name", "bad", "--addr", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut agent = command.spawn().unwrap();
        let stdout = agent.stdout.take().unwrap();
        let stderr = agent.stderr.take();
        let status = wait_exit(&mut agent, "the refused agent", DEADLINE);
        let said = format!(
            "{}{}",
            std::io::read_to_string(stdout).unwrap(),
            read_all(stderr)
        );
        assert_eq!(status.code(), Some(2), "{said}");
        assert!(
            said.contains("bad_request") && said.contains(says),
            "{addr}: {said}"
        );
    }
    assert!(bed.json("nodes")["nodes"].as_array().unwrap().is_empty());

    let _n1 = bed.node(1, "n1");
    bed.wait_served_by("n1");
    let state_path = bed.dir.join("halod.state.json");
    let start = Instant::now();
    while !std::fs::read_to_string(&state_path).is_ok_and(|s| s.contains(r#""name": "n1""#)) {
        assert!(start.elapsed() < DEADLINE, "n1 was never saved");
        thread::sleep(Duration::from_millis(20));
    }
    let mut gateway = bed.gateway.take().unwrap();
    gateway.signal(Signal::SIGTERM);
    assert!(gateway.wait(DEADLINE).success());
    let state = std::fs::read_to_string(&state_path).unwrap();
    let node_addr = bed.bed.node_addr(1).to_string();
    assert!(state.contains(&node_addr), "{state}");
    std::fs::write(
        &state_path,
        state.replace(&node_addr, &bed.bed.vip().to_string()),
    )
    .unwrap();
    let mut child = bed.gateway_command(&bed.config).spawn().unwrap();
    let stderr = child.stderr.take();
    let status = wait_exit(&mut child, "the gateway", DEADLINE);
    let said = read_all(stderr);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "state_file {}: node \"n1\": {} cannot be a node address (loopback or the gateway's VIP)",
            state_path.display(),
            bed.bed.vip()
        )) && said.contains("--reset"),
        "{said}"
    );
    // The refused start left the previous program forwarding to n1.
    bed.wait_served_by("n1");
}

/// Item 9: a gateway whose interface already runs an XDP program (here a
/// second instance on the first one's interfaces) says which program is in
/// the way and what to do, instead of two bare `bpf_link_create` errors; the
/// program that was there goes on forwarding.
#[test]
fn an_interface_with_another_xdp_program_is_explained() {
    let bed = Bed::start("hd-m9-", 1);
    let _n1 = bed.node(1, "n1");
    bed.wait_served_by("n1");

    let other = bed.dir.join("other.yaml");
    let text = bed.config_text("other", NODES_PORT + 1).replace(
        &format!("instance: {}", bed.instance),
        "instance: hd_m9_other",
    );
    std::fs::write(&other, text).unwrap();
    let mut child = bed.gateway_command(&other).spawn().unwrap();
    let stderr = child.stderr.take();
    let status = wait_exit(&mut child, "the second instance", DEADLINE);
    let said = read_all(stderr);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("interface ext0 already runs XDP program id ")
            && said.contains(r#""halod" (native mode); halod needs the interface to itself"#)
            && said.contains("It is a halod program: another gateway instance uses ext0"),
        "{said}"
    );
    assert!(!said.contains("bpf_link_create"), "{said}");
    // It removed its own (empty) pin directory and left nothing attached.
    assert!(!Path::new("/sys/fs/bpf/halod/hd_m9_other").exists());
    bed.wait_served_by("n1");
}

/// Item 10: the metrics endpoint serves the format the scraper asks for
/// (Prometheus text 0.0.4 unless `Accept` names OpenMetrics), which
/// `promtool check metrics` accepts, with the series in the same order at
/// every scrape.
#[test]
fn metrics_are_served_in_the_format_asked_for() {
    let promtool = Command::new("promtool").arg("--version").output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool is missing: install Debian's `prometheus` package (cargo xtask setup does)"
    );
    let mut bed = Bed::new("hd-m10-", 2);
    let metrics = format!(
        "metrics: {{listen: {}:9464}}\n",
        bed.bed.gateway_internal_addr()
    );
    let mut config = std::fs::read_to_string(&bed.config).unwrap();
    config.push_str(&metrics);
    std::fs::write(&bed.config, config).unwrap();
    bed.run_gateway();
    let _n1 = bed.node(1, "n1");
    let _n2 = bed.node(2, "n2");
    for route in 0..ROUTES {
        let _ = bed
            .bed
            .answering_node(BASE + route, Duration::from_millis(500));
    }

    let scrape = |accept: Option<&str>| -> (String, String) {
        let target = std::net::SocketAddr::from((bed.bed.gateway_internal_addr(), 9464));
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        let response = xtask::testbed::run_in_netns(&bed.bed.gateway_ns(), move || {
            use std::io::{Read, Write};
            let mut stream =
                std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
            write!(
                stream,
                "GET /metrics HTTP/1.1\r\nHost: halod\r\n{accept}\r\n"
            )
            .unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            text
        })
        .unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .unwrap()
            .to_string();
        (content_type, body.to_string())
    };

    let (content_type, text) = scrape(Some("text/plain;version=0.0.4"));
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        text.contains("# TYPE halod_route_packets_total counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && said.is_empty(),
        "promtool: {said}\n{text}"
    );

    // No Accept (curl's default is */*): the text format as well.
    assert_eq!(scrape(None).0, content_type);
    // Series order is fixed: the names of the samples, scrape after scrape.
    let names = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .collect()
    };
    for _ in 0..5 {
        assert_eq!(names(&scrape(Some("text/plain")).1), names(&text));
    }
    let routes: Vec<String> = names(&text)
        .into_iter()
        .filter(|n| n.starts_with("halod_route_packets_total"))
        .collect();
    assert_eq!(
        routes,
        (1..=ROUTES)
            .map(|r| format!("halod_route_packets_total{{route=\"{r}\"}}"))
            .collect::<Vec<_>>()
    );

    // What Prometheus asks for: OpenMetrics.
    let (content_type, text) = scrape(Some(
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ));
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        text.contains("# TYPE halod_route_packets counter"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

/// `halod ARGS` on the host (no namespace), waiting at most `within`.
fn halod_within(args: &[&str], within: Duration, uid: Option<u32>) -> (Option<i32>, String) {
    let mut command = Command::new(HALOD);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        std::os::unix::process::CommandExt::uid(&mut command, uid);
        std::os::unix::process::CommandExt::gid(&mut command, uid);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take();
    let reading = thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let status = wait_exit(&mut child, &format!("halod {}", args.join(" ")), within);
    (
        status.code(),
        format!("{}{}", reading.join().unwrap(), read_all(stderr)),
    )
}

/// Items 11 and 12: `halod run --check` reports without changing anything;
/// a VIP on int0 is refused and a VIP on no interface warned about; a FIFO
/// as config, a user without privileges, a doubled cause, and `halod node
/// --gateway` without a port each get one clear line.
#[test]
fn checks_and_messages_for_common_mistakes() {
    let mut bed = Bed::new("hd-m11-", 1);
    let config = bed.config.display().to_string();
    // In the host's namespace ext0 and int0 do not exist: --check says so.
    let (code, said) = halod_within(&["run", "--check", "--config", &config], DEADLINE, None);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("problem: config key `interfaces.external`: no interface named \"ext0\"")
            && said.contains(&format!(
                "ok: instance \"{}\": no daemon of it runs",
                bed.instance
            ))
            && said.contains("; nothing was changed"),
        "{said}"
    );
    // In the gateway's namespace every check passes.
    let check_in_gateway = |bed: &Bed, config: &Path| -> (Option<i32>, String) {
        let mut command = bed.bed.command(&bed.bed.gateway_ns(), HALOD);
        command
            .args(["run", "--check", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped());
        let output = command.output().unwrap();
        (
            output.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (code, said) = check_in_gateway(&bed, &bed.config);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("ok: interfaces ext0 and int0 exist"),
        "{said}"
    );
    assert!(!bed.socket().exists(), "--check bound no socket");
    assert!(!Path::new("/sys/fs/bpf/halod").join(&bed.instance).exists());
    assert!(!bed.dir.join("halod.state.json").exists());

    // The VIP on int0: refused by a start, a problem for --check.
    let text = std::fs::read_to_string(&bed.config).unwrap();
    let vip_line = format!("vip: {}", bed.bed.vip());
    let on_int0 = bed.dir.join("vip-on-int0.yaml");
    std::fs::write(
        &on_int0,
        text.replace(
            &vip_line,
            &format!("vip: {}", bed.bed.gateway_internal_addr()),
        ),
    )
    .unwrap();
    let mut child = bed.gateway_command(&on_int0).spawn().unwrap();
    let stderr = child.stderr.take();
    let status = wait_exit(&mut child, "the gateway", DEADLINE);
    let said = read_all(stderr);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("config key `vip`: 198.19.0.1 is the address of int0 (interfaces.internal"),
        "{said}"
    );
    let (code, said) = check_in_gateway(&bed, &on_int0);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("problem: config key `vip`"), "{said}");
    // A VIP on no interface: a warning, the start goes ahead.
    let nowhere = bed.dir.join("vip-nowhere.yaml");
    std::fs::write(&nowhere, text.replace(&vip_line, "vip: 198.18.0.99")).unwrap();
    let (code, said) = check_in_gateway(&bed, &nowhere);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("warning: vip 198.18.0.99 is on no interface of this host"),
        "{said}"
    );

    // A FIFO as config: refused at once instead of waiting for a writer.
    let fifo = bed.dir.join("fifo.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let (code, said) = halod_within(
        &["run", "--config", &fifo.display().to_string()],
        Duration::from_secs(10),
        None,
    );
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("is a FIFO, not a regular file"), "{said}");

    // No such config: the cause once.
    let (code, said) = halod_within(
        &["run", "--config", "/nonexistent/halod.yaml"],
        Duration::from_secs(10),
        None,
    );
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(
        said,
        "halod: error: cannot read config file /nonexistent/halod.yaml: No such file or directory (os error 2)\n"
    );

    // Not root: told so, before any file it cannot write.
    let (code, said) = halod_within(&["run", "--config", &config], DEADLINE, Some(65534));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.starts_with("halod: error: halod run needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"),
        "{said}"
    );

    // `halod node --gateway` without a port: a usage error, exit 2.
    let (code, said) = halod_within(
        &["node", "--gateway", "198.19.0.1", "--name", "n1"],
        Duration::from_secs(10),
        None,
    );
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("\"198.19.0.1\" has no port"), "{said}");

    // With the daemon running, --check says so and still changes nothing.
    bed.run_gateway();
    let (code, said) = check_in_gateway(&bed, &bed.config);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!(
            "warning: instance \"{}\" is in use by halod pid {}",
            bed.instance,
            bed.gateway_pid()
        )) && said.contains("ok: ext0 runs this instance's XDP program"),
        "{said}"
    );
    assert_eq!(bed.json("status")["instance"], bed.instance.as_str());
    // Item 12: status says how the state file's writes go: the first table
    // is pending for a moment after the start, then written.
    let start = Instant::now();
    loop {
        let status = bed.json("status");
        assert_eq!(status["state_file"]["write_failures"], 0, "{status}");
        if status["state_file"]["up_to_date"] == true {
            assert!(status["state_file"]["written_unix_ms"].is_u64(), "{status}");
            break;
        }
        assert!(start.elapsed() < DEADLINE, "{status}");
        thread::sleep(Duration::from_millis(50));
    }
    let human = String::from_utf8(bed.halod(&["status"]).stdout).unwrap();
    assert!(
        human.contains("State saved:   last written ")
            && human.contains("ago, holds the current table"),
        "{human}"
    );
}
