//! Prometheus' text format as Kong's exporter writes it: families sorted by name, each with its
//! `# HELP` and `# TYPE` before its first series; series sorted by their labels; a histogram's
//! `_bucket` lines (cumulative, `le` last, ending with `+Inf`), then its `_count`, then its `_sum`;
//! label values escaped as Prometheus requires (`\\`, `\"`, `\n`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::series::{Family, FamilyPlan, Key, MAX_BUCKETS, Plan, Series};

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

/// How much text a scrape gathers before handing it on: large enough that each chunk is one
/// write, small enough that a scrape of any size holds little memory (its reader takes chunks as
/// they come, so a 68 MB scrape never sits whole in memory).
const CHUNK: usize = 256 * 1024;

/// A scrape's text, handed on in chunks as it is written.
struct Chunks<F: FnMut(Bytes) -> bool> {
    buf: Vec<u8>,
    sink: F,
    /// The reader still takes chunks.
    open: bool,
}

impl<F: FnMut(Bytes) -> bool> Chunks<F> {
    fn new(sink: F) -> Chunks<F> {
        Chunks { buf: Vec::with_capacity(CHUNK + 4096), sink, open: true }
    }

    fn push(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// One line of parts, with one reservation.
    fn line(&mut self, parts: &[&str]) {
        self.buf.reserve(parts.iter().map(|p| p.len()).sum());
        for p in parts {
            self.buf.extend_from_slice(p.as_bytes());
        }
    }

    /// Hands the text on once a chunk is full; false when the reader left (stop writing).
    fn full(&mut self) -> bool {
        if self.buf.len() >= CHUNK {
            self.flush();
        }
        self.open
    }

    fn flush(&mut self) {
        if self.open && !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 4096));
            self.open = (self.sink)(Bytes::from(chunk));
        }
    }
}

/// One request family's lines without formatting machinery (a large scrape writes over a million):
/// each line is the family's `name{` opening, the series' labels, a closing made once per bucket
/// (`,le="…"} ` or `} `) and the value.
fn write_family<F: FnMut(Bytes) -> bool>(out: &mut Chunks<F>, name: &str, plan: &FamilyPlan, series: &[Arc<Series>]) {
    let family = plan.family;
    // Sums one summed series' counts over the workers that have it (they wrap as the workers' own
    // counters do); a counter's buckets are not read.
    let histogram = family.buckets().is_some();
    let summed = |members: &[u32], buckets: &mut [u64; MAX_BUCKETS]| -> (u64, u64) {
        let (mut count, mut sum) = (0u64, 0u64);
        for &i in members {
            let s = &series[i as usize];
            count = count.wrapping_add(s.count.load(Ordering::Relaxed));
            sum = sum.wrapping_add(s.sum.load(Ordering::Relaxed));
            if histogram {
                for (total, b) in buckets.iter_mut().zip(s.buckets.iter()) {
                    *total = total.wrapping_add(b.load(Ordering::Relaxed));
                }
            }
        }
        (count, sum)
    };
    let rows: Vec<(&[u32], &str)> = plan.rows().collect();
    let mut value = itoa::Buffer::new();
    out.push(&format!("# HELP {name} {}\n", family.help()));
    let Some(bounds) = family.buckets() else {
        out.push(&format!("# TYPE {name} counter\n"));
        let open = format!("{name}{{");
        let mut unused = [0u64; MAX_BUCKETS];
        for block in rows.chunks(TOUCHED) {
            touch(block, series, false);
            for &(members, labels) in block {
                let (count, _) = summed(members, &mut unused);
                let v = value.format(count);
                out.line(&[open.as_str(), labels, "} ", v, "\n"]);
                if !out.full() {
                    return;
                }
            }
        }
        return;
    };
    out.push(&format!("# TYPE {name} histogram\n"));
    // Each bucket line is the series' prefix, then a closing (`,le="…"} `) and a value, both short:
    // they are kept in fixed-size arrays and copied whole, then cut to length, so a line costs one
    // copy of variable length (the prefix) rather than three.
    let closings: Vec<Tail> = bounds
        .iter()
        .map(u64::to_string)
        .chain(std::iter::once("+Inf".to_string()))
        .map(|le| Tail::of(format!(",le=\"{le}\"}} ").as_bytes()))
        .collect();
    // Every series' sums first, in a pass of loads alone (formatting between them would wait on
    // each series' cache misses). Kong writes every series' buckets, then every series' count,
    // then every sum: all three come from these sums.
    let mut totals: Vec<([u64; MAX_BUCKETS], u64, u64, &str)> = Vec::with_capacity(rows.len());
    for block in rows.chunks(TOUCHED) {
        touch(block, series, true);
        totals.extend(block.iter().map(|&(members, labels)| {
            let mut buckets = [0u64; MAX_BUCKETS];
            let (count, sum) = summed(members, &mut buckets);
            (buckets, count, sum, labels)
        }));
    }
    let open = format!("{name}_bucket{{");
    let mut prefix = String::new();
    for (buckets, _, _, labels) in &totals {
        prefix.clear();
        prefix.push_str(&open);
        prefix.push_str(labels);
        out.buf.reserve(closings.len() * (prefix.len() + 2 * TAIL));
        // Most values repeat (every bucket past the slowest request holds the count): each is
        // formatted once.
        let mut cumulative: u64 = 0;
        let mut shown = (u64::MAX, Tail::default());
        for (b, closing) in buckets.iter().zip(&closings) {
            cumulative = cumulative.wrapping_add(*b);
            if shown.0 != cumulative {
                let mut text = Tail::of(value.format(cumulative).as_bytes());
                text.push(b'\n');
                shown = (cumulative, text);
            }
            out.buf.extend_from_slice(prefix.as_bytes());
            closing.append_to(&mut out.buf);
            shown.1.append_to(&mut out.buf);
        }
        if !out.full() {
            return;
        }
    }
    for (suffix, pick_sum) in [("_count", false), ("_sum", true)] {
        let open = format!("{name}{suffix}{{");
        for &(_, count, sum, labels) in &totals {
            let v = value.format(if pick_sum { sum } else { count });
            out.line(&[open.as_str(), labels, "} ", v, "\n"]);
            if !out.full() {
                return;
            }
        }
    }
}

