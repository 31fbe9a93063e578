//! The request metrics of the prometheus plugin, counted per proxy worker without a shared lock:
//! each worker thread owns its series (found in a map of its own), and only that thread writes
//! them, so a count is a plain load and store. A series a worker meets for the first time is
//! handed to the registry (a lock taken once per series per worker, held for a push); a scrape
//! takes the new ones and reads every series' atomics, so it never waits on proxying nor
//! proxying on it. The number of series is capped: past the cap, requests that would need a new
//! series are counted as dropped instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use uuid::Uuid;

use super::super::log::Subject;

/// Kong's `kong_latency_ms` buckets.
pub const KONG_BUCKETS: &[u64] = &[1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 500, 750, 1000, 3000, 6000];
/// The most buckets a histogram has (Kong's `kong_latency_ms` bounds and `+Inf`).
pub const MAX_BUCKETS: usize = KONG_BUCKETS.len() + 1;
/// Kong's `upstream_latency_ms` and `request_latency_ms` buckets.
pub const UPSTREAM_BUCKETS: &[u64] = &[25, 50, 80, 100, 250, 400, 700, 1000, 2000, 5000, 10000, 30000, 60000];

/// The request metric families, in Kong's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    BandwidthBytes,
    HttpRequestsTotal,
    KongLatencyMs,
    RequestLatencyMs,
    UpstreamLatencyMs,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::BandwidthBytes => "bandwidth_bytes",
            Family::HttpRequestsTotal => "http_requests_total",
            Family::KongLatencyMs => "kong_latency_ms",
            Family::RequestLatencyMs => "request_latency_ms",
            Family::UpstreamLatencyMs => "upstream_latency_ms",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Family::BandwidthBytes => "Total bandwidth (ingress/egress) throughput in bytes",
            Family::HttpRequestsTotal => "HTTP status codes per consumer/service/route in Kong",
            Family::KongLatencyMs => "Latency added by Kong and enabled plugins for each service/route in Kong",
            Family::RequestLatencyMs => "Total latency incurred during requests for each service/route in Kong",
            Family::UpstreamLatencyMs => "Latency added by upstream response for each service/route in Kong",
        }
    }

    pub fn buckets(self) -> Option<&'static [u64]> {
        match self {
            Family::KongLatencyMs => Some(KONG_BUCKETS),
            Family::RequestLatencyMs | Family::UpstreamLatencyMs => Some(UPSTREAM_BUCKETS),
            _ => None,
        }
    }
}

/// What tells one series of a family from another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub family: Family,
    pub route: Uuid,
    /// The route's and service's labels ([`Subject::labels_hash`]).
    pub labels: u64,
    /// `http_requests_total`: the status code; 0 otherwise.
    pub code: u16,
    /// `http_requests_total`: `service` or `kong`; bandwidth: `ingress` or `egress`.
    pub tag: &'static str,
    /// With `per_consumer`: the consumer's id.
    pub consumer: Option<Uuid>,
}

/// One worker's series: its labels and its counts.
#[derive(Debug)]
pub struct Series {
    pub key: Key,
    pub subject: Arc<Subject>,
    /// The consumer's username (`per_consumer`), else empty.
    pub consumer: Box<str>,
    /// Its labels as the exposition writes them (without `le`), made once.
    pub labels: Box<str>,
    /// Counter value, or a histogram's count.
    pub count: AtomicU64,
    /// A histogram's sum.
    pub sum: AtomicU64,
    /// A histogram's buckets (cumulative counts are made when rendering), beside the count and
    /// sum: a scrape reads them from one place (a separate allocation cost it a cache miss per
    /// series).
    pub buckets: [AtomicU64; MAX_BUCKETS],
}

