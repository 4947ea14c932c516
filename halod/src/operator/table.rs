//! Aligned text tables and human times for the operator commands.

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                line.push_str(&format!("{cell:<width$}  "));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// `1h02m`, `3m05s`, `12.3s`, `850ms`.
pub fn duration(ms: u64) -> String {
    let seconds = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if seconds < 60 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if seconds < 3600 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else if seconds < 86_400 {
        format!("{}h{:02}m", seconds / 3600, seconds / 60 % 60)
    } else {
        format!("{}d{:02}h", seconds / 86_400, seconds / 3600 % 24)
    }
}

/// `12ms ago`.
pub fn ms_ago(ms: u64) -> String {
    format!("{} ago", duration(ms))
}

/// UTC date and time of a Unix time in ms: `2026-11-22 05:10:01Z`.
pub fn clock_time(unix_ms: u64) -> String {
    let (date, h, m, s) = civil(unix_ms / 1000);
    format!("{date} {h:02}:{m:02}:{s:02}Z")
}

/// UTC time of day with milliseconds: `05:10:01.123Z`.
pub fn clock_time_ms(unix_ms: u64) -> String {
    let (_, h, m, s) = civil(unix_ms / 1000);
    format!("{h:02}:{m:02}:{s:02}.{:03}Z", unix_ms % 1000)
}

/// Date (`YYYY-MM-DD`) and time of day of a Unix time in seconds (UTC), by
/// Howard Hinnant's days-to-civil algorithm.
fn civil(unix: u64) -> (String, u64, u64, u64) {
    let days = (unix / 86_400) as i64;
    let rest = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut table = Table::new(&["Route", "Node"]);
        table.row(vec!["1".into(), "n1".into()]);
        table.row(vec!["10".into(), "-".into()]);
        assert_eq!(table.render(), "Route  Node\n1      n1\n10     -\n");
    }

    #[test]
    fn times() {
        assert_eq!(clock_time(0), "1970-01-01 00:00:00Z");
        // 2024-02-29 12:34:56 UTC.
        assert_eq!(clock_time(1_709_210_096_000), "2024-02-29 12:34:56Z");
        assert_eq!(clock_time_ms(1_709_210_096_789), "12:34:56.789Z");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_340), "12.3s");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration(3_720_000), "1h02m");
        assert_eq!(duration(90_000_000), "1d01h");
    }
}
