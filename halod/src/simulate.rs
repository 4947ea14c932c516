//! `halod simulate`: apply a sequence of joins, failures and leaves to an
//! empty cluster and show the resulting route table, without touching any
//! gateway. Operators use it to see what a change would do before making it.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::api::StatsReply;
use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::routing::{Cluster, ClusterConfig, Event, ParseEventError, Plan, Route};

/// Exit status for bad input (options, events, or an event the cluster refuses).
const USAGE_ERROR: u8 = 2;

#[derive(clap::Args, Debug)]
#[command(after_help = "Example: halod simulate --routes 24 join:a join:b join:c fail:b")]
pub struct SimulateArgs {
    /// Number of routes N (1..=65535), as `routes:` in the gateway config.
    #[arg(long)]
    pub routes: u32,
    /// Spares to keep waiting (`spares:` in the config).
    #[arg(long, default_value_t = 0)]
    pub spares: u32,
    /// Most active nodes, 1..=routes (`max_active:`; default: routes).
    #[arg(long)]
    pub max_active: Option<u32>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Established connections per route, to show how many clients each
    /// event touches: a file (`{"routes":{"1":120,"2":80}}`, or what `halod
    /// stats --json` prints) or `live` (the running daemon's estimates, asked
    /// through --socket).
    #[arg(long, value_name = "FILE|live")]
    pub connections: Option<String>,
    /// The daemon's control socket, for `--connections live`.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// Events applied in order: join:NAME, fail:NAME or leave:NAME.
    #[arg(value_name = "EVENT", value_parser = parse_event)]
    pub events: Vec<Event>,
}

fn parse_event(token: &str) -> Result<Event, ParseEventError> {
    token.parse()
}

pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let config = ClusterConfig {
        routes: args.routes,
        spares: args.spares,
        max_active: args.max_active,
    };
    let mut cluster = match Cluster::new(config) {
        Ok(cluster) => cluster,
        Err(err) => return Ok(usage_error(&format!("{err}; see `halod simulate --help`"))),
    };
    let counts = match &args.connections {
        None => None,
        Some(source) => match load_connections(source, &args.socket, cluster.routes()) {
            Ok(counts) => Some(counts),
            Err(message) => return Ok(usage_error(&format!("--connections {source}: {message}"))),
        },
    };
    let mut moved = Vec::with_capacity(args.events.len());
    let mut touched = Vec::with_capacity(args.events.len());
    for (index, event) in args.events.iter().enumerate() {
        match cluster.apply(event.clone()) {
            Ok(plan) => {
                moved.push(plan.moves.len());
                if let Some(counts) = &counts {
                    touched.push(Touched::of(&plan, counts));
                }
            }
            Err(err) => {
                return Ok(usage_error(&format!(
                    "event {} '{event}' cannot be applied: {err}",
                    index + 1
                )));
            }
        }
    }
    let output = if args.json {
        let mut text = serde_json::to_string(&Summary {
            active: cluster.active(),
            spares: cluster.spares(),
            routes: RouteNodes(&cluster),
            moved: &moved,
            connections: counts.as_ref().map(|_| touched.as_slice()),
        })
        .context("encoding the simulation result as JSON")?;
        text.push('\n');
        text
    } else {
        let mut text = render_tables(&cluster, &args.events, &moved);
        if let Some(counts) = &counts {
            text.push_str(&render_touched(counts, &args.events, &touched));
        }
        text
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the simulation result to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn usage_error(message: &str) -> ExitCode {
    crate::stderr_line!("halod: error: {message}");
    ExitCode::from(USAGE_ERROR)
}

/// The `--json` object; fields in the documented order.
#[derive(Serialize)]
struct Summary<'a> {
    active: &'a [String],
    spares: Vec<&'a str>,
    routes: RouteNodes<'a>,
    moved: &'a [usize],
    /// Per event, with `--connections`: the connections its moves touch.
    #[serde(skip_serializing_if = "Option::is_none")]
    connections: Option<&'a [Touched]>,
}