impl Series {
    /// Adds to a series only this thread writes: a load and a store, no locked instruction.
    fn add(cell: &AtomicU64, n: u64) {
        cell.store(cell.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    fn observe(&self, value: u64) {
        Series::add(&self.count, 1);
        Series::add(&self.sum, value);
        if let Some(bounds) = self.key.family.buckets() {
            let i = bounds.iter().position(|b| value <= *b).unwrap_or(bounds.len());
            if let Some(b) = self.buckets.get(i) {
                Series::add(b, 1);
            }
        }
    }
}

/// Every worker's series, for scrapes.
#[derive(Debug)]
pub struct Registry {
    /// Series made since the last scrape (a send per new series per worker). A channel, not a
    /// lock shared with scrapes: a scrape runs at the lowest priority, and a worker must never
    /// wait for it.
    fresh: mpsc::Sender<Arc<Series>>,
    /// Every series, read by scrapes (which are serialized by this lock, proxying never takes it),
    /// and the order a scrape writes them in, made again only when series were added.
    known: Mutex<Known>,
    series: AtomicUsize,
    max_series: AtomicUsize,
    /// Requests whose series could not be made (the cap was reached).
    pub dropped: AtomicU64,
}

/// Every series, and the order a scrape writes them in.
#[derive(Debug)]
struct Known {
    fresh: mpsc::Receiver<Arc<Series>>,
    series: Vec<Arc<Series>>,
    plan: Option<Plan>,
}

/// The order of a scrape, made once per new series rather than on every scrape (sorting tens of
/// thousands of label strings was a fifth of a large scrape): families by name, and in each the
/// series summed over workers, sorted by their labels.
#[derive(Debug, Default)]
pub struct Plan {
    pub families: Vec<FamilyPlan>,
}

/// One family's summed series in the order a scrape writes them, laid out to be read in a stream:
/// their members (indexes into the known series) side by side, and their labels' text copied side
/// by side. Read where each series keeps them, the labels cost a scrape a cache miss per line
/// (a fifth of a large scrape's CPU).
#[derive(Debug)]
pub struct FamilyPlan {
    pub family: Family,
    /// Per summed series: where its members end in `members`, and its labels in `labels`.
    ends: Vec<(usize, usize)>,
    members: Vec<u32>,
    labels: String,
}

impl FamilyPlan {
    /// The summed series in order: their members and their labels (without `le`).
    pub fn rows(&self) -> impl Iterator<Item = (&[u32], &str)> {
        let mut start = (0, 0);
        self.ends.iter().map(move |&(members, labels)| {
            let row = (
                self.members.get(start.0..members).unwrap_or_default(),
                self.labels.get(start.1..labels).unwrap_or_default(),
            );
            start = (members, labels);
            row
        })
    }
}

impl Plan {
    /// Series with the same key are one summed series (each worker counts its own).
    pub fn new(series: &[Arc<Series>]) -> Plan {
        let mut by_key: HashMap<&Key, Vec<u32>, foldhash::fast::RandomState> = HashMap::default();
        for (i, s) in series.iter().enumerate() {
            by_key.entry(&s.key).or_default().push(i as u32);
        }
        let mut lists: Vec<(Family, Vec<Vec<u32>>)> = Vec::new();
        for (key, members) in by_key {
            match lists.iter_mut().find(|(f, _)| *f == key.family) {
                Some((_, list)) => list.push(members),
                None => lists.push((key.family, vec![members])),
            }
        }
        let labels = |m: &[u32]| -> &str { &series[m[0] as usize].labels };
        lists.sort_unstable_by_key(|(f, _)| f.name());
        let families = lists
            .into_iter()
            .map(|(family, mut list)| {
                list.sort_unstable_by(|a, b| labels(a).cmp(labels(b)));
                let mut plan = FamilyPlan {
                    family,
                    ends: Vec::with_capacity(list.len()),
                    members: Vec::with_capacity(list.iter().map(Vec::len).sum()),
                    labels: String::with_capacity(list.iter().map(|m| labels(m).len()).sum()),
                };
                for members in &list {
                    plan.members.extend_from_slice(members);
                    plan.labels.push_str(labels(members));
                    plan.ends.push((plan.members.len(), plan.labels.len()));
                }
                plan
            })
            .collect();
        Plan { families }
    }
}

/// The default cap on series.
pub const DEFAULT_MAX_SERIES: usize = 200_000;

pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let (fresh, fresh_rx) = mpsc::channel();
        Registry {
            fresh,
            known: Mutex::new(Known { fresh: fresh_rx, series: Vec::new(), plan: None }),
            series: AtomicUsize::new(0),
            max_series: AtomicUsize::new(DEFAULT_MAX_SERIES),
            dropped: AtomicU64::new(0),
        }
    })
}