/// Summed series read by [`touch`] at a time: their series (a few hundred KB) stay in cache
/// until they are summed.
const TOUCHED: usize = 1024;

/// Reads the series of some summed series, a few words of each, in a loop that does nothing else:
/// the series lie scattered in memory, and such a loop keeps many of their cache misses in flight,
/// where the summing loop (a few dozen instructions per series) waited on them nearly one by one
/// (a fifth of a large scrape's CPU).
fn touch(rows: &[(&[u32], &str)], series: &[Arc<Series>], histogram: bool) {
    let mut seen = 0u64;
    for &i in rows.iter().flat_map(|(members, _)| members.iter()) {
        if let Some(s) = series.get(i as usize) {
            seen ^= s.count.load(Ordering::Relaxed);
            if histogram {
                for b in s.buckets.iter().step_by(8) {
                    seen ^= b.load(Ordering::Relaxed);
                }
            }
        }
    }
    std::hint::black_box(seen);
}

/// The room of a [`Tail`]: a closing `,le="…"} ` or a value with its newline (at most 21 bytes).
const TAIL: usize = 32;

/// A short piece of a line, copied as a whole array and cut to its length.
#[derive(Debug, Clone, Copy)]
struct Tail {
    bytes: [u8; TAIL],
    len: usize,
}

impl Default for Tail {
    fn default() -> Tail {
        Tail { bytes: [0; TAIL], len: 0 }
    }
}

impl Tail {
    /// At most [`TAIL`] bytes of `text` (closings and numbers are shorter).
    fn of(text: &[u8]) -> Tail {
        let mut tail = Tail::default();
        let len = text.len().min(TAIL);
        tail.bytes[..len].copy_from_slice(&text[..len]);
        tail.len = len;
        tail
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn append_to(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&self.bytes);
        out.truncate(at + self.len);
    }
}