/// Established connections per route (index `route - 1`), from
/// `--connections`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConnections {
    /// Where they came from, for the output.
    pub source: String,
    pub routes: Vec<u64>,
}

impl RouteConnections {
    fn of(&self, route: Route) -> u64 {
        self.routes
            .get(usize::from(route) - 1)
            .copied()
            .unwrap_or(0)
    }
}

/// The connections one event's moves touch: those of routes that move away
/// from a node still alive drain (they keep reaching it for `nodes.drain_ms`,
/// then close when it lets them go), those of a failed node's routes are
/// reset (their node is gone; the dead-node flush tells their clients).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Touched {
    pub drained: u64,
    pub reset: u64,
}

impl Touched {
    fn of(plan: &Plan, counts: &RouteConnections) -> Touched {
        let draining: HashSet<Route> = plan.drains.iter().map(|(route, _)| *route).collect();
        let mut touched = Touched::default();
        for change in &plan.moves {
            let count = counts.of(change.route);
            if draining.contains(&change.route) {
                touched.drained += count;
            } else if change.from.is_some() {
                touched.reset += count;
            }
            // A route that had no node has no connections to move.
        }
        touched
    }
}

/// Reads `--connections`: a file or `live`.
fn load_connections(
    source: &str,
    socket: &std::path::Path,
    routes: Route,
) -> Result<RouteConnections, String> {
    let counts = if source == "live" {
        let stats = crate::operator::ask_stats(socket)?;
        from_stats(&stats)?
    } else {
        let text = std::fs::read_to_string(source)
            .map_err(|error| format!("cannot read the file: {error}"))?;
        parse_connections(&text)?
    };
    let mut per_route = vec![0u64; usize::from(routes)];
    for (route, count) in counts {
        if route == 0 || route > routes {
            return Err(format!(
                "route {route} is outside 1..={routes} (--routes): the counts are of another cluster"
            ));
        }
        per_route[usize::from(route) - 1] = count;
    }
    let source = if source == "live" {
        format!("the daemon at {}", socket.display())
    } else {
        source.to_string()
    };
    Ok(RouteConnections {
        source,
        routes: per_route,
    })
}

/// The per-route counts of a `--connections` file: `{"routes":{"1":120}}`,
/// or `halod stats --json`.
pub fn parse_connections(text: &str) -> Result<BTreeMap<Route, u64>, String> {
    #[derive(serde::Deserialize)]
    struct Plain {
        routes: BTreeMap<String, u64>,
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|error| {
        format!("not JSON ({error}); give {{\"routes\":{{\"1\":120,...}}}} or what `halod stats --json` prints")
    })?;
    if value.get("routes").is_some_and(serde_json::Value::is_array) {
        let stats: StatsReply = serde_json::from_value(value)
            .map_err(|error| format!("not the JSON of `halod stats --json`: {error}"))?;
        return from_stats(&stats);
    }
    let plain: Plain = serde_json::from_value(value).map_err(|error| {
        format!("expected {{\"routes\":{{\"ROUTE\":CONNECTIONS,...}}}} with counts of 0 or more: {error}")
    })?;
    plain
        .routes
        .into_iter()
        .map(|(route, count)| {
            route
                .parse::<Route>()
                .map(|route| (route, count))
                .map_err(|_| format!("{route:?} is not a route number (1..=65535)"))
        })
        .collect()
}

/// The per-route estimates of a `stats` reply; an error when it has none.
fn from_stats(stats: &StatsReply) -> Result<BTreeMap<Route, u64>, String> {
    if !stats.connections_recorded {
        return Err(
            "the stats hold no connection estimates: the gateway records connections \
                    only with nodes.flush_pps above 0 (and from this version on)"
                .to_string(),
        );
    }
    Ok(stats
        .routes
        .iter()
        .map(|route| (route.route, route.connections.unwrap_or(0)))
        .collect())
}

