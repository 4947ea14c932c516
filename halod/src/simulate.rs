//! `halod simulate`: apply a sequence of joins, failures and leaves to an
//! empty cluster and show the resulting route table, without touching any
//! gateway. Operators use it to see what a change would do before making it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::routing::{Cluster, ClusterConfig, Event, ParseEventError, Route};

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
    let mut moved = Vec::with_capacity(args.events.len());
    for (index, event) in args.events.iter().enumerate() {
        match cluster.apply(event.clone()) {
            Ok(plan) => moved.push(plan.moves.len()),
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
        })
        .context("encoding the simulation result as JSON")?;
        text.push('\n');
        text
    } else {
        render_tables(&cluster, &args.events, &moved)
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
