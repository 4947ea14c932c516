//! docs/benchmarks.svg: UDP forwarding capacity per gateway core (from CPU time per
//! packet) and the highest forwarded rate, per method, with the generator's ceiling.

use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;

use super::Results;

pub fn write(path: &Path, results: &Results) -> Result<()> {
    let Some(Ok(forwarding)) = &results.forwarding else {
        bail!("no forwarding results to chart");
    };
    let bars: Vec<(String, f64, f64)> = forwarding
        .results
        .iter()
        .filter_map(|r| {
            let per_core = r.udp_cpu_ns.as_ref().ok().map(|ns| 1e3 / ns)?;
            let max = r.udp_max.as_ref().ok().map(|pps| pps / 1e6)?;
            Some((r.method.name().to_string(), per_core, max))
        })
        .collect();
    if bars.is_empty() {
        bail!("no UDP figures to chart");
    }
    let ceiling = forwarding.ceiling / 1e6;
    let top = bars
        .iter()
        .flat_map(|(_, a, b)| [*a, *b])
        .fold(ceiling, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "UDP 64-byte frames through the gateway (Mpps)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
    let labels: Vec<String> = bars.iter().map(|(name, _, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < labels.len() {
                labels[i].split(" (").next().unwrap_or("").to_string()
            } else {
                String::new()
            }
        })
        .y_desc("million packets per second")
        .draw()?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, per_core, _))| {
            let x = i as f64;
            Rectangle::new([(x + 0.1, 0.0), (x + 0.48, *per_core)], BLUE.filled())
        }))?
        .label("per gateway core (1 / gateway CPU time per packet at a fixed rate)")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], BLUE.filled()));
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, _, max))| {
            let x = i as f64;
            Rectangle::new([(x + 0.52, 0.0), (x + 0.9, *max)], GREEN.filled())
        }))?
        .label("highest forwarded rate on this 2-core test bed")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], GREEN.filled()));
    chart
        .draw_series(LineSeries::new(
            [(0.0, ceiling), (n as f64, ceiling)],
            RED.stroke_width(2),
        ))?
        .label("generator ceiling (sink on ext0, no gateway work)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 10, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