/// The events table's connection part, after the tables.
fn render_touched(counts: &RouteConnections, events: &[Event], touched: &[Touched]) -> String {
    let mut out = String::new();
    let total: u64 = counts.routes.iter().sum();
    let _ = writeln!(
        out,
        "\nConnections: {total} established (from {}), per route where they are now",
        counts.source
    );
    if !events.is_empty() {
        let rows: Vec<Vec<String>> = events
            .iter()
            .zip(touched)
            .enumerate()
            .map(|(index, (event, touched))| {
                vec![
                    (index + 1).to_string(),
                    event.to_string(),
                    touched.drained.to_string(),
                    touched.reset.to_string(),
                ]
            })
            .collect();
        write_table(&mut out, &["#", "EVENT", "DRAINED", "RESET"], &rows);
        out.push_str(
            "DRAINED: connections of routes that move away from a live node: they keep \
             reaching it for nodes.drain_ms, then close.\nRESET: connections of a failed \
             node's routes: their clients reconnect.\n",
        );
    }
    out
}

/// `{"1": "node", "2": "node", ...}` in route order; `{}` with no node active.
struct RouteNodes<'a>(&'a Cluster);

impl Serialize for RouteNodes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let cluster = self.0;
        let mapped = if cluster.active().is_empty() {
            0
        } else {
            cluster.routes()
        };
        let mut map = serializer.serialize_map(Some(usize::from(mapped)))?;
        for route in 1..=mapped {
            if let Some(node) = cluster.node_of_route(route) {
                map.serialize_entry(&route.to_string(), node)?;
            }
        }
        map.end()
    }
}

/// Consecutive routes served by the same slot, as `(first, last, slot)`.
fn route_runs(cluster: &Cluster) -> Vec<(Route, Route, u16)> {
    let mut runs: Vec<(Route, Route, u16)> = Vec::new();
    for route in 1..=cluster.routes() {
        let Some(slot) = cluster.slot_of_route(route) else {
            continue;
        };
        match runs.last_mut() {
            Some((_, last, run_slot)) if *run_slot == slot && *last + 1 == route => *last = route,
            _ => runs.push((route, route, slot)),
        }
    }
    runs
}

/// Left-aligned columns, two spaces apart.
fn write_table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, width) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

