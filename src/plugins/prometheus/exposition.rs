//! Prometheus' text format as Kong's exporter writes it: families sorted by name, each with its
//! `# HELP` and `# TYPE` before its first series; series sorted by their labels; a histogram's
//! `_bucket` lines (cumulative, `le` last, ending with `+Inf`), then its `_count`, then its `_sum`;
//! label values escaped as Prometheus requires (`\\`, `\"`, `\n`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::series::{Family, Key, Series};

/// A metric kind, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A family of values read at scrape time (node gauges, Tollgate's own counters).
#[derive(Debug, Clone)]
pub struct Gauge {
    /// The full name (`kong_node_info`, `tollgate_…`).
    pub name: String,
    pub help: Option<&'static str>,
    pub kind: Kind,
    pub series: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Gauge {
    pub fn new(name: &str, help: Option<&'static str>, kind: Kind) -> Gauge {
        Gauge { name: name.to_string(), help, kind, series: Vec::new() }
    }

    pub fn one(name: &str, help: Option<&'static str>, kind: Kind, value: f64) -> Gauge {
        Gauge { series: vec![(Vec::new(), value)], ..Gauge::new(name, help, kind) }
    }

    pub fn with(mut self, labels: Vec<(&'static str, String)>, value: f64) -> Gauge {
        self.series.push((labels, value));
        self
    }
}

/// Writes `value` escaped as a label value.
pub fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn labels_text(labels: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(96);
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_into(&mut out, v);
        out.push('"');
    }
    out
}

/// A number as Kong prints it: integers without a fraction.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Series summed over workers, keyed as one.
struct Summed {
    labels: String,
    count: u64,
    sum: u64,
    buckets: Vec<u64>,
}

fn sum_series(series: &[Arc<Series>]) -> HashMap<Family, Vec<Summed>> {
    let mut by_key: HashMap<&Key, Summed> = HashMap::with_capacity(series.len());
    for s in series {
        let e = by_key.entry(&s.key).or_insert_with(|| Summed {
            labels: series_labels(s),
            count: 0,
            sum: 0,
            buckets: vec![0; s.buckets.len()],
        });
        e.count += s.count.load(Ordering::Relaxed);
        e.sum += s.sum.load(Ordering::Relaxed);
        for (total, b) in e.buckets.iter_mut().zip(s.buckets.iter()) {
            *total += b.load(Ordering::Relaxed);
        }
    }
    let mut families: HashMap<Family, Vec<Summed>> = HashMap::new();
    for (key, summed) in by_key {
        families.entry(key.family).or_default().push(summed);
    }
    for list in families.values_mut() {
        list.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
    }
    families
}

/// A series' labels in Kong's declaration order (without `le`).
fn series_labels(s: &Series) -> String {
    let service = s.subject.service.as_ref().map_or("", |sv| &*sv.label);
    let route = &*s.subject.route_label;
    match s.key.family {
        Family::HttpRequestsTotal => {
            let code = s.key.code.to_string();
            labels_text(&[
                ("service", service),
                ("route", route),
                ("code", &code),
                ("source", s.key.tag),
                ("workspace", "default"),
                ("consumer", &s.consumer),
            ])
        }
        Family::BandwidthBytes => labels_text(&[
            ("service", service),
            ("route", route),
            ("direction", s.key.tag),
            ("workspace", "default"),
            ("consumer", &s.consumer),
        ]),
        _ => labels_text(&[("service", service), ("route", route), ("workspace", "default")]),
    }
}

/// One family as text: what a scrape writes for it.
enum Block<'a> {
    Requests(Family, &'a [Summed]),
    Gauge(&'a Gauge),
}

impl Block<'_> {
    fn name(&self) -> String {
        match self {
            Block::Requests(f, _) => format!("kong_{}", f.name()),
            Block::Gauge(g) => g.name.clone(),
        }
    }
}

/// The whole exposition: the request families (when `requests`), then with them the gauges, all
/// sorted by name.
pub fn render(series: &[Arc<Series>], requests: bool, gauges: &[Gauge]) -> String {
    let summed = if requests { sum_series(series) } else { HashMap::new() };
    let mut blocks: Vec<(String, Block<'_>)> = Vec::new();
    for (family, list) in &summed {
        let b = Block::Requests(*family, list);
        blocks.push((b.name(), b));
    }
    for g in gauges.iter().filter(|g| !g.series.is_empty()) {
        let b = Block::Gauge(g);
        blocks.push((b.name(), b));
    }
    blocks.sort_by(|a, b| a.0.cmp(&b.0));
    let lines: usize = summed.values().map(|l| l.len() * 16).sum::<usize>() + gauges.len() * 4;
    let mut out = String::with_capacity(lines * 100);
    for (name, block) in &blocks {
        match block {
            Block::Requests(family, list) => {
                let _ = writeln!(out, "# HELP {name} {}", family.help());
                match family.buckets() {
                    None => {
                        let _ = writeln!(out, "# TYPE {name} counter");
                        for s in *list {
                            let _ = writeln!(out, "{name}{{{}}} {}", s.labels, s.count);
                        }
                    }
                    Some(bounds) => {
                        let _ = writeln!(out, "# TYPE {name} histogram");
                        for s in *list {
                            let mut cumulative = 0;
                            for (i, b) in s.buckets.iter().enumerate() {
                                cumulative += b;
                                let le = bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                                let _ = writeln!(out, "{name}_bucket{{{},le=\"{le}\"}} {cumulative}", s.labels);
                            }
                        }
                        for s in *list {
                            let _ = writeln!(out, "{name}_count{{{}}} {}", s.labels, s.count);
                        }
                        for s in *list {
                            let _ = writeln!(out, "{name}_sum{{{}}} {}", s.labels, s.sum);
                        }
                    }
                }
            }
            Block::Gauge(g) => {
                if let Some(help) = g.help {
                    let _ = writeln!(out, "# HELP {name} {help}");
                }
                let _ = writeln!(out, "# TYPE {name} {}", g.kind.as_str());
                let mut series: Vec<(String, f64)> = g
                    .series
                    .iter()
                    .map(|(labels, v)| {
                        let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        (labels_text(&pairs), *v)
                    })
                    .collect();
                series.sort_by(|a, b| a.0.cmp(&b.0));
                for (labels, v) in series {
                    if labels.is_empty() {
                        let _ = writeln!(out, "{name} {}", number(v));
                    } else {
                        let _ = writeln!(out, "{name}{{{labels}}} {}", number(v));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_prometheus_requires() {
        let mut out = String::new();
        escape_into(&mut out, "a\"b\\c\nd");
        assert_eq!(out, r#"a\"b\\c\nd"#);
    }

    #[test]
    fn gauges_sort_by_name_then_labels_and_print_integers_plainly() {
        let gauges = vec![
            Gauge::new("kong_node_info", Some("Kong Node metadata information"), Kind::Gauge)
                .with(vec![("node_id", "n".into()), ("version", "3.10.0".into())], 1.0),
            Gauge::one(
                "kong_datastore_reachable",
                Some("Datastore reachable from Kong, 0 is unreachable"),
                Kind::Gauge,
                1.0,
            ),
            Gauge::new("kong_nginx_requests_total", None, Kind::Gauge)
                .with(vec![("subsystem", "http".into())], 2.5)
                .with(vec![("subsystem", "a".into())], 7.0),
        ];
        let text = render(&[], false, &gauges);
        let expected = "# HELP kong_datastore_reachable Datastore reachable from Kong, 0 is unreachable\n\
            # TYPE kong_datastore_reachable gauge\n\
            kong_datastore_reachable 1\n\
            # TYPE kong_nginx_requests_total gauge\n\
            kong_nginx_requests_total{subsystem=\"a\"} 7\n\
            kong_nginx_requests_total{subsystem=\"http\"} 2.5\n\
            # HELP kong_node_info Kong Node metadata information\n\
            # TYPE kong_node_info gauge\n\
            kong_node_info{node_id=\"n\",version=\"3.10.0\"} 1\n";
        assert_eq!(text, expected);
    }
}