impl Registry {
    /// Sets the cap on series (`prometheus_max_series`).
    pub fn set_max_series(&self, max: usize) {
        self.max_series.store(max, Ordering::Relaxed);
    }

    /// Every series so far and their order (for a scrape). Scrapes wait on each other, never on
    /// proxying.
    pub fn with_series<R>(&self, f: impl FnOnce(&[Arc<Series>], &Plan) -> R) -> R {
        let mut known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = &mut *known;
        let before = known.series.len();
        known.series.extend(known.fresh.try_iter());
        if known.series.len() > before || known.plan.is_none() {
            known.plan = Some(Plan::new(&known.series));
        }
        let plan = known.plan.get_or_insert_with(|| Plan::new(&known.series));
        f(&known.series, plan)
    }

    /// Whether the cap on series is reached.
    fn full(&self) -> bool {
        self.series.load(Ordering::Relaxed) >= self.max_series.load(Ordering::Relaxed)
    }

    pub fn series_count(&self) -> usize {
        self.series.load(Ordering::Relaxed)
    }
}

/// One worker's series of one route (one label set), found with one look-up per request: the
/// three latency histograms, and per consumer (one entry without `per_consumer`) its status code
/// counters and bandwidth. A series the cap refused stays `None` and is asked for again.
#[derive(Default)]
struct RouteSeries {
    histograms: [Option<Arc<Series>>; 3],
    /// Requests without a consumer (or without `per_consumer`).
    nobody: ConsumerSeries,
    consumers: HashMap<u128, ConsumerSeries, foldhash::fast::FixedState>,
}