fn render_tables(cluster: &Cluster, events: &[Event], moved: &[usize]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} routes, {} active, {} spare",
        cluster.routes(),
        cluster.active().len(),
        cluster.spares().len()
    );
    out.push('\n');
    if cluster.active().is_empty() {
        out.push_str("No node is active: no route is mapped.\n");
    } else {
        let rows: Vec<Vec<String>> = route_runs(cluster)
            .into_iter()
            .map(|(first, last, slot)| {
                let routes = if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                };
                let node = cluster.active()[usize::from(slot) - 1].clone();
                vec![routes, slot.to_string(), node]
            })
            .collect();
        write_table(&mut out, &["ROUTES", "SLOT", "NODE"], &rows);
    }

    out.push('\n');
    let mut rows: Vec<Vec<String>> = cluster
        .active()
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let slot = index as u16 + 1;
            vec![
                name.clone(),
                "active".into(),
                slot.to_string(),
                cluster.routes_of_slot(slot).len().to_string(),
            ]
        })
        .collect();
    rows.extend(
        cluster
            .spares()
            .into_iter()
            .map(|name| vec![name.to_owned(), "spare".into(), "-".into(), "0".into()]),
    );
    if rows.is_empty() {
        out.push_str("No node is registered.\n");
    } else {
        write_table(&mut out, &["NODE", "ROLE", "SLOT", "ROUTES"], &rows);
    }

    if !events.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = events
            .iter()
            .zip(moved)
            .enumerate()
            .map(|(index, (event, moved))| {
                vec![
                    (index + 1).to_string(),
                    event.to_string(),
                    moved.to_string(),
                ]
            })
            .collect();
        write_table(&mut out, &["#", "EVENT", "MOVED"], &rows);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulate(routes: u32, spares: u32, events: &[&str]) -> Cluster {
        let mut cluster = Cluster::new(ClusterConfig {
            routes,
            spares,
            max_active: None,
        })
        .unwrap();
        for event in events {
            cluster.apply(event.parse().unwrap()).unwrap();
        }
        cluster
    }

    #[test]
    fn json_routes_in_route_order() {
        let cluster = simulate(12, 0, &["join:a", "join:b"]);
        let json = serde_json::to_string(&RouteNodes(&cluster)).unwrap();
        assert!(json.starts_with(r#"{"1":"a","2":"a","#), "{json}");
        assert!(json.ends_with(r#""11":"b","12":"b"}"#), "{json}");
        let empty = simulate(12, 0, &["join:a", "fail:a"]);
        assert_eq!(serde_json::to_string(&RouteNodes(&empty)).unwrap(), "{}");
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn parse(argv: &[&str]) -> Result<SimulateArgs, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("simulate").chain(argv.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn bad_event_token_is_a_usage_error_naming_it() {
        let err = parse(&["--routes", "24", "join:a", "jion:b"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.contains("invalid event 'jion:b'"), "{text}");
        let err = parse(&["--routes", "24", "leave:"]).unwrap_err();
        assert!(err.to_string().contains("'leave:'"), "{err}");
        let err = parse(&["--routes", "many"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("'many'"), "{err}");
    }

    #[test]
    fn refused_events_and_configs_exit_2() {
        let args = parse(&["--routes", "24", "join:a", "fail:b"]).unwrap();
        assert_eq!(run(args).unwrap(), ExitCode::from(USAGE_ERROR));
        let args = parse(&["--routes", "24", "join:a", "join:a"]).unwrap();
        assert_eq!(run(args).unwrap(), ExitCode::from(USAGE_ERROR));
        let args = parse(&["--routes", "70000", "join:a"]).unwrap();
        assert_eq!(run(args).unwrap(), ExitCode::from(USAGE_ERROR));
        let args = parse(&["--routes", "4", "--max-active", "5"]).unwrap();
        assert_eq!(run(args).unwrap(), ExitCode::from(USAGE_ERROR));
    }

    #[test]
    fn json_summary_of_worked_example() {
        let cluster = simulate(24, 0, &["join:a", "join:b", "join:c"]);
        let json = serde_json::to_value(Summary {
            active: cluster.active(),
            spares: cluster.spares(),
            routes: RouteNodes(&cluster),
            moved: &[24, 12, 8],
            connections: None,
        })
        .unwrap();
        let row = "1 1 1 1 1 1 1 1 3 3 3 3 2 2 2 2 2 2 2 2 3 3 3 3";
        let names = ["a", "b", "c"];
        let mut routes = serde_json::Map::new();
        for (route, slot) in row.split_whitespace().enumerate() {
            let slot: usize = slot.parse().unwrap();
            routes.insert((route + 1).to_string(), names[slot - 1].into());
        }
        assert_eq!(
            json,
            serde_json::json!({"active": names, "spares": [], "routes": routes, "moved": [24, 12, 8]})
        );
    }

    fn run_with(events: &[&str], file: &std::path::Path) -> (Vec<Touched>, String) {
        let counts =
            load_connections(file.to_str().unwrap(), std::path::Path::new("/none"), 24).unwrap();
        let mut cluster = Cluster::new(ClusterConfig {
            routes: 24,
            spares: 0,
            max_active: None,
        })
        .unwrap();
        let events: Vec<Event> = events.iter().map(|e| e.parse().unwrap()).collect();
        let touched: Vec<Touched> = events
            .iter()
            .map(|event| Touched::of(&cluster.apply(event.clone()).unwrap(), &counts))
            .collect();
        let text = render_touched(&counts, &events, &touched);
        (touched, text)
    }

    fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("halod-sim-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn connections_file_counts_what_each_event_touches() {
        // 10 connections on every route, 1000 on route 13 (c's after join:c).
        let mut routes = serde_json::Map::new();
        for route in 1..=24 {
            routes.insert(
                route.to_string(),
                (if route == 13 { 1000 } else { 10 }).into(),
            );
        }
        let file = temp_file(
            "plain.json",
            &serde_json::json!({ "routes": routes }).to_string(),
        );
        let (touched, text) = run_with(&["join:a", "join:b", "join:c", "fail:c", "leave:b"], &file);
        // join:a takes unserved routes: nothing to move; join:b takes 12 of
        // a's (route 13 among them), which drain; join:c takes 8 (4 of a's,
        // 4 of b's), fail:c resets them; leave:b drains b's 12.
        let drained = |drained| Touched { drained, reset: 0 };
        assert_eq!(
            touched,
            [
                Touched::default(),
                drained(1110),
                drained(80),
                Touched {
                    drained: 0,
                    reset: 80
                },
                drained(1110),
            ]
        );
        assert!(
            text.contains("Connections: 1230 established (from "),
            "{text}"
        );
        assert!(text.contains("4  fail:c   0        80\n"), "{text}");
        assert!(text.contains("DRAINED: "), "{text}");
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn connections_file_may_be_the_stats_json() {
        let stats = r#"{"routes":[{"route":1,"node":"a","packets":5,"bytes":9,"connections":7},
            {"route":2,"node":"a","packets":5,"bytes":9,"connections":3}],
            "nodes":[],"reasons":{},"connections_recorded":true}"#;
        let counts = parse_connections(stats).unwrap();
        assert_eq!(counts, BTreeMap::from([(1, 7), (2, 3)]));
        let off =
            r#"{"routes":[{"route":1,"node":"a","packets":5,"bytes":9}],"nodes":[],"reasons":{}}"#;
        let error = parse_connections(off).unwrap_err();
        assert!(error.contains("nodes.flush_pps"), "{error}");
    }

    #[test]
    fn bad_connections_files_are_usage_errors_that_say_why() {
        for (text, says) in [
            ("routes: 3", "not JSON"),
            (r#"{"routes":{"x":3}}"#, "\"x\" is not a route number"),
            (r#"{"routes":{"1":-3}}"#, "counts of 0 or more"),
            (r#"{"nodes":{}}"#, "expected"),
        ] {
            let error = parse_connections(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
        let file = temp_file("outside.json", r#"{"routes":{"30":3}}"#);
        let error = load_connections(file.to_str().unwrap(), std::path::Path::new("/none"), 24)
            .unwrap_err();
        assert!(error.contains("route 30 is outside 1..=24"), "{error}");
        let args = parse(&[
            "--routes",
            "24",
            "--connections",
            file.to_str().unwrap(),
            "join:a",
        ])
        .unwrap();
        assert_eq!(run(args).unwrap(), ExitCode::from(USAGE_ERROR));
        std::fs::remove_file(file).unwrap();
        let error = load_connections("/nonexistent/conns.json", std::path::Path::new("/none"), 24)
            .unwrap_err();
        assert!(error.contains("cannot read the file"), "{error}");
        let error = load_connections("live", std::path::Path::new("/nonexistent/halod.sock"), 24)
            .unwrap_err();
        assert!(error.contains("cannot reach the daemon"), "{error}");
    }

    #[test]
    fn tables_group_routes_and_list_nodes() {
        let events: Vec<Event> = ["join:a", "join:b", "join:c", "join:s"]
            .iter()
            .map(|e| e.parse().unwrap())
            .collect();
        let cluster = simulate(24, 1, &["join:a", "join:b", "join:c", "join:s"]);
        // spares: 1 -> b waits as spare, c takes slot 2, s takes slot 3.
        let text = render_tables(&cluster, &events, &[24, 0, 12, 8]);
        let expected = "\
24 routes, 3 active, 1 spare

ROUTES  SLOT  NODE
1-8     1     a
9-12    3     s
13-20   2     c
21-24   3     s

NODE  ROLE    SLOT  ROUTES
a     active  1     8
c     active  2     8
s     active  3     8
b     spare   -     0

#  EVENT   MOVED
1  join:a  24
2  join:b  0
3  join:c  12
4  join:s  8
";
        assert_eq!(text, expected);
    }
}
