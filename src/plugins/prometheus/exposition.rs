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

/// The most buckets of a family, `+Inf` included.
const MAX_BUCKETS: usize = 18;

/// Series summed over workers, keyed as one.
struct Summed<'a> {
    labels: &'a str,
    count: u64,
    sum: u64,
    buckets: [u64; MAX_BUCKETS],
}

fn sum_series(series: &[Arc<Series>]) -> HashMap<Family, Vec<Summed<'_>>> {
    let mut by_key: HashMap<&Key, Summed<'_>> = HashMap::with_capacity(series.len());
    for s in series {
        let e = by_key.entry(&s.key).or_insert_with(|| Summed {
            labels: &s.labels,
            count: 0,
            sum: 0,
            buckets: [0; MAX_BUCKETS],
        });
        // Counters wrap as the workers' own do (bandwidth sums grow fastest).
        e.count = e.count.wrapping_add(s.count.load(Ordering::Relaxed));
        e.sum = e.sum.wrapping_add(s.sum.load(Ordering::Relaxed));
        for (total, b) in e.buckets.iter_mut().zip(s.buckets.iter()) {
            *total = total.wrapping_add(b.load(Ordering::Relaxed));
        }
    }
    let mut families: HashMap<Family, Vec<Summed<'_>>> = HashMap::new();
    for (key, summed) in by_key {
        families.entry(key.family).or_default().push(summed);
    }
    for list in families.values_mut() {
        list.sort_unstable_by(|a, b| a.labels.cmp(b.labels));
    }
    families
}

/// A series' labels in Kong's declaration order (without `le`), as the exposition writes them.
pub fn series_labels(key: &Key, subject: &super::super::log::Subject, consumer: &str) -> String {
    let service = subject.service.as_ref().map_or("", |sv| &*sv.label);
    let route = &*subject.route_label;
    match key.family {
        Family::HttpRequestsTotal => {
            let code = key.code.to_string();
            labels_text(&[
                ("service", service),
                ("route", route),
                ("code", &code),
                ("source", key.tag),
                ("workspace", "default"),
                ("consumer", consumer),
            ])
        }
        Family::BandwidthBytes => labels_text(&[
            ("service", service),
            ("route", route),
            ("direction", key.tag),
            ("workspace", "default"),
            ("consumer", consumer),
        ]),
        _ => labels_text(&[("service", service), ("route", route), ("workspace", "default")]),
    }
}

/// Appends `name{labels} value\n` (or `name{labels,le="…"} value\n`) without formatting machinery:
/// a large scrape writes hundreds of thousands of these.
fn line(out: &mut String, name: &str, suffix: &str, labels: &str, le: Option<&str>, value: u64) {
    out.push_str(name);
    out.push_str(suffix);
    out.push('{');
    out.push_str(labels);
    if let Some(le) = le {
        out.push_str(",le=\"");
        out.push_str(le);
        out.push('"');
    }
    out.push_str("} ");
    out.push_str(itoa::Buffer::new().format(value));
    out.push('\n');
}

/// One family as text: what a scrape writes for it.
enum Block<'a> {
    Requests(Family, &'a [Summed<'a>]),
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
                            line(&mut out, name, "", s.labels, None, s.count);
                        }
                    }
                    Some(bounds) => {
                        let _ = writeln!(out, "# TYPE {name} histogram");
                        let les: Vec<String> =
                            bounds.iter().map(u64::to_string).chain(std::iter::once("+Inf".to_string())).collect();
                        for s in *list {
                            let mut cumulative: u64 = 0;
                            for (b, le) in s.buckets.iter().zip(&les) {
                                cumulative = cumulative.wrapping_add(*b);
                                line(&mut out, name, "_bucket", s.labels, Some(le), cumulative);
                            }
                        }
                        for s in *list {
                            line(&mut out, name, "_count", s.labels, None, s.count);
                        }
                        for s in *list {
                            line(&mut out, name, "_sum", s.labels, None, s.sum);
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