/// The whole exposition, handed to `sink` in chunks (it answers false once its reader left, which
/// ends the scrape): the request families (when `requests`) in `plan`'s order, then with them the
/// gauges, all sorted by name.
pub fn render(series: &[Arc<Series>], plan: &Plan, requests: bool, gauges: &[Gauge], sink: impl FnMut(Bytes) -> bool) {
    enum Block<'a> {
        Requests(&'a FamilyPlan),
        Gauge(&'a Gauge),
    }
    let mut blocks: Vec<(String, Block<'_>)> = Vec::new();
    if requests {
        for family in &plan.families {
            blocks.push((format!("kong_{}", family.family.name()), Block::Requests(family)));
        }
    }
    for g in gauges.iter().filter(|g| !g.series.is_empty()) {
        blocks.push((g.name.clone(), Block::Gauge(g)));
    }
    blocks.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Chunks::new(sink);
    for (name, block) in &blocks {
        match block {
            Block::Requests(family) => write_family(&mut out, name, family, series),
            Block::Gauge(g) => {
                let mut text = String::new();
                if let Some(help) = g.help {
                    let _ = writeln!(text, "# HELP {name} {help}");
                }
                let _ = writeln!(text, "# TYPE {name} {}", g.kind.as_str());
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
                        let _ = writeln!(text, "{name} {}", number(v));
                    } else {
                        let _ = writeln!(text, "{name}{{{labels}}} {}", number(v));
                    }
                }
                out.push(&text);
            }
        }
        if !out.full() {
            return;
        }
    }
    out.flush();
}

/// The whole exposition as one text (tests, small scrapes).
pub fn render_text(series: &[Arc<Series>], plan: &Plan, requests: bool, gauges: &[Gauge]) -> String {
    let mut text = Vec::new();
    render(series, plan, requests, gauges, |chunk| {
        text.extend_from_slice(&chunk);
        true
    });
    String::from_utf8(text).unwrap_or_default()
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
        let text = render_text(&[], &Plan::default(), false, &gauges);
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
    /// Two workers' series of one route summed: every bucket cumulative with `le` last, the
    /// buckets of every series before the counts, the counts before the sums (Kong's layout).
    #[test]
    fn histograms_are_summed_over_workers_and_written_in_kongs_layout() {
        use super::super::series::KONG_BUCKETS;
        use crate::plugins::log::Subject;
        use std::sync::atomic::AtomicU64;
        let route = serde_json::value::RawValue::from_string("{}".into()).expect("raw");
        let subject = Arc::new(Subject::new(uuid::Uuid::nil(), "r".into(), route.into(), None));
        let key = Key {
            family: Family::KongLatencyMs,
            route: uuid::Uuid::nil(),
            labels: 0,
            code: 0,
            tag: "",
            consumer: None,
        };
        let worker = |counts: &[u64], sum: u64| {
            Arc::new(Series {
                key: key.clone(),
                subject: subject.clone(),
                consumer: "".into(),
                labels: r#"service="",route="r",workspace="default""#.into(),
                count: AtomicU64::new(counts.iter().sum()),
                sum: AtomicU64::new(sum),
                buckets: std::array::from_fn(|i| AtomicU64::new(counts.get(i).copied().unwrap_or(0))),
            })
        };
        let series =
            vec![worker(&[2, 0, 1], 9), worker(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12345678901], 5)];
        let plan = Plan::new(&series);
        let text = render_text(&series, &plan, true, &[]);
        let labels = r#"service="",route="r",workspace="default""#;
        let mut expected = format!(
            "# HELP kong_kong_latency_ms {}\n# TYPE kong_kong_latency_ms histogram\n",
            Family::KongLatencyMs.help()
        );
        let mut cumulative = 0u64;
        let bounds = KONG_BUCKETS.iter().map(u64::to_string).chain(std::iter::once("+Inf".to_string()));
        for (i, le) in bounds.enumerate() {
            cumulative += [2, 0, 1].get(i).copied().unwrap_or(0) + if i == 17 { 12345678901 } else { 0 };
            expected.push_str(&format!("kong_kong_latency_ms_bucket{{{labels},le=\"{le}\"}} {cumulative}\n"));
        }
        expected.push_str(&format!("kong_kong_latency_ms_count{{{labels}}} 12345678904\n"));
        expected.push_str(&format!("kong_kong_latency_ms_sum{{{labels}}} 14\n"));
        assert_eq!(text, expected);
    }
}