#[derive(Default)]
struct ConsumerSeries {
    /// `http_requests_total` by status code and source: a handful, searched in order.
    codes: Vec<(u16, &'static str, Arc<Series>)>,
    /// `bandwidth_bytes`: ingress, egress.
    bandwidth: [Option<Arc<Series>>; 2],
}

thread_local! {
    /// This worker's series by route id and label hash.
    static LOCAL: RefCell<HashMap<(u128, u64), RouteSeries, foldhash::fast::FixedState>> =
        RefCell::new(HashMap::default());
}

/// What one request adds to its route's series.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// `(id, username)` with `per_consumer`.
    pub consumer: Option<(Uuid, Option<&'a str>)>,
    /// `(status, source)` with `status_code_metrics`.
    pub status: Option<(u16, &'static str)>,
    /// Kong, upstream (when asked) and request latencies with `latency_metrics`.
    pub latencies: Option<(u64, Option<u64>, u64)>,
    /// Ingress and egress bytes with `bandwidth_metrics`.
    pub bandwidth: Option<(u64, u64)>,
}

/// The histogram families in [`RouteSeries::histograms`] order.
const HISTOGRAMS: [Family; 3] = [Family::KongLatencyMs, Family::UpstreamLatencyMs, Family::RequestLatencyMs];

/// Counts one request in this worker's series of its route.
pub fn record(subject: &Arc<Subject>, o: &Observation<'_>) {
    LOCAL.with(|local| {
        let Ok(mut local) = local.try_borrow_mut() else { return };
        // Slots are made only while series may be: past the cap, a route or consumer never seen
        // costs a dropped count, not memory.
        let route = match local.entry((subject.route_id.as_u128(), subject.labels_hash)) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(slot) if !registry().full() => slot.insert(RouteSeries::default()),
            Entry::Vacant(_) => {
                registry().dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let key = |family, code, tag, consumer| Key {
            family,
            route: subject.route_id,
            labels: subject.labels_hash,
            code,
            tag,
            consumer,
        };
        if let Some((kong, upstream, request)) = o.latencies {
            for ((slot, family), value) in
                route.histograms.iter_mut().zip(HISTOGRAMS).zip([Some(kong), upstream, Some(request)])
            {
                let Some(value) = value else { continue };
                if let Some(s) = made(slot, || key(family, 0, "", None), subject, "") {
                    s.observe(value);
                }
            }
        }
        if o.status.is_none() && o.bandwidth.is_none() {
            return;
        }
        let (id, name) = match o.consumer {
            Some((id, name)) => (Some(id), name.unwrap_or("")),
            None => (None, ""),
        };
        let per = match id.map(|id| route.consumers.entry(id.as_u128())) {
            None => &mut route.nobody,
            Some(Entry::Occupied(slot)) => slot.into_mut(),
            Some(Entry::Vacant(slot)) if !registry().full() => slot.insert(ConsumerSeries::default()),
            Some(Entry::Vacant(_)) => {
                registry().dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if let Some((code, source)) = o.status {
            match per.codes.iter().find(|(c, t, _)| *c == code && *t == source) {
                Some((_, _, s)) => Series::add(&s.count, 1),
                None => {
                    let mut slot = None;
                    if let Some(s) = made(&mut slot, || key(Family::HttpRequestsTotal, code, source, id), subject, name)
                    {
                        Series::add(&s.count, 1);
                        per.codes.push((code, source, s.clone()));
                    }
                }
            }
        }
        if let Some((ingress, egress)) = o.bandwidth {
            for ((slot, tag), bytes) in per.bandwidth.iter_mut().zip(["ingress", "egress"]).zip([ingress, egress]) {
                if bytes > 0
                    && let Some(s) = made(slot, || key(Family::BandwidthBytes, 0, tag, id), subject, name)
                {
                    Series::add(&s.count, bytes);
                }
            }
        }
    });
}

/// The series in `slot`, made (and handed to the registry) if it is not yet and the cap allows.
fn made<'s>(
    slot: &'s mut Option<Arc<Series>>,
    key: impl FnOnce() -> Key,
    subject: &Arc<Subject>,
    consumer: &str,
) -> Option<&'s Arc<Series>> {
    if slot.is_none() {
        let reg = registry();
        if reg.full() {
            reg.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        reg.series.fetch_add(1, Ordering::Relaxed);
        let key = key();
        let labels = super::exposition::series_labels(&key, subject, consumer);
        let series = Arc::new(Series {
            key,
            subject: subject.clone(),
            consumer: consumer.into(),
            labels: labels.into(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        });
        // The receiver lives as long as the registry (a static): the send cannot fail.
        let _ = reg.fresh.send(series.clone());
        *slot = Some(series);
    }
    slot.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two workers' series of two routes, made in no order: a scrape's plan has one summed series
    /// per route, sorted by labels, each with both workers' series; other families apart.
    #[test]
    fn a_plan_sums_each_route_over_workers_in_label_order() {
        let raw = serde_json::value::RawValue::from_string("{}".into()).expect("raw");
        let series_of = |family: Family, route: u128, labels: &str| {
            let subject = Arc::new(Subject::new(Uuid::from_u128(route), labels.into(), raw.clone().into(), None));
            Arc::new(Series {
                key: Key { family, route: Uuid::from_u128(route), labels: 0, code: 0, tag: "", consumer: None },
                subject,
                consumer: "".into(),
                labels: labels.into(),
                count: AtomicU64::new(0),
                sum: AtomicU64::new(0),
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            })
        };
        let h = Family::KongLatencyMs;
        let series = vec![
            series_of(h, 2, r#"route="b""#),
            series_of(h, 1, r#"route="a""#),
            series_of(Family::BandwidthBytes, 1, r#"route="a",direction="ingress""#),
            series_of(h, 2, r#"route="b""#),
            series_of(h, 1, r#"route="a""#),
        ];
        let plan = Plan::new(&series);
        let families: Vec<Family> = plan.families.iter().map(|f| f.family).collect();
        assert_eq!(families, [Family::BandwidthBytes, Family::KongLatencyMs]);
        let rows: Vec<(Vec<u32>, &str)> = plan.families[1].rows().map(|(m, l)| (m.to_vec(), l)).collect();
        assert_eq!(rows, [(vec![1, 4], r#"route="a""#), (vec![0, 3], r#"route="b""#)]);
        let rows: Vec<(Vec<u32>, &str)> = plan.families[0].rows().map(|(m, l)| (m.to_vec(), l)).collect();
        assert_eq!(rows, [(vec![2], r#"route="a",direction="ingress""#)]);
    }
}
